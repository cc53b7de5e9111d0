// The browser client after a gateway restart: feed ids are per process, so an id the
// old process gave one subscription may name another database's feed on the new one.
// Each subscription must get only its own changes.
// argv: <gateway base url> <db> <user> <password> <other db> [held]
//   held: after the restart the first subscription's `subscribed` is held back 2 s (a slow
//   authorization), so the second one's feed id (reused by the new process) streams first:
//   a subscription whose old feed id was not forgotten on the drop takes those changes.
// Talks to the Python test over stdio: prints "RESTART" and waits for "RESTARTED <ids>".
import { launchBrowser, nextLine, runCheck } from "./harness.mjs";

const [base, db, user, password, other, held] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;
const log = (...args) => console.error("[browser]", ...args);

/** A page following `subscriptions` in order; `slow`: the database whose `subscribed` is held. */
async function open(subscriptions, slow = null) {
  const page = await context.newPage();
  if (slow) {
    let sockets = 0;
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      const server = ws.connectToServer();
      const later = sockets++ > 0; // every socket after the first (after the restart)
      server.onMessage((message) => {
        const text = String(message);
        if (later && text.includes('"type":"subscribed"') && text.includes(`"db":"${slow}"`)) {
          setTimeout(() => ws.send(message), 2000);
        } else {
          ws.send(message);
        }
      });
    });
  }
  page.on("console", (message) => log(message.type(), message.text()));
  page.on("pageerror", (error) => log("pageerror", error.message));
  await page.goto(`${base}/health`); // any page of the gateway's origin
  await page.evaluate(async ([user, password, subscriptions]) => {
    const { Wallaby } = await import("/static/wallaby.js");
    // A fixed, slow reconnect: the other page subscribes first after the restart.
    const wb = new Wallaby({ minBackoff: 3000, maxBackoff: 3000 });
    await wb.login(user, password);
    window.got = {};
    window.subs = {};
    for (const name of subscriptions) {
      window.got[name] = [];
      window.subs[name] = wb.subscribe(name, {}, (change) => window.got[name].push(change.id));
      // One at a time: the first subscription's feed gets the first feed id.
      await new Promise((resolve) => {
        const wait = () => (window.subs[name].lastSeq !== null ? resolve() : setTimeout(wait, 20));
        wait();
      });
    }
  }, [user, password, subscriptions]);
  return page;
}

await runCheck(browser, async () => {
  const page = await open([other, db], held ? other : null); // `other` first: feed f1
  console.log("RESTART");
  const added = JSON.parse((await nextLine()).replace(/^RESTARTED /, ""));
  // On the new process `db` is followed first, by another page: its feed is now f1.
  await open([db]);
  await page.waitForFunction(
    ([db, added]) => added.every((id) => window.got[db].includes(id)), [db, added],
    { timeout: 30000 },
  );
  await page.waitForTimeout(1000);
  const got = await page.evaluate(() => window.got);
  const strays = got[other].filter((id) => added.includes(id));
  if (strays.length) throw new Error(`${other}'s subscription got ${db}'s changes: ${strays}`);
  const repeats = got[db].filter((id, i) => got[db].indexOf(id) !== i);
  if (repeats.length) throw new Error(`repeated changes: ${repeats}`);
});
