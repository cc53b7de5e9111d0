// The browser client's edge cases in Chromium (timing, backoff, session checks), one case
// per run.
// argv: <gateway base url> <db> <user> <password> <case>
//   stale_check  a session check sent before login() (a socket refused while logged out)
//                answers 401 after login() succeeded: the client must not then report
//                "unauthenticated" and stop its subscriptions
// Prints "OK" or "FAIL <why>".
import { expect, launchBrowser, logPage, putDirect, runCheck, sleep } from "./harness.mjs";

const [base, db, user, password, which] = process.argv.slice(2);
const gateway = { base, db, user, password };
const browser = await launchBrowser();
const { context } = browser;

const cases = {
  async stale_check() {
    const page = logPage(await context.newPage());
    await page.goto(`${base}/health`);
    let checks = 0;
    // The first GET /session (the client's own check) is slow to answer (a busy gateway).
    await page.route("**/api/v1/session", async (route) => {
      if (route.request().method() !== "GET" || checks++ > 0) return route.continue();
      const answer = await route.fetch();
      await sleep(1500);
      await route.fulfill({ response: answer });
    });
    await page.evaluate(async (db) => {
      const W = await import("/static/wallaby.js");
      window.statuses = [];
      window.got = [];
      window.wb = new W.Wallaby({ minBackoff: 100, maxBackoff: 500, keepAliveMs: 0, pingMs: 0,
        onStatus: (state) => window.statuses.push(state) });
      // Not logged in yet (a page restoring its subscriptions before the login form).
      window.sub = window.wb.subscribe(db, { since: 0 }, (change) => window.got.push(change.id));
    }, db);
    for (let i = 0; i < 100 && checks === 0; i++) await sleep(50); // the check is in flight
    expect(checks === 1, "the client checked its session", checks);
    await page.evaluate(([user, password]) => wb.login(user, password), [user, password]);
    await sleep(2500); // the old check answers 401 meanwhile
    await putDirect(gateway, { _id: "after-login" });
    const arrived = await page.waitForFunction(() => got.includes("after-login"), null,
      { timeout: 10000 }).then(() => true, () => false);
    const seen = await page.evaluate(() => ({ statuses, got, waiting: wb._waitingForLogin }));
    expect(arrived && !seen.statuses.includes("unauthenticated"),
      "after a successful login() the subscription runs (no stale unauthenticated)", seen);
  },
};

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  await cases[which]();
});
