// The browser client with a bearer token (new Wallaby({token})) in Chromium: like a
// cookie client, it reports `unauthenticated` when the session ends, keeps its
// subscriptions, and resumes them after login() (which takes the new token).
// argv: <gateway base url> <db> <user> <password> <case>
//   relogin     the socket is closed with 4001 (session gone) while subscribed
//   refused_sub a new subscription is refused with 401 on a socket opened earlier
//   refused     the handshake is refused (a token that is no good): unauthenticated
//   ws_url_query a wsUrl that has a query string of its own gets the token added to it
//   outlives    <session timeout s>: subscribed with a small keepAliveMs, the client stays
//               signed in past CouchDB's session timeout (it adopts the refreshed token
//               the gateway hands back): a socket dropped after the login token expired
//               reconnects and resumes, REST calls work, no "unauthenticated"
// stdio (relogin, refused_sub): prints "SUBSCRIBED", waits for "GONE" (the user was
// removed), prints "LOGGED_OUT" once `unauthenticated` was reported, waits for "RELOGIN
// <doc id>", then prints "OK" or "FAIL <why>".
import { launchBrowser, nextLine, runCheck } from "./harness.mjs";

const [base, db, user, password, which, sessionSeconds] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;

function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function tokenPage(token, options = {}) {
  const page = await context.newPage();
  page.on("console", (message) => console.error("[browser]", message.type(), message.text()));
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  await page.goto(`${base}/health`); // any page of the gateway's origin
  await page.evaluate(async ([token, options]) => {
    window.W = await import("/static/wallaby.js");
    window.statuses = [];
    window.got = { first: [], second: [] };
    window.errors = [];
    window.wb = new window.W.Wallaby({ token, minBackoff: 100, maxBackoff: 500, ...options,
      onStatus: (state, detail) => window.statuses.push(detail && detail.code ? `${state}:${detail.code}` : state) });
    window.follow = (name, db, options) => window.wb.subscribe(db, {
      since: 0, ...options, onError: (error) => window.errors.push([name, error.status, error.error]),
    }, (change) => window.got[name].push(change.id));
  }, [token, options]);
  return page;
}

async function relogin(page, { subscribeAfterGone }) {
  await page.evaluate((db) => wb.put(db, { _id: "before" }), db);
  await page.evaluate((db) => { window.first = follow("first", db); }, db);
  await page.waitForFunction(() => window.got.first.includes("before"), null, { timeout: 10000 });
  const oldToken = await page.evaluate(() => wb.token);
  console.log("SUBSCRIBED");
  expect((await nextLine()) === "GONE", "protocol", "GONE");
  // The socket is still open (its session is re-checked rarely): a new subscription on it.
  if (subscribeAfterGone) await page.evaluate((db) => { window.second = follow("second", db, { include_docs: true }); }, db);
  await page.waitForFunction(() => window.statuses.includes("unauthenticated"), null, { timeout: 15000 })
    .catch(async () => {
      throw new Error(`no unauthenticated: ${JSON.stringify(await page.evaluate(async () => ({ statuses: window.statuses.slice(-12), errors: window.errors,
        session: await window.wb.session().then((s) => s, (e) => [e.status, e.error]) })))}`);
    });
  console.log("LOGGED_OUT");
  const meanwhile = (await nextLine()).replace(/^RELOGIN /, "");
  const login = await page.evaluate(async ([user, password]) => {
    const answer = await wb.login(user, password);
    return { returned: answer.token, used: wb.token };
  }, [user, password]);
  expect(login.used === login.returned && login.used !== oldToken, "login() takes the new token", login);
  const names = subscribeAfterGone ? ["first", "second"] : ["first"];
  await page.waitForFunction(([names, id]) => names.every((name) => window.got[name].includes(id)),
    [names, meanwhile], { timeout: 15000 }).catch(async () => {
    throw new Error(`not resumed: ${JSON.stringify(await page.evaluate(() => ({ got, statuses, errors })))}`);
  });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const got = await page.evaluate(() => ({ got, errors, statuses }));
  expect(got.errors.length === 0, "no subscription was dropped", got.errors);
  for (const name of names) {
    const ids = got.got[name];
    expect(ids.filter((id) => id === meanwhile).length === 1, `${name}: the change once`, ids);
  }
  const after = got.statuses.slice(got.statuses.indexOf("unauthenticated"));
  expect(after.filter((state) => state === "connecting").length === 1, "one reconnect, after login()", got.statuses);
  expect(await page.evaluate(() => wb.session().then(() => "ok", (e) => e.status)) === "ok",
    "REST works after login()", "");
}

async function outlives(page) {
  const first = await page.evaluate(() => wb.token);
  await page.evaluate((db) => wb.put(db, { _id: "before" }), db);
  await page.evaluate((db) => { window.first = follow("first", db); }, db);
  await page.waitForFunction(() => window.got.first.includes("before"), null, { timeout: 10000 });
  await new Promise((resolve) => setTimeout(resolve, (Number(sessionSeconds) + 3) * 1000));
  const state = await page.evaluate(async (first) => {
    const refused = await fetch("/api/v1/session", { headers: { Authorization: `Bearer ${first}` } });
    return { refused: refused.status, renewed: wb.token !== first, statuses: window.statuses };
  }, first);
  expect(state.refused === 401, "the login's token has expired meanwhile", state);
  expect(state.renewed, "the client took the refreshed token", state);
  // The socket drops (a proxy, a network change): it reconnects with the token now held.
  await page.evaluate(() => { for (const lane of wb._lanes) lane.ws.close(); });
  await page.evaluate((db) => wb.put(db, { _id: "after" }), db); // REST works
  await page.waitForFunction(() => window.got.first.includes("after"), null, { timeout: 15000 })
    .catch(async () => {
      throw new Error(`not resumed: ${JSON.stringify(await page.evaluate(() => ({ got, statuses, errors })))}`);
    });
  const got = await page.evaluate(() => ({ got, errors, statuses }));
  expect(!got.statuses.includes("unauthenticated"), "never logged out", got.statuses);
  expect(got.statuses.filter((s) => s === "connecting").length === 2, "one reconnect", got.statuses);
  expect(got.errors.length === 0, "no subscription was dropped", got.errors);
  expect(await page.evaluate(() => wb.session().then((s) => s.name, (e) => e.status)) === user,
    "the session is this user's", "");
}

const cases = {
  outlives: (page) => outlives(page),
  relogin: (page) => relogin(page, { subscribeAfterGone: false }),
  refused_sub: (page) => relogin(page, { subscribeAfterGone: true }),

  async ws_url_query(page) {
    const got = await page.evaluate(async (db) => {
      const wsUrl = `${location.origin.replace(/^http/, "ws")}/api/v1/changes?app=demo`;
      const client = new W.Wallaby({ token: wb.token, wsUrl });
      const seen = [];
      const errors = [];
      client.subscribe(db, { since: 0, onError: (error) => errors.push(error.error) },
        (change) => seen.push(change.id));
      await client.put(db, { _id: "with-query" });
      for (let i = 0; i < 100 && !seen.includes("with-query"); i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      client.close();
      return { seen, errors };
    }, db);
    expect(got.seen.includes("with-query") && !got.errors.length, "subscribed with the token", got);
  },

  async refused(page) {
    await page.evaluate((db) => {
      window.wb.token = "bm90LWEtdG9rZW4"; // "not-a-token"
      window.first = follow("first", db);
    }, db);
    await page.waitForFunction(() => window.statuses.includes("unauthenticated"), null, { timeout: 10000 })
      .catch(async () => {
        throw new Error(`no unauthenticated: ${JSON.stringify(await page.evaluate(async () => ({ statuses: window.statuses.slice(-12), errors: window.errors,
        session: await window.wb.session().then((s) => s, (e) => [e.status, e.error]) })))}`);
      });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const statuses = await page.evaluate(() => window.statuses);
    expect(statuses.filter((state) => state === "connecting").length === 1, "no reconnect loop", statuses);
    // and a login puts it right
    await page.evaluate(async ([db, user, password]) => {
      await wb.login(user, password);
      await wb.put(db, { _id: "after-login" });
    }, [db, user, password]);
    await page.waitForFunction(() => window.got.first.includes("after-login"), null, { timeout: 10000 });
  },
};

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  // The token of a login (no cookie is kept: as a page on another origin would be).
  const page = await context.newPage();
  await page.goto(`${base}/health`);
  const token = await page.evaluate(async ([user, password]) => {
    const { Wallaby } = await import("/static/wallaby.js");
    return (await new Wallaby().login(user, password)).token;
  }, [user, password]);
  await context.clearCookies();
  await page.close();
  const options = which === "outlives" ? { keepAliveMs: 1000, pingMs: 0 } : {};
  await cases[which](await tokenPage(token, options));
});
