// Opens the broker's web page in headless Chromium and reports what it sees, one line at a time,
// for tests/http.rs: "ready" once the page has loaded its things, then "seen <ns>" when the row
// of the thing named on stdin appears, "stale <ns>" when that row turns stale, and at the end
// "history <n> <sparklines>": the page's requests to /api/history and the sparklines it drew
// (none from a broker without --history).
import { chromium } from "playwright-core";
import readline from "node:readline";

const url = process.argv[2];

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
  const page = await browser.newPage();
  page.on("pageerror", e => console.log("pageerror " + e.message));
  let asked = 0;
  page.on("request", r => { if (r.url().includes("/api/history/")) asked++; });
  await page.goto(url);
  // Polled from here: waitForFunction evaluates a string in the page, which its
  // Content-Security-Policy forbids.
  await until(async () => /\d+ things · live/.test(await page.textContent("#status")), 60000);
  const rows = await page.evaluate(() => document.querySelectorAll("#things tr").length);
  console.log(`ready ${rows}`);
  const lines = readline.createInterface({ input: process.stdin });
  for await (const ns of lines) {
    const row = `tr[data-ns="${ns}"]`;
    await page.waitForSelector(row, { timeout: 30000 });
    const value = await page.textContent(`${row} td.value`);
    console.log(`seen ${ns} ${value}`);
    await page.waitForSelector(`${row}.stale`, { timeout: 30000 });
    console.log(`stale ${ns}`);
  }
  const drawn = await page.locator("svg.spark").count();
  console.log(`history ${asked} ${drawn}`);
} finally {
  await browser.close();
}
