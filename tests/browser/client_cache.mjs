// The browser's own HTTP cache in front of the ES module client: a document read twice
// is revalidated (the gateway answers 304, the page still gets the whole document), and
// read again after it changed, it comes back new. Large answers arrive gzip-coded.
// argv: <gateway base url> <db> <user> <password>
// stdio: prints "READ <json of both reads>", waits for "CHANGED", prints "READ <json>",
// then "CODINGS <json list of the Content-Encoding of each document answer with a body>".
import { closeBrowser, launchBrowser, nextLine } from "./harness.mjs";

const [base, db, user, password] = process.argv.slice(2);
const browser = await launchBrowser();
try {
  const page = await browser.context.newPage();
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  const codings = [];
  page.on("response", async (response) => {
    if (response.url().includes("/docs/cached") && response.status() === 200) {
      codings.push((await response.allHeaders())["content-encoding"] ?? null);
    }
  });
  await page.goto(`${base}/static/demo.css`); // same origin, no page script of its own
  const first = await page.evaluate(async ({ db, user, password }) => {
    const { Wallaby } = await import("/static/wallaby.js");
    window.client = new Wallaby();
    await window.client.login(user, password);
    const reads = [];
    for (let i = 0; i < 2; i++) reads.push(await window.client.get(db, "cached"));
    return reads;
  }, { db, user, password });
  console.log("READ " + JSON.stringify(first));
  await nextLine(); // CHANGED
  const again = await page.evaluate(async (db) => window.client.get(db, "cached"), db);
  console.log("READ " + JSON.stringify(again));
  console.log("CODINGS " + JSON.stringify(codings));
} finally {
  await closeBrowser(browser);
}
