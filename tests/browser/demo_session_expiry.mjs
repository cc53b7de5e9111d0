// The demo page when its CouchDB session ends: the page asks to log in again, and after
// the new login the list resumes where it stopped (changes made meanwhile show up once).
// argv: <gateway base url> <db> <user> <password>
// stdio: prints "LOGGED_OUT" once the page shows the login form again, waits for
// "RELOGIN <titles json>", then prints "OK" or "FAIL <why>".
import { launchBrowser, nextLine, runCheck } from "./harness.mjs";

const [base, db, user, password] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;

async function titles(page) {
  return page.$$eval("[data-testid=items] li .title", (nodes) => nodes.map((n) => n.textContent));
}

await runCheck(browser, async () => {
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  await page.goto(`${base}/?db=${db}`);
  await page.fill("#name", user);
  await page.fill("#password", password);
  await page.click("[data-testid=login]");
  await page.waitForFunction(() => document.getElementById("status").textContent === "open");
  await page.fill("[data-testid=new-title]", "before expiry");
  await page.click("[data-testid=add]");
  await page.waitForSelector("li:has-text('before expiry')");
  console.log("SUBSCRIBED");

  await page.waitForFunction(
    () => document.getElementById("status").textContent === "unauthenticated", null,
    { timeout: 20000 });
  await page.waitForSelector("#login", { state: "visible" });
  console.log("LOGGED_OUT");

  const reply = await nextLine();
  const meanwhile = JSON.parse(reply.replace(/^RELOGIN /, ""));
  await page.fill("#name", user);
  await page.fill("#password", password);
  await page.click("[data-testid=login]");
  await page.waitForSelector("#app", { state: "visible" });
  await page.waitForSelector("#login", { state: "hidden" });
  const want = ["before expiry", ...meanwhile].sort();
  await page.waitForFunction(
    (expected) => {
      const got = [...document.querySelectorAll("[data-testid=items] li .title")].map((n) => n.textContent).sort();
      return JSON.stringify(got) === JSON.stringify(expected);
    },
    want,
    { timeout: 20000 },
  ).catch(async () => {
    throw new Error(`after login again: expected ${JSON.stringify(want)}, got ${JSON.stringify(await titles(page))}`);
  });
  // exactly one live subscription again: a new item shows up once
  await page.fill("[data-testid=new-title]", "after login");
  await page.click("[data-testid=add]");
  await page.waitForSelector("li:has-text('after login')");
  await new Promise((resolve) => setTimeout(resolve, 500));
  const final = await titles(page);
  if (final.filter((t) => t === "after login").length !== 1) throw new Error(`duplicates: ${final}`);
});
