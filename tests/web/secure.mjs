// Opens the broker's web page over HTTPS in headless Chromium with a token, for tests/http.rs:
// signs in through the page's form, then reports how documentation links are shown and
// switches the lamp with its button. One line per fact; "csp …" for any policy violation.
import { chromium } from "playwright-core";

const [url, token] = process.argv.slice(2);

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
  // The test's certificate is made at run time and trusted by nobody.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on("console", m => { if (/Content.Security.Policy/i.test(m.text())) console.log("csp " + m.text()); });
  page.on("pageerror", e => console.log("pageerror " + e.message));
  const first = await page.goto(url);
  console.log("first " + first.status());
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(url), page.click("#sign-in")]);
  await until(async () => /\d+ things · live/.test(await page.textContent("#status")), 60000);
  console.log("ready");
  for (const ns of ["web.evil", "web.good"]) {
    const cell = page.locator(`tr[data-ns="${ns}"] td:nth-child(4)`);
    await until(async () => (await cell.textContent()).length > 0, 30000);
    const links = page.locator(`tr[data-ns="${ns}"] td:nth-child(4) a`);
    const n = await links.count();
    const shown = n ? await links.first().getAttribute("href") : await cell.textContent();
    console.log(`docs ${ns} links=${n} ${shown}`);
  }
  const button = page.locator('tr[data-ns="web.lamp"] button[data-field="on"]');
  await button.waitFor({ timeout: 30000 });
  console.log("button " + await button.textContent());
  await button.click();
  await until(async () => (await button.textContent()) === "on: off", 30000);
  console.log("switched " + await button.textContent());
} finally {
  await browser.close();
}
