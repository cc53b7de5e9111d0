// The demo page in two tabs of one browser: after tab A logs out, tab B (same cookie
// jar, so logged out too) asks to log in again as soon as a REST call is refused with
// 401, instead of showing "Signed in" with an error; after logging in again it works.
// argv: <gateway base url> <db> <user> <password>
// Prints "OK" or "FAIL <why>".
import { launchBrowser, runCheck } from "./harness.mjs";

const [base, db, user, password] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;

async function open() {
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  await page.goto(`${base}/?db=${db}`);
  return page;
}

async function add(page, title) {
  await page.fill("[data-testid=new-title]", title);
  await page.click("[data-testid=add]");
}

await runCheck(browser, async () => {
  const a = await open();
  await a.fill("#name", user);
  await a.fill("#password", password);
  await a.click("[data-testid=login]");
  await a.waitForFunction(() => document.getElementById("status").textContent === "open");
  const b = await open(); // the cookie is shared: B starts signed in
  await b.waitForFunction(() => document.getElementById("status").textContent === "open");

  await a.click("#logout");
  await a.waitForSelector("#login", { state: "visible" });

  await add(b, "after the other tab logged out");
  await b.waitForSelector("#login", { state: "visible", timeout: 10000 }).catch(async () => {
    const error = await b.textContent("#error");
    throw new Error(`tab B still shows the list (error shown: ${JSON.stringify(error)})`);
  });
  if (!(await b.isHidden("#app"))) throw new Error("tab B shows the list and the login form");

  await b.fill("#name", user);
  await b.fill("#password", password);
  await b.click("[data-testid=login]");
  await b.waitForSelector("#app", { state: "visible" });
  await b.waitForSelector("#login", { state: "hidden" });
  await add(b, "back again");
  await b.waitForSelector("li:has-text('back again')", { timeout: 10000 });
});
