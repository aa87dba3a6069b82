// Opens the broker's web page (with --history) in headless Chromium on a phone-sized screen, for
// tests/history.rs, and reports what it draws, one line per fact:
//   "spark <ns> <state> <svgs> <points>"  a row's sparkline once the page has asked for it
//   "chart <json>"                        the chart of lab.probe: its domain, frame, avg line, band
//   "hover <text>"                        the readout with the pointer on the 4th point
//   "live <points> <v1>"                  the chart once a live update was appended
//   "span <label> <t1 - t0> <v0>"         the chart after choosing 24 h
//   "csp …" / "pageerror …"               anything the page or its policy complained about
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);

async function until(check, ms) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise(r => setTimeout(r, 100));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 }, timezoneId: "UTC", locale: "en-GB",
  });
  const page = await context.newPage();
  page.on("console", m => { if (/Content.Security.Policy/i.test(m.text())) console.log("csp " + m.text()); });
  page.on("pageerror", e => console.log("pageerror " + e.message));
  await page.goto(url);
  await until(async () => /\d+ things · live/.test(await page.textContent("#status")), 60000);
  for (const ns of ["lab.probe", "lab.old", "lab.label"]) {
    const row = page.locator(`tr[data-ns="${ns}"]`);
    await until(async () => (await row.getAttribute("data-spark")) !== null, 30000);
    const state = await row.getAttribute("data-spark");
    const svgs = await page.locator(`tr[data-ns="${ns}"] svg.spark`).count();
    const points = svgs
      ? (await page.locator(`tr[data-ns="${ns}"] svg.spark polyline`).getAttribute("points")).trim().split(/\s+/).length
      : 0;
    console.log(`spark ${ns} ${state} ${svgs} ${points}`);
  }
  await page.click('tr[data-ns="lab.probe"] td.ns');
  const avg = page.locator("#chart-plot polyline.avg");
  await avg.waitFor({ timeout: 30000 });
  const pairs = s => s.trim().split(/\s+/).map(p => p.split(",").map(Number));
  const read = async () => {
    const svg = page.locator("#chart-plot svg");
    const d = k => svg.getAttribute("data-" + k).then(Number);
    const frame = page.locator("#chart-plot rect.frame");
    const f = k => frame.getAttribute(k).then(Number);
    return {
      t0: await d("t0"), t1: await d("t1"), v0: await d("v0"), v1: await d("v1"),
      frame: { x: await f("x"), y: await f("y"), width: await f("width"), height: await f("height") },
      viewBox: (await svg.getAttribute("viewBox")).split(" ").map(Number),
      avg: pairs(await avg.getAttribute("points")),
      band: pairs(await page.locator("#chart-plot polygon.band").getAttribute("points")),
      field: await page.inputValue("#chart-field"),
      span: await page.textContent("#chart-spans button.on"),
    };
  };
  const c = await read();
  console.log("chart " + JSON.stringify(c));
  // The pointer on the 4th point of the avg line, from its drawing coordinates to the screen's.
  const box = await page.locator("#chart-plot svg").boundingBox();
  const [px, py] = c.avg[3];
  await page.mouse.move(box.x + px * box.width / c.viewBox[2], box.y + py * box.height / c.viewBox[3]);
  await until(async () => /\d/.test(await page.textContent("#chart-readout")), 10000);
  await page.screenshot({ path: shot, fullPage: false });
  console.log("hover " + await page.textContent("#chart-readout"));
  await until(async () => (await read()).avg.length > c.avg.length, 30000);
  const after = await read();
  console.log(`live ${after.avg.length} ${after.v1}`);
  await page.click('#chart-spans button[data-span="24h"]');
  await until(async () => {
    const n = await page.locator("#chart-plot svg[data-t1]").count();
    return n > 0 && (await read()).span === "24 h" && (await read()).t1 - (await read()).t0 > 80000;
  }, 30000);
  const day = await read();
  console.log(`span ${day.span} ${day.t1 - day.t0} ${day.v0}`);
} finally {
  await browser.close();
}
