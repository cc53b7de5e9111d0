// Shared by the browser scripts: lines from the Python test on stdin, and a headless
// Debian Chromium in a fresh profile (playwright-core, no downloaded browser).
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const lines = createInterface({ input: process.stdin });
const incoming = [];
let wake = null;
lines.on("line", (line) => {
  incoming.push(line);
  if (wake) wake();
});

/** The next line the Python test wrote. */
export async function nextLine() {
  while (!incoming.length) await new Promise((resolve) => (wake = resolve));
  return incoming.shift();
}

/**
 * A Chromium context in a new empty profile; close it with closeBrowser().
 * `thirdPartyCookies`: the profile sends cookies with cross-site requests, as a user's who
 * allows them (a new profile of this Chromium blocks them: "UserPreferences").
 */
export async function launchBrowser({ thirdPartyCookies = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "wallaby-chromium-"));
  if (thirdPartyCookies) {
    mkdirSync(join(profile, "Default"));
    writeFileSync(join(profile, "Default", "Preferences"),
      JSON.stringify({ profile: { cookie_controls_mode: 0 } })); // 0: allow all cookies
  }
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  return { context, profile };
}

export async function closeBrowser({ context, profile }) {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  lines.close();
}

/** Runs `check`, prints "OK" (or "FAIL <why>" with a failing exit code), closes the browser. */
export async function runCheck(browser, check) {
  try {
    await check();
    console.log("OK");
  } catch (error) {
    console.log(`FAIL ${error.message}`);
    process.exitCode = 1;
  } finally {
    await closeBrowser(browser);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Throws (a failed check: runCheck prints "FAIL <what>: <detail>") unless `condition`. */
export function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

/** Copies the page's console and uncaught errors to stderr (the test's log). */
export function logPage(page) {
  page.on("console", (message) => console.error("[browser]", message.type(), message.text()));
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  return page;
}

/** Logs in on the demo page's form as `name`; resolves once the list is shown. */
export async function logInToDemo(page, name, password) {
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.click("[data-testid=login]");
  await page.waitForSelector("#app", { state: "visible" });
  await page.waitForSelector("#login", { state: "hidden" });
}

/**
 * PUT a document straight to the gateway as the user (not through a page); its new rev.
 * `to`: {base, db, user, password}, as the scripts' argv gives them.
 */
export async function putDirect({ base, db, user, password }, doc) {
  const url = `${base}/api/v1/db/${encodeURIComponent(db)}/docs/${encodeURIComponent(doc._id)}`;
  const answer = await fetch(url, { method: "PUT", body: JSON.stringify(doc), headers: {
    "Content-Type": "application/json",
    Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}` } });
  expect(answer.status === 201, "written", answer.status);
  return (await answer.json()).rev;
}

/** A gauge or counter of the gateway's /metrics (null when absent). */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? null : Number(line.split(/\s+/)[1]);
}

/**
 * A close that takes a while to complete (a slow network, a busy gateway): the page's
 * WebSockets go through a route that forwards everything but delays the close handshake
 * by a second, so an old socket's close event comes after its successor subscribed.
 */
export async function slowCloses(page) {
  await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
    const server = ws.connectToServer();
    ws.onClose((code, reason) => setTimeout(() => {
      server.close({ code, reason });
      ws.close({ code, reason });
    }, 1000));
  });
}

/**
 * A loopback TCP proxy to the gateway at `base`. `silence()` makes its connections so far
 * pass nothing and close nothing (a dead path); `drop()` closes them; while `state.refuse`
 * it cuts new connections at once (the gateway unreachable), else new ones work.
 */
export function proxyToGateway(base) {
  const pairs = new Set();
  const state = { refuse: false };
  const server = net.createServer((down) => {
    if (state.refuse) { down.destroy(); return; }
    const up = net.connect(Number(new URL(base).port), "127.0.0.1");
    const pair = { down, up, silent: false };
    pairs.add(pair);
    down.on("data", (data) => { if (!pair.silent) up.write(data); });
    up.on("data", (data) => { if (!pair.silent) down.write(data); });
    const closeBoth = () => { if (!pair.silent) { down.destroy(); up.destroy(); } pairs.delete(pair); };
    down.on("close", closeBoth);
    up.on("close", closeBoth);
    down.on("error", () => {});
    up.on("error", () => {});
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({
    origin: `http://127.0.0.1:${server.address().port}`,
    state,
    silence() { for (const pair of pairs) pair.silent = true; },
    drop() { for (const pair of [...pairs]) { pair.down.destroy(); pair.up.destroy(); } },
    close() { this.drop(); server.close(); },
  })));
}

/**
 * A new page of `origin` (its /health) with a client `window.wb` made with `options` (from
 * `wallabyFrom`'s /static/wallaby.js) and logged in as `user`. `statuses` gets each state
 * onStatus reports (`timed`: [state, performance.now()]); `follow(name, db, options)`
 * subscribes: the changes' ids go to got[name], the errors to errors[name], the handle to
 * subs[name]. `before(page)` runs before the page loads; `throwOnStatus` makes onStatus throw.
 */
export async function clientPage(context, { origin, user, password, options = {},
  wallabyFrom = origin, timed = false, before = null }) {
  const page = logPage(await context.newPage());
  if (before) await before(page);
  await page.goto(`${origin}/health`); // any page of the gateway's origin
  await page.evaluate(async ([user, password, options, wallabyFrom, timed]) => {
    window.W = await import(`${wallabyFrom}/static/wallaby.js`);
    window.statuses = [];
    window.wb = new window.W.Wallaby({ ...options, onStatus: (state) => {
      window.statuses.push(timed ? [state, performance.now()] : state);
      if (window.throwOnStatus) throw new Error(`onStatus bug (${state})`);
    } });
    await window.wb.login(user, password);
    window.got = {};
    window.errors = {};
    window.subs = {};
    window.follow = (name, database, options) => {
      window.got[name] = [];
      window.errors[name] = [];
      window.subs[name] = window.wb.subscribe(database, {
        ...options,
        onError: (error) => window.errors[name].push({
          isWallaby: error instanceof window.W.WallabyError, status: error.status, error: error.error }),
      }, (change) => window.got[name].push(change.id));
    };
  }, [user, password, options, wallabyFrom, timed]);
  return page;
}
