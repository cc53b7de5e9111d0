// The browser client's edge cases in Chromium (timing, backoff, session checks), one case
// per run.
// argv: <gateway base url> <db> <user> <password> <case> [<page origin port>]
//   backoff_reset  after a run of failed reconnects, a connection whose subscription was
//                  accepted resets the backoff: the next drop reconnects at once
//   backoff_open   a socket that opens but is closed before any subscription is accepted
//                  (a gateway closing at once, 1011) backs off exponentially: no tight loop
//   backoff_cap    during an outage no wait between two tries exceeds maxBackoff
//   unsubscribe    unsubscribe() ends the subscription on the gateway (its gauge goes back)
//                  when the socket stays open for another one
//   pong           answered pings keep the socket: no reconnect churn
//   cross_origin   a page of another origin (listed in WALLABY_CORS_ORIGINS) logs in with
//                  baseUrl: the session cookie is set and sent (credentials: "include")
//   stale_check    a session check sent before login() (a socket refused while logged out)
//                  answers 401 after login() succeeded: the client must not then report
//                  "unauthenticated" and stop its subscriptions
//   relogin_close  login() again while the old socket's close handshake is slow: the old
//                  socket's late close event must not orphan the new socket (the gateway
//                  would hold two connections, one of them unreferenced by the client)
//   keepalive      while subscribed, the session is touched every keepAliveMs (GET /session)
//   waiting        once "unauthenticated" was reported, a new subscription waits for
//                  login() (no handshake tried with the dead session, no second report)
//   put_rev        put() sets doc._rev (as documented), so the same object can be put again
// Prints "OK" or "FAIL <why>".
import http from "node:http";

import {
  clientPage as sharedClientPage, expect, launchBrowser, logPage, metric, proxyToGateway, putDirect,
  runCheck, sleep, slowCloses,
} from "./harness.mjs";

const [base, db, user, password, which, pagePort] = process.argv.slice(2);
const gateway = { base, db, user, password };
const browser = await launchBrowser();
const { context } = browser;

/** A page of `origin` with a logged-in client `wb`, its statuses timed (see harness.mjs). */
function clientPage(origin, options = {}, wallabyFrom = origin) {
  return sharedClientPage(context, { origin, user, password, options, wallabyFrom, timed: true });
}

/**
 * Loads the gateway's /health in `page` and makes a client `wb` there with `options`, not
 * logged in: `statuses` gets each state onStatus reports, `got` starts empty.
 */
async function bareClient(page, options) {
  await page.goto(`${base}/health`);
  await page.evaluate(async (options) => {
    const W = await import("/static/wallaby.js");
    window.statuses = [];
    window.got = [];
    window.wb = new W.Wallaby({ ...options, onStatus: (state) => window.statuses.push(state) });
  }, options);
}

const cases = {
  async stale_check() {
    const page = logPage(await context.newPage());
    let checks = 0;
    // The first GET /session (the client's own check) is slow to answer (a busy gateway).
    await page.route("**/api/v1/session", async (route) => {
      if (route.request().method() !== "GET" || checks++ > 0) return route.continue();
      const answer = await route.fetch();
      await sleep(1500);
      await route.fulfill({ response: answer });
    });
    await bareClient(page, { minBackoff: 100, maxBackoff: 500, keepAliveMs: 0, pingMs: 0 });
    // Not logged in yet (a page restoring its subscriptions before the login form).
    await page.evaluate((db) => {
      window.sub = wb.subscribe(db, { since: 0 }, (change) => got.push(change.id));
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

  async backoff_reset() {
    const proxy = await proxyToGateway(base);
    try {
      const page = await clientPage(proxy.origin, { minBackoff: 100, maxBackoff: 20000, keepAliveMs: 0, pingMs: 0 });
      await page.evaluate((db) => follow("a", db, { since: 0 }), db);
      await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
      proxy.state.refuse = true; // the gateway is unreachable for a while
      proxy.drop();
      await page.waitForFunction(() => statuses.filter(([s]) => s === "connecting").length >= 7,
        null, { timeout: 20000 });
      proxy.state.refuse = false; // back: the next try (within ~3.2 s) gets through
      await page.waitForFunction(() => statuses.filter(([s]) => s === "open").length >= 2,
        null, { timeout: 15000 });
      await page.waitForFunction(() => subs.a.lastSeq !== null && wb._lanes[0].attempt === 0
        || performance.now() - statuses[statuses.length - 1][1] > 1000, null, { timeout: 5000 });
      await sleep(500); // subscribed again
      const t0 = await page.evaluate(() => performance.now());
      proxy.drop(); // an ordinary drop of a healthy connection
      const reopened = await page.waitForFunction((t0) => statuses.some(([s, t]) => s === "open" && t > t0),
        t0, { timeout: 15000 }).then(() => true, () => false);
      const seen = await page.evaluate((t0) => statuses.filter(([, t]) => t > t0)
        .map(([s, t]) => [s, Math.round(t - t0)]), t0);
      const open = seen.find(([s]) => s === "open");
      expect(reopened && open[1] < 1500, "reconnected at once after a healthy connection dropped", seen);
    } finally {
      proxy.close();
    }
  },

  async backoff_open() {
    const page = await context.newPage();
    await page.goto(`${base}/health`);
    // The socket opens, but every subscribe is answered by closing it (1011).
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      ws.connectToServer();
      ws.onMessage((message) => {
        if (String(message).includes('"subscribe"')) ws.close({ code: 1011, reason: "internal error" });
      });
    });
    await page.evaluate(async ([user, password, db]) => {
      const W = await import("/static/wallaby.js");
      window.statuses = [];
      window.wb = new W.Wallaby({ minBackoff: 100, maxBackoff: 10000, keepAliveMs: 0, pingMs: 0,
        onStatus: (state) => window.statuses.push([state, performance.now()]) });
      await window.wb.login(user, password);
      window.wb.subscribe(db, { since: 0 }, () => {});
    }, [user, password, db]);
    await sleep(4000);
    const seen = await page.evaluate(() => statuses.map(([s]) => s));
    const tries = seen.filter((s) => s === "connecting").length;
    // exponential from 100 ms: at most 6 tries in 4 s (the gaps are 50-100, 100-200, ...)
    expect(tries <= 8, `no tight reconnect loop (${tries} tries in 4 s)`, seen.slice(-12));
  },

  async backoff_cap() {
    const proxy = await proxyToGateway(base);
    try {
      const page = await clientPage(proxy.origin, { minBackoff: 50, maxBackoff: 400, keepAliveMs: 0, pingMs: 0 });
      await page.evaluate((db) => follow("a", db, { since: 0 }), db);
      await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
      const t0 = await page.evaluate(() => performance.now());
      proxy.state.refuse = true;
      proxy.drop();
      await sleep(6000);
      proxy.state.refuse = false;
      await page.waitForFunction((t0) => statuses.some(([s, t]) => s === "open" && t > t0), t0,
        { timeout: 20000 });
      const times = await page.evaluate((t0) => statuses
        .filter(([s, t]) => s === "connecting" && t > t0).map(([, t]) => Math.round(t - t0)), t0);
      const gaps = times.slice(1).map((t, i) => t - times[i]);
      expect(Math.max(...gaps) <= 1200, "no wait between tries is much over maxBackoff (400 ms)", { times, gaps });
    } finally {
      proxy.close();
    }
  },

  async unsubscribe() {
    const page = await clientPage(base, { keepAliveMs: 0 });
    await page.evaluate((db) => follow("list", db, {}), db);
    await page.waitForFunction(() => subs.list.lastSeq !== null, null, { timeout: 10000 });
    const before = await metric(base, "wallaby_ws_subscriptions");
    await page.evaluate((db) => follow("panel", db, { filter: "_doc_ids", doc_ids: ["x"] }), db);
    await page.waitForFunction(() => subs.panel.lastSeq !== null, null, { timeout: 10000 });
    const during = await metric(base, "wallaby_ws_subscriptions");
    await page.evaluate(() => subs.panel.unsubscribe());
    let after = null;
    for (let i = 0; i < 20; i++) {
      await sleep(250);
      after = await metric(base, "wallaby_ws_subscriptions");
      if (after === before) break;
    }
    expect(during === before + 1 && after === before,
      "the gateway ends the subscription on unsubscribe()", { before, during, after });
  },

  async pong() {
    const page = await clientPage(base, { pingMs: 400, keepAliveMs: 0 });
    await page.evaluate((db) => follow("a", db, { since: 0 }), db);
    await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
    await sleep(3000); // ~7 pings, each answered
    const seen = await page.evaluate(() => statuses.map(([s]) => s));
    expect(!seen.includes("closed"), "an answering socket is kept", seen);
  },

  async relogin_close() {
    const page = logPage(await context.newPage());
    await slowCloses(page); // an old socket's close event comes after its successor opened
    await bareClient(page, { keepAliveMs: 0, pingMs: 0 });
    await page.evaluate(async ([user, password, db]) => {
      await wb.login(user, password);
      window.sub = wb.subscribe(db, { since: 0 }, (change) => got.push(change.id));
    }, [user, password, db]);
    await page.waitForFunction(() => sub.lastSeq !== null, null, { timeout: 10000 });
    const before = await metric(base, "wallaby_ws_connections");
    await page.evaluate(([user, password]) => wb.login(user, password), [user, password]);
    await sleep(4000);
    const after = await metric(base, "wallaby_ws_connections");
    await putDirect(gateway, { _id: "after-relogin" });
    await page.waitForFunction(() => got.includes("after-relogin"), null, { timeout: 10000 }).catch(() => {});
    const seen = await page.evaluate(() => ({ got, statuses }));
    expect(before === 1 && after === 1, "one socket before and after login()", { before, after, seen });
    expect(seen.got.filter((id) => id === "after-relogin").length === 1, "the change once", seen);
  },

  async keepalive() {
    const page = await clientPage(base, { keepAliveMs: 300, pingMs: 0 });
    let touches = 0;
    page.on("request", (request) => {
      if (request.method() === "GET" && request.url().endsWith("/api/v1/session")) touches += 1;
    });
    await page.evaluate((db) => follow("a", db, { since: 0 }), db);
    await page.waitForFunction(() => subs.a.lastSeq !== null, null, { timeout: 10000 });
    touches = 0;
    await sleep(2000);
    expect(touches >= 3, "the session is touched while subscribed", touches);
    await page.evaluate(() => subs.a.unsubscribe());
    await sleep(300);
    touches = 0;
    await sleep(1500);
    expect(touches === 0, "no touch once nothing is subscribed", touches);
  },

  async waiting() {
    const page = await context.newPage();
    await bareClient(page, { minBackoff: 100, maxBackoff: 500, keepAliveMs: 0, pingMs: 0 });
    await page.evaluate((db) => wb.subscribe(db, { since: 0 }, () => {}), db); // not logged in
    await page.waitForFunction(() => statuses.includes("unauthenticated"), null, { timeout: 10000 });
    await page.evaluate((db) => {
      window.statuses.length = 0;
      window.wb.subscribe(db, { since: 0, include_docs: true }, (change) => window.got.push(change.id));
    }, db);
    await sleep(2000);
    const before = await page.evaluate(() => statuses.slice());
    expect(before.length === 0, "nothing tried before login()", before);
    await page.evaluate(([user, password]) => wb.login(user, password), [user, password]);
    await putDirect(gateway, { _id: "after" });
    const arrived = await page.waitForFunction(() => got.includes("after"), null, { timeout: 10000 })
      .then(() => true, () => false);
    expect(arrived, "resumed after login()", await page.evaluate(() => statuses));
  },

  async put_rev() {
    const page = await clientPage(base, { keepAliveMs: 0 });
    const got = await page.evaluate(async (db) => {
      const doc = { _id: "twice", v: 1 };
      const first = await wb.put(db, doc);
      const kept = doc._rev;
      doc.v = 2;
      const second = await wb.put(db, doc).then((r) => r.rev, (e) => [e.status, e.error]);
      return { first: first.rev, kept, second, now: doc._rev };
    }, db);
    expect(got.kept === got.first && typeof got.second === "string" && got.second.startsWith("2-")
      && got.now === got.second, "put() sets doc._rev", got);
  },

  async cross_origin() {
    // A page of another origin (same site: 127.0.0.1) that uses the gateway by baseUrl.
    const server = http.createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end("<!doctype html><title>app</title>");
    });
    await new Promise((resolve) => server.listen(Number(pagePort), "127.0.0.1", resolve));
    try {
      const page = await clientPage(`http://127.0.0.1:${pagePort}`, { baseUrl: base, keepAliveMs: 0 }, base);
      const who = await page.evaluate(() => wb.session().then((s) => s.name, (e) => [e.status, e.error]));
      expect(who === user, "the session cookie set by login() is sent by the next call", who);
      await page.evaluate((db) => follow("a", db, { since: 0 }), db);
      await page.evaluate((db) => wb.put(db, { _id: "x" }), db);
      const arrived = await page.waitForFunction(() => got.a.includes("x"), null, { timeout: 10000 })
        .then(() => true, () => false);
      expect(arrived, "live changes work", await page.evaluate(() => ({ got, errors, statuses })));
    } finally {
      server.close();
    }
  },
};

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  await cases[which]();
});
