// The demo page (gateway/static/demo.js) in Chromium: errors, late answers and quick
// clicks. One case per run.
// argv: <gateway base url> <db> <user> <password> <case>
//   error_open   an error shown by a failed write clears once the live socket is open again
//                (onStatus "open"), before any further action
//   late_reply   a toggle whose PUT answer comes late, after the feed already showed a newer
//                revision written by someone else: the page keeps the newer revision
//   clicks_undo  a box ticked and unticked while the first save is slow to answer (and
//                the live feed a second late) ends unticked and stored done: false
//   clicks_three three quick clicks during a slow save: no conflict error, ends ticked
//   design_doc   a design document in the database (an admin wrote it) is not listed as an item
//   conflict     "a" has two branches (the prepare step wrote them): once the feed showed
//                the page's own write, the lower branch that another client's delete
//                brings back is listed
//   conflict_own_delete  the same two branches: the page deletes the winner itself, and
//                lists the other branch the feed brings after the delete's answer (not
//                taken for an older echo)
//   switch_user  <other user> <other password>: after the session ended, another member logs
//                in at the same page: the gateway holds one subscription (the new user's)
//   same_user    the same user logs in again after the session ended: the list resumes as it
//                was (same rows, no catch-up from the start again)
//   pruned       three items ticked, each write seen back on the feed: the page's map of the
//                revisions its writes replaced is empty again, not one entry per write
// Prints "OK" or "FAIL <why>".
import {
  expect, launchBrowser, logInToDemo, logPage, metric, putDirect, runCheck, sleep,
} from "./harness.mjs";

const [base, db, user, password, which, ...args] = process.argv.slice(2);
const gateway = { base, db, user, password };
const browser = await launchBrowser();
const { context } = browser;
const basic = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
const docUrl = (id) => `${base}/api/v1/db/${encodeURIComponent(db)}/docs/${encodeURIComponent(id)}`;
const put = (doc) => putDirect(gateway, doc);

async function getDoc(id) {
  return (await fetch(docUrl(id), { headers: { Authorization: basic } })).json();
}

async function open(page) {
  logPage(page);
  await page.goto(`${base}/?db=${db}`);
  await logInToDemo(page, user, password);
  await page.waitForFunction(() => document.getElementById("status").textContent === "open");
}

/** The session ends (logged out in another tab): the page's next write asks to log in. */
async function endSession(page) {
  await page.evaluate(() => fetch("/api/v1/session", { method: "DELETE" }));
  await page.fill("[data-testid=new-title]", "after the session ended");
  await page.click("[data-testid=add]");
  await page.waitForSelector("#login", { state: "visible", timeout: 10000 });
}

/** Records the messages of the page's live-changes sockets: `sent` by it, `received`. */
async function recordSockets(page) {
  const sent = [];
  const received = [];
  await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => { sent.push(JSON.parse(message)); server.send(message); });
    server.onMessage((message) => { received.push(JSON.parse(message)); ws.send(message); });
  });
  return { sent, received };
}

/**
 * The size of a Map or Set that the page's module script keeps to itself, read through the
 * DevTools protocol from the scopes of the #logout button's click listener: demo.js exposes
 * no state, and gets no hook for a test.
 */
async function moduleSize(page, name) {
  const cdp = await page.context().newCDPSession(page);
  const properties = async (objectId) =>
    (await cdp.send("Runtime.getProperties", { objectId, ownProperties: true }));
  try {
    const { result: button } = await cdp.send("Runtime.evaluate",
      { expression: 'document.getElementById("logout")', objectGroup: "test" }); // handlers need one
    const { listeners } = await cdp.send("DOMDebugger.getEventListeners",
      { objectId: button.objectId });
    const { handler } = listeners.find((listener) => listener.type === "click");
    const { internalProperties } = await properties(handler.objectId);
    const scopes = internalProperties.find((property) => property.name === "[[Scopes]]").value;
    for (const scope of (await properties(scopes.objectId)).result) {
      if (!scope.value?.objectId) continue;
      const found = (await properties(scope.value.objectId)).result.find((v) => v.name === name);
      if (!found) continue;
      const { result } = await cdp.send("Runtime.callFunctionOn", { objectId: found.value.objectId,
        functionDeclaration: "function () { return this.size; }", returnByValue: true });
      return result.value;
    }
    throw new Error(`no ${name} in the scopes of demo.js`);
  } finally {
    await cdp.detach();
  }
}

const cases = {
  async error_open() {
    const page = await context.newPage();
    const sockets = [];
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      sockets.push(ws);
      ws.connectToServer();
    });
    await open(page);
    const cut = (route) => route.abort();
    await page.route("**/api/v1/db/**", cut); // REST unreachable for a moment
    await page.fill("[data-testid=new-title]", "fails");
    await page.click("[data-testid=add]");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    await page.unroute("**/api/v1/db/**", cut);
    sockets[sockets.length - 1].close({ code: 1001, reason: "going away" }); // the socket drops
    await page.waitForFunction((n) => document.getElementById("status").textContent === "open",
      null, { timeout: 15000 });
    await page.waitForFunction(() => document.getElementById("status").textContent !== "open",
      null, { timeout: 5000 }).catch(() => {});
    await page.waitForFunction(() => document.getElementById("status").textContent === "open",
      null, { timeout: 15000 });
    await sleep(300);
    const error = await page.textContent("#error");
    expect(error === "", "the error stays shown after the gateway is back (status open)", error);
  },

  async clicks_undo() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await context.newPage();
    // The live feed is a second behind (a busy gateway): its changes land mid-save.
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((message) => setTimeout(() => ws.send(message), 1000));
    });
    await open(page);
    await page.waitForSelector('#items li[data-id="a"]');
    await page.route("**/api/v1/db/**/docs/a", async (route) => {
      if (route.request().method() !== "PUT") return route.continue();
      const answer = await route.fetch();
      await sleep(800); // a slow answer: the page keeps rendering meanwhile
      await route.fulfill({ response: answer });
    });
    const box = '#items li[data-id="a"] input[type=checkbox]';
    await page.click(box);
    await sleep(100);
    await page.click(box); // changed her mind while the first save is in flight
    await sleep(4000);
    const checked = await page.isChecked(box);
    const stored = await getDoc("a");
    const error = await page.textContent("#error");
    expect(!checked && stored.done === false && error === "",
      "the last click wins", { checked, done: stored.done, rev: stored._rev, error });
  },

  async clicks_three() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await context.newPage();
    await open(page);
    await page.waitForSelector('#items li[data-id="a"]');
    await page.route("**/api/v1/db/**/docs/a", async (route) => {
      if (route.request().method() !== "PUT") return route.continue();
      const answer = await route.fetch();
      await sleep(800);
      await route.fulfill({ response: answer });
    });
    const box = '#items li[data-id="a"] input[type=checkbox]';
    for (let i = 0; i < 3; i++) {
      await page.click(box);
      await sleep(50);
    }
    await sleep(4000);
    const checked = await page.isChecked(box);
    const stored = await getDoc("a");
    const error = await page.textContent("#error");
    expect(checked && stored.done === true && error === "",
      "three clicks: ticked, saved, no error", { checked, done: stored.done, error });
  },

  async design_doc() {
    await put({ _id: "plain", title: "plain", done: false, created: "1" });
    const page = await context.newPage();
    await open(page);
    await page.waitForSelector('#items li[data-id="plain"]');
    await sleep(500);
    const ids = await page.$$eval("#items li", (nodes) => nodes.map((n) => n.dataset.id));
    expect(JSON.stringify(ids) === '["plain"]', "only the plain document is listed", ids);
  },

  async late_reply() {
    const first = await put({ _id: "a", title: "mine", done: false, created: "1" });
    const page = await context.newPage();
    await open(page);
    await page.waitForSelector('#items li[data-id="a"]');
    let held = false;
    await page.route("**/api/v1/db/**/docs/a", async (route) => {
      if (route.request().method() !== "PUT" || held) return route.continue();
      held = true;
      const answer = await route.fetch(); // written: rev 2 (done)
      const stored = await getDoc("a");
      await put({ ...stored, title: "theirs" }); // someone else's rev 3 on top of it
      await sleep(1500); // the feed shows rev 2 and rev 3 before the page hears its answer
      await route.fulfill({ response: answer });
    });
    await page.check('#items li[data-id="a"] input[type=checkbox]');
    await sleep(2500);
    const shown = await page.textContent('#items li[data-id="a"] .title');
    const stored = await getDoc("a");
    expect(stored.title === "theirs" && shown === "theirs",
      "the page went back to its own older revision", { shown, stored, first });
  },

  async conflict() {
    const page = await context.newPage();
    const { received } = await recordSockets(page);
    await open(page);
    const title = '#items li[data-id="a"] .title';
    await page.waitForSelector(title);
    expect(await page.textContent(title) === "winner", "the winning branch is listed",
      await page.textContent(title));
    await page.check('#items li[data-id="a"] input[type=checkbox]'); // the page writes 2-…
    const echoed = () => received.some((m) => m.type === "change" && m.id === "a"
      && m.doc?._rev?.startsWith("2-"));
    for (let i = 0; i < 100 && !echoed(); i++) await sleep(100);
    expect(echoed(), "the feed brought the page's own write", received);
    await sleep(300); // and the page has taken it
    // Another client deletes the page's revision: the other branch (generation 1) is the
    // document again, and the feed brings it.
    const { _rev: rev } = await getDoc("a");
    const deleted = await fetch(`${docUrl("a")}?rev=${encodeURIComponent(rev)}`,
      { method: "DELETE", headers: { Authorization: basic } });
    expect(deleted.status === 200, "the page's revision is deleted", deleted.status);
    const shown = await page.waitForFunction((selector) =>
      document.querySelector(selector)?.textContent === "loser", title, { timeout: 10000 })
      .then(() => true, () => false);
    expect(shown, "the branch the delete brought back is listed",
      { title: await page.textContent(title).catch(() => null), stored: await getDoc("a") });
  },

  async conflict_own_delete() {
    const page = await context.newPage();
    // The live feed is a second behind: the delete's answer comes before its change.
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((message) => setTimeout(() => ws.send(message), 1000));
    });
    await open(page);
    const title = '#items li[data-id="a"] .title';
    await page.waitForSelector(title);
    await page.click('#items li[data-id="a"] button.delete'); // the tombstone is generation 2
    const shown = await page.waitForFunction((selector) =>
      document.querySelector(selector)?.textContent === "loser", title, { timeout: 10000 })
      .then(() => true, () => false);
    expect(shown, "the branch the page's delete brought back is listed",
      { title: await page.textContent(title).catch(() => null), stored: await getDoc("a") });
  },

  async switch_user() {
    const [otherUser, otherPassword] = args;
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await context.newPage();
    await open(page);
    await page.waitForSelector('#items li[data-id="a"]');
    const first = await metric(base, "wallaby_ws_subscriptions");
    await endSession(page);
    await logInToDemo(page, otherUser, otherPassword);
    // The list is live for the new user: a change written now shows up.
    await putDirect({ ...gateway, user: otherUser, password: otherPassword },
      { _id: "b", title: "b", done: false, created: "2" });
    await page.waitForSelector('#items li[data-id="b"]', { timeout: 10000 });
    await sleep(1000); // every socket the page opened has subscribed by now
    const after = await metric(base, "wallaby_ws_subscriptions");
    expect(first === 1 && after === 1,
      "one subscription before and after another user logged in", { first, after });
  },

  async same_user() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await context.newPage();
    const { sent } = await recordSockets(page);
    await open(page);
    const row = await page.waitForSelector('#items li[data-id="a"]');
    await endSession(page);
    const before = sent.length;
    await logInToDemo(page, user, password);
    await put({ _id: "b", title: "b", done: false, created: "2" });
    await page.waitForSelector('#items li[data-id="b"]', { timeout: 10000 });
    const kept = await row.evaluate((li) => li.isConnected);
    const fromStart = sent.slice(before).filter((m) => m.type === "subscribe" && m.since === 0);
    expect(kept && fromStart.length === 0,
      "the list resumes after the same user's login: its rows kept, no catch-up from the start",
      { kept, fromStart });
  },

  async pruned() {
    const ids = ["a", "b", "c"];
    for (const id of ids) await put({ _id: id, title: id, done: false, created: id });
    const page = await context.newPage();
    const { received } = await recordSockets(page);
    await open(page);
    await page.waitForSelector('#items li[data-id="c"]');
    const echoed = (id) => received.some((m) => m.type === "change" && m.id === id
      && m.doc?._rev?.startsWith("2-"));
    for (const id of ids) {
      await page.check(`#items li[data-id="${id}"] input[type=checkbox]`);
      for (let i = 0; i < 100 && !echoed(id); i++) await sleep(100);
      expect(echoed(id), "the feed brought the page's write", { id, received });
    }
    await sleep(300); // the page has taken the last one
    const size = await moduleSize(page, "replaced");
    expect(size === 0, "the page forgets its writes once the feed brought them", { size });
  },
};

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  await cases[which]();
});
