// Drives the demo page in a real headless Chromium (playwright-core).
// argv: <gateway base url> <db> <user> <password>
// Talks to the Python test over stdio: prints "RESTART" and waits for "RESTARTED <ids>".
import { launchBrowser, nextLine, runCheck } from "./harness.mjs";

const [base, db, user, password] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;
const log = (...args) => console.error("[browser]", ...args);

async function titles(page) {
  return page.$$eval("[data-testid=items] li .title", (nodes) => nodes.map((n) => n.textContent));
}
async function waitTitles(page, expected, what) {
  try {
    await page.waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll("[data-testid=items] li .title")].map((n) => n.textContent).sort();
        return JSON.stringify(got) === JSON.stringify([...want].sort());
      },
      expected,
      { timeout: 20000 },
    );
  } catch (error) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(await titles(page))}`);
  }
}

await runCheck(browser, async () => {
  const pageA = await context.newPage();
  const pageB = await context.newPage();
  for (const page of [pageA, pageB]) {
    page.on("console", (message) => log(message.type(), message.text()));
    page.on("pageerror", (error) => log("pageerror", error.message));
  }
  await pageA.goto(`${base}/?db=${db}`);
  await pageA.fill("#name", user);
  await pageA.fill("#password", password);
  await pageA.click("[data-testid=login]");
  await pageA.waitForSelector("#app", { state: "visible" });
  await pageA.waitForSelector("#login", { state: "hidden" });
  // Page B shares the browser profile, so the session cookie logs it in directly.
  await pageB.goto(`${base}/?db=${db}`);
  await pageB.waitForSelector("#app", { state: "visible" });
  await pageB.waitForSelector("#login", { state: "hidden" });
  await pageA.waitForFunction(() => document.getElementById("status").textContent === "open");
  await pageB.waitForFunction(() => document.getElementById("status").textContent === "open");

  await pageA.fill("[data-testid=new-title]", "buy milk");
  await pageA.click("[data-testid=add]");
  await waitTitles(pageB, ["buy milk"], "B sees A's item");
  await pageB.fill("[data-testid=new-title]", "walk the dog");
  await pageB.click("[data-testid=add]");
  await waitTitles(pageA, ["buy milk", "walk the dog"], "A sees B's item");
  await pageB.check("li:has-text('buy milk') input[type=checkbox]");
  await pageA.waitForSelector("li.done:has-text('buy milk')", { timeout: 20000 });
  await pageA.click("li:has-text('walk the dog') button.delete");
  await waitTitles(pageB, ["buy milk"], "B sees A's delete");

  console.log("RESTART");
  const reply = await nextLine();
  const added = JSON.parse(reply.replace(/^RESTARTED /, ""));
  await waitTitles(pageA, ["buy milk", ...added], "A after gateway restart");
  await waitTitles(pageB, ["buy milk", ...added], "B after gateway restart");
  // and live again after the restart
  await pageA.fill("[data-testid=new-title]", "after restart");
  await pageA.click("[data-testid=add]");
  await waitTitles(pageB, ["buy milk", ...added, "after restart"], "live after restart");
});
