// The browser client's subscriptions in Chromium, one case per run.
// argv: <gateway base url> <db> <user> <password> <case> [<case's own arguments>]
//   forbidden    a subscription the user may not read ends alone (onError, WallabyError,
//                after one retry); the shared socket stays up and the others go on
//   identical    two subscriptions with the same database and options (and one with
//                another since) each get every change once: no duplicate_subscription
//   error_closes the last subscription ending with an error closes the socket
//   resubscribe  unsubscribing the last subscription and subscribing again at once (a
//                component remounting) loses no change
//   too_many     33 different subscriptions (one more than a socket takes) all work
//   status_throws an onStatus callback that throws stops nothing
//   too_big      a subscription whose message is over the gateway's limit ends with
//                onError (1009) instead of reconnecting forever; the others go on
//   login_switch after login() as another user (argv: <other user> <other password>),
//                no socket keeps the first user's credentials
//   too_big_first the same with the oversized subscription made first, both before the
//                socket opens (a page subscribing at start-up): only it ends
//   dead_path    the path to the gateway goes silent (a hung proxy or NAT: nothing passes,
//                nothing closes): the client's pings go unanswered, it reconnects, and
//                the change made meanwhile arrives
//   online       a socket waiting out a long backoff reconnects at once when the browser
//                says it is back online
//   logout_fails logout() while DELETE /session cannot reach the gateway throws and leaves
//                the client signed in, its subscription live; a logout that gets through
//                ends it
//   remount_leak a component subscribing and unsubscribing 100 times on a socket that
//                another subscription keeps open: what its callbacks held is freed
// Prints "OK" or "FAIL <why>".
import {
  clientPage as sharedClientPage, expect, launchBrowser, metric, proxyToGateway, putDirect, runCheck,
  sleep, slowCloses,
} from "./harness.mjs";

const [base, db, user, password, which, ...extra] = process.argv.slice(2);
// forbidden: <db the user may not read>; login_switch: <other user> <other password>
const [forbidden] = extra;
const [otherUser, otherPassword] = extra;
const browser = await launchBrowser();
const { context } = browser;
const writeDirect = (id) => putDirect({ base, db, user, password }, { _id: id });

function clientPage(origin = base, options = {}) {
  return sharedClientPage(context, { origin, user, password, options,
    before: which === "resubscribe" ? slowCloses : null });
}

/** Open WebSocket connections to the gateway (its metrics gauge). */
const openSockets = () => metric(base, "wallaby_ws_connections");

const cases = {
  async forbidden(page) {
    await page.evaluate(async ([db, forbidden]) => {
      follow("mine", db, { since: 0 });
      await new Promise((resolve) => setTimeout(resolve, 500));
      window.statuses.length = 0;
      follow("theirs", forbidden, { since: 0 });
    }, [db, forbidden]);
    for (let i = 0; i < 6; i++) {
      await page.evaluate(([db, i]) => wb.put(db, { _id: `d${i}` }), [db, i]);
      await sleep(400);
    }
    await page.waitForFunction(() => window.got.mine.length >= 6, null, { timeout: 10000 }).catch(() => {});
    // (a refusal while the session looks valid is tried once more, 6 s later)
    await page.waitForFunction(() => window.errors.theirs.length > 0, null, { timeout: 20000 }).catch(() => {});
    await sleep(500);
    const got = await page.evaluate(() => ({ got, errors, statuses }));
    expect(got.errors.theirs.length === 1 && got.errors.theirs[0].isWallaby
      && [401, 403].includes(got.errors.theirs[0].status), "onError once, with a WallabyError", got.errors);
    expect(!got.statuses.includes("closed") && !got.statuses.includes("unauthenticated"),
      "the shared socket stays up", got.statuses);
    expect(JSON.stringify(got.got.mine) === JSON.stringify(["d0", "d1", "d2", "d3", "d4", "d5"]),
      "the readable subscription gets each change once", got.got.mine);
    expect(got.errors.mine.length === 0, "no error for the readable one", got.errors);
  },

  async identical(page) {
    await page.evaluate(async (db) => {
      await wb.put(db, { _id: "before" });
      follow("A", db, { since: 0, include_docs: true });
      follow("B", db, { since: 0, include_docs: true }); // identical to A
      follow("C", db, { include_docs: true }); // since "now": the same options as A
      follow("D", db, { since: 0, include_docs: true, filter: "_doc_ids", doc_ids: ["w1", "before"] });
      follow("E", db, { since: 0, include_docs: true, filter: "_doc_ids", doc_ids: ["before", "w1"] });
    }, db);
    await page.waitForFunction(() => Object.values(subs).every((s) => s.lastSeq !== null), null,
      { timeout: 10000 }).catch(async () => {
      throw new Error(`not all subscribed: ${JSON.stringify(await page.evaluate(() => ({
        seqs: Object.fromEntries(Object.entries(subs).map(([name, s]) => [name, s.lastSeq])), errors, got })))}`);
    });
    await page.evaluate(async (db) => {
      for (let i = 0; i < 5; i++) await wb.put(db, { _id: `w${i}` });
    }, db);
    const later = ["w0", "w1", "w2", "w3", "w4"];
    const want = { A: ["before", ...later], B: ["before", ...later], C: later,
      D: ["before", "w1"], E: ["before", "w1"] };
    await page.waitForFunction((want) => Object.entries(want).every(
      ([name, ids]) => window.got[name].length >= ids.length), want, { timeout: 10000 }).catch(() => {});
    await sleep(500);
    const got = await page.evaluate(() => ({ got, errors }));
    for (const [name, ids] of Object.entries(want)) {
      expect(got.errors[name].length === 0, `subscription ${name}: no error`, got.errors[name]);
      expect(JSON.stringify(got.got[name]) === JSON.stringify(ids), `subscription ${name}: each change once`, got.got[name]);
    }
    // Unsubscribing one of a pair leaves the other running.
    await page.evaluate(async (db) => {
      subs.A.unsubscribe();
      await wb.put(db, { _id: "after" });
    }, db);
    await page.waitForFunction(() => window.got.B.includes("after"), null, { timeout: 10000 })
      .catch(() => { throw new Error("B stopped when A was unsubscribed"); });
  },

  async error_closes(page) {
    const before = await openSockets();
    await page.evaluate(() => follow("missing", "no_such_database_here", { since: 0 }));
    await page.waitForFunction(() => window.errors.missing.length > 0, null, { timeout: 10000 });
    await sleep(500);
    const got = await page.evaluate(() => ({ errors, statuses, keepAlive: wb._keepAlive }));
    expect(got.errors.missing[0].status === 404, "onError with 404", got.errors);
    expect(got.statuses[got.statuses.length - 1] === "closed", "the socket is closed", got.statuses);
    expect(got.keepAlive === null, "no keep-alive timer left", got.keepAlive);
    const after = await openSockets();
    expect(after === null || after === before, "the gateway holds no socket of it", { before, after });
  },

  async too_many(page) {
    await page.evaluate((db) => {
      for (let i = 0; i < 33; i++) {
        follow(`s${i}`, db, { filter: "_doc_ids", doc_ids: [`only${i}`, "common"] });
      }
    }, db);
    await page.waitForFunction(() => Object.values(subs).every((s) => s.lastSeq !== null)
      || Object.values(errors).some((e) => e.length), null, { timeout: 15000 }).catch(() => {});
    await page.evaluate((db) => wb.put(db, { _id: "common" }), db);
    await page.waitForFunction(() => Object.values(got).every((ids) => ids.length === 1), null,
      { timeout: 10000 }).catch(() => {});
    const seen = await page.evaluate(() => ({ got, errors }));
    const failed = Object.entries(seen.errors).filter(([, e]) => e.length);
    expect(failed.length === 0, "no subscription refused", failed);
    expect(Object.values(seen.got).every((ids) => JSON.stringify(ids) === '["common"]'),
      "every subscription gets the change once", seen.got);
  },

  async status_throws(page) {
    await page.evaluate((db) => {
      window.throwOnStatus = true;
      follow("a", db, {});
    }, db);
    await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 })
      .catch(() => { throw new Error("never subscribed with a throwing onStatus"); });
    await page.evaluate((db) => wb.put(db, { _id: "seen" }), db);
    await page.waitForFunction(() => got.a.includes("seen"), null, { timeout: 10000 })
      .catch(() => { throw new Error("no change with a throwing onStatus"); });
  },

  async too_big(page) {
    await page.evaluate((db) => {
      follow("fine", db, {});
      const ids = Array.from({ length: 700 }, (_, i) => `${i}-`.padEnd(100, "x"));
      follow("huge", db, { filter: "_doc_ids", doc_ids: ids }); // ~70 KiB: over 64 KiB
    }, db);
    await page.waitForFunction(() => errors.huge.length > 0, null, { timeout: 10000 })
      .catch(() => {});
    await sleep(3000); // would be ~15 reconnects at the shortest backoff
    await page.evaluate((db) => wb.put(db, { _id: "after" }), db);
    await page.waitForFunction(() => got.fine.includes("after"), null, { timeout: 10000 })
      .catch(() => {});
    const seen = await page.evaluate(() => ({ got, errors, statuses }));
    expect(seen.errors.huge.length === 1 && seen.errors.huge[0].status === 1009
      && seen.errors.huge[0].error === "message_too_big", "onError once, 1009", seen.errors);
    const connects = seen.statuses.filter((state) => state === "connecting").length;
    expect(connects <= 3, "no reconnect loop", seen.statuses);
    expect(seen.got.fine.includes("after"), "the other subscription goes on", seen.got);
  },

  async too_big_first(page) {
    await page.evaluate((db) => {
      const ids = Array.from({ length: 700 }, (_, i) => `${i}-`.padEnd(100, "x"));
      follow("huge", db, { filter: "_doc_ids", doc_ids: ids }); // ~70 KiB: over 64 KiB
      follow("fine", db, {}); // sent after it on the same socket: unanswered at the close
    }, db);
    await page.waitForFunction(() => errors.huge.length > 0, null, { timeout: 10000 })
      .catch(() => {});
    await page.waitForFunction(() => subs.fine.lastSeq !== null, null, { timeout: 10000 })
      .catch(() => {});
    await writeDirect("after");
    await page.waitForFunction(() => got.fine.includes("after"), null, { timeout: 10000 })
      .catch(() => {});
    const seen = await page.evaluate(() => ({ got, errors, statuses }));
    expect(seen.errors.fine.length === 0, "the small subscription does not end", seen.errors);
    expect(seen.errors.huge.length === 1 && seen.errors.huge[0].status === 1009,
      "the oversized one ends, 1009", seen.errors);
    expect(seen.got.fine.includes("after"), "the small subscription goes on", seen.got);
  },

  async dead_path() {
    const proxy = await proxyToGateway(base);
    try {
      const page = await clientPage(proxy.origin, { pingMs: 1000 });
      await page.evaluate((db) => follow("a", db, { since: 0 }), db);
      await writeDirect("before");
      await page.waitForFunction(() => got.a.includes("before"), null, { timeout: 10000 });
      proxy.silence();
      await writeDirect("after");
      const arrived = await page.waitForFunction(() => got.a.includes("after"), null,
        { timeout: 15000 }).then(() => true, () => false);
      const seen = await page.evaluate(() => ({ got, errors, statuses }));
      expect(arrived, "the change made while the path was dead arrives", seen);
      expect(seen.got.a.filter((id) => id === "before").length === 1, "nothing twice", seen.got);
      expect(seen.errors.a.length === 0, "the subscription goes on", seen.errors);
    } finally {
      proxy.close();
    }
  },

  async online() {
    const proxy = await proxyToGateway(base);
    try {
      const page = await clientPage(proxy.origin, { minBackoff: 60000, maxBackoff: 60000 });
      await page.evaluate((db) => follow("a", db, { since: 0 }), db);
      await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
      proxy.drop(); // the socket closes: the next try is 30 to 60 s away
      await page.waitForFunction(() => statuses.includes("closed"), null, { timeout: 10000 });
      await writeDirect("meanwhile");
      await page.evaluate(() => window.dispatchEvent(new Event("online")));
      const arrived = await page.waitForFunction(() => got.a.includes("meanwhile"), null,
        { timeout: 10000 }).then(() => true, () => false);
      expect(arrived, "reconnected once back online", await page.evaluate(() => statuses));
    } finally {
      proxy.close();
    }
  },

  async logout_fails(page) {
    await page.evaluate((db) => follow("a", db, { since: "now" }), db);
    await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
    const cut = (route) => (route.request().method() === "DELETE" ? route.abort() : route.continue());
    await page.route("**/api/v1/session", cut);
    const failed = await page.evaluate(() => wb.logout().then(() => "resolved", (error) => error.name));
    expect(failed !== "resolved", "logout() throws when the gateway cannot be reached", failed);
    await writeDirect("after-failed-logout");
    const live = await page.waitForFunction(() => got.a.includes("after-failed-logout"), null,
      { timeout: 10000 }).then(() => true, () => false);
    expect(live, "the subscription goes on after a failed logout", await page.evaluate(() => got));
    const session = await page.evaluate(() => wb.session().then((s) => s.name, (e) => e.status));
    expect(session === user, "still signed in", session);
    await page.unroute("**/api/v1/session", cut);
    await page.evaluate(() => wb.logout());
    await page.waitForFunction(() => statuses.includes("closed"), null, { timeout: 10000 });
    const after = await page.evaluate(() => wb.session().then((s) => s.name, (e) => e.status));
    expect(after === 401, "signed out once the logout got through", after);
  },

  async login_switch(page) {
    await page.evaluate(async (db) => {
      const first = await wb.request("GET", "/session");
      window.firstUser = first.name;
      follow("mine", db, {});
    }, db);
    await page.waitForFunction(() => subs.mine.lastSeq !== null, null, { timeout: 10000 });
    // A writer with the first user's own token (the page's cookie is about to change).
    await page.evaluate(async ([user, password]) => {
      const probe = new W.Wallaby({ token: "x" });
      window.writer = new W.Wallaby({ token: (await probe.login(user, password)).token });
    }, [user, password]);
    await page.evaluate((db) => writer.put(db, { _id: "before" }), db);
    await page.waitForFunction(() => got.mine.includes("before"), null, { timeout: 10000 });
    await page.evaluate(([name, password]) => wb.login(name, password), [otherUser, otherPassword]);
    await sleep(1500);
    await page.evaluate((db) => writer.put(db, { _id: "secret" }), db);
    await sleep(3000);
    const seen = await page.evaluate(() => ({ got, errors }));
    expect(!seen.got.mine.includes("secret"),
      "the other user gets nothing of a database only the first may read", seen);
  },

  async resubscribe(page) {
    let lost = 0;
    for (let round = 0; round < 4; round++) {
      await page.evaluate(async (db) => {
        window.got = {};
        const first = wb.subscribe(db, {}, () => {});
        await new Promise((resolve) => setTimeout(resolve, 500)); // mounted, live
        first.unsubscribe(); // cleanup: the last subscription, so the socket closes
        follow("again", db, {}); // mounted again at once
      }, db);
      await page.waitForFunction(() => subs.again.lastSeq !== null, null, { timeout: 10000 });
      await sleep(1500); // the old socket's close event
      await page.evaluate(([db, round]) => wb.put(db, { _id: `r${round}` }), [db, round]);
      const seen = await page.waitForFunction((id) => window.got.again.includes(id), `r${round}`,
        { timeout: 3000 }).then(() => true, () => false);
      if (!seen) lost += 1;
      await page.evaluate(() => subs.again.unsubscribe());
    }
    expect(lost === 0, "the remounted subscription gets the next change", `${lost}/4 rounds lost it`);
  },

  async remount_leak(page) {
    const cdp = await context.newCDPSession(page);
    const heapMB = async () => {
      await cdp.send("HeapProfiler.collectGarbage");
      return (await cdp.send("Runtime.getHeapUsage")).usedSize / 1e6;
    };
    // The page's list, subscribed for its whole life, keeps the socket open.
    await page.evaluate((db) => follow("list", db, {}), db);
    await page.waitForFunction(() => subs.list.lastSeq !== null, null, { timeout: 10000 });
    const before = await heapMB();
    // A detail panel opened and closed 100 times: while open it follows one document,
    // and its callback holds the panel's state (1 MiB here).
    await page.evaluate(async (db) => {
      for (let i = 0; i < 100; i++) {
        const state = new Array(131072).fill(0.5);
        const sub = wb.subscribe(db, { filter: "_doc_ids", doc_ids: [`item${i}`] },
          () => state.length);
        while (sub.lastSeq === null) await new Promise((resolve) => setTimeout(resolve, 5));
        sub.unsubscribe();
      }
    }, db);
    const after = await heapMB();
    expect(after - before < 20, "100 unsubscribed subscriptions are freed (heap in MB)",
      { before: Math.round(before), after: Math.round(after) });
  },
};

/** Cases that make their own page (through a proxy, with other options). */
const ownPage = new Set(["dead_path", "online"]);

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  await cases[which](ownPage.has(which) ? undefined : await clientPage());
});
