// The demo page with documents it did not write, and a second user at the same screen.
//   1. a document whose `created` is a number (written by another client) must not stop
//      the list from rendering, for it or for later items;
//   2. after the session ends and someone else logs in (who may not read the database),
//      the first user's items are no longer shown.
// argv: <gateway base url> <db> <user> <password> <other user> <other password>
// Prints "OK" or "FAIL <why>".
import { launchBrowser, logInToDemo, runCheck } from "./harness.mjs";

const [base, db, user, password, otherUser, otherPassword] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;

function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function titles(page) {
  return page.$$eval("#items li .title", (spans) => spans.map((span) => span.textContent));
}

async function add(page, title) {
  await page.fill("[data-testid=new-title]", title);
  await page.click("[data-testid=add]");
}

await runCheck(browser, async () => {
  const page = await context.newPage();
  const failures = [];
  page.on("pageerror", (error) => failures.push(error.message));
  await page.goto(`${base}/?db=${db}`);
  await logInToDemo(page, user, password);
  await add(page, "first");
  await page.waitForFunction(() => document.querySelectorAll("#items li").length === 1);

  const written = await fetch(`${base}/api/v1/db/${db}/docs/odd`, {
    method: "PUT",
    headers: { "Content-Type": "application/json",
      Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}` },
    body: JSON.stringify({ title: "odd", done: false, created: 1700000000000 }),
  });
  expect(written.status === 201, "the odd document is written", written.status);
  await add(page, "second");
  const shown = await page.waitForFunction(
    () => document.querySelectorAll("#items li").length === 3, null, { timeout: 10000 },
  ).then(() => true, () => false);
  expect(shown, "every item is listed", { titles: await titles(page), failures });

  // The session ends (logged out elsewhere); the next action asks to log in again.
  await page.evaluate(() => fetch("/api/v1/session", { method: "DELETE" }));
  await add(page, "after the session ended");
  await page.waitForSelector("#login", { state: "visible", timeout: 10000 });
  await logInToDemo(page, otherUser, otherPassword); // may not read this database
  await page.waitForFunction(() => document.getElementById("error").textContent !== "", null,
    { timeout: 10000 }).catch(() => {});
  const left = await titles(page);
  expect(left.length === 0, "the other user sees none of the first user's items", left);
});
