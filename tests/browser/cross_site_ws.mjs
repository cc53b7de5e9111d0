// Cross-site WebSocket hijacking, attempted from a real page. The user logs in on the demo
// page (the gateway's own origin), so the browser holds the session cookie (SameSite=None,
// Secure: the gateway runs with WALLABY_COOKIE_SAMESITE=None, and Chromium keeps a Secure
// cookie from http://127.0.0.1 since loopback is a secure context). Then a page of another
// site, http://localhost:<another port>/ (served by this script on 127.0.0.1), opens a
// WebSocket to the gateway and subscribes to the user's database; a document is written to
// it, and the page reports everything its socket saw. (localhost and 127.0.0.1 are two
// sites; the profile allows third-party cookies, as this Chromium's new profiles do not.
// A page of a public site, e.g. Playwright serving http://attacker.test/, is
// stopped by Chromium's Local Network Access checks before the gateway sees anything.)
// argv: <gateway base url> <db> <user> <password> <attacker port> <page> <expect>
//   page    attacker  the page of http://localhost:<port>/
//           own       the same script on a page of the gateway's origin (a control)
//   expect  refused   the handshake fails: the socket closes without opening (1006)
//           unauth    the socket opens, the subscription is refused as not authenticated
//           live      the subscription is accepted and the change arrives (a control)
// The handshake's Origin is checked as sent, and that the page's requests to the gateway
// carry the cookie (DevTools protocol: the handshake's own cookies are not reported); the
// control whose attacker origin is listed shows the handshake carries it too.
// Prints "OK" or "FAIL <why>".
import http from "node:http";
import {
  expect, launchBrowser, logInToDemo, logPage, putDirect, runCheck, sleep,
} from "./harness.mjs";

const [base, db, user, password, attackerPort, which, outcome] = process.argv.slice(2);
const attackerSite = http.createServer((request, response) => {
  response.writeHead(200, { "Content-Type": "text/html" });
  response.end("<!doctype html><title>attacker</title>");
});
await new Promise((resolve) => attackerSite.listen(Number(attackerPort), "127.0.0.1", resolve));
const ATTACKER = `http://localhost:${attackerPort}`;
const COOKIE = "wallaby_session";
const browser = await launchBrowser({ thirdPartyCookies: true });
const { context } = browser;

/** Runs in the page: opens the socket, subscribes once open, records all it sees. */
function attack([url, db]) {
  window.seen = { opened: false, close: null, messages: [] };
  const socket = new WebSocket(url);
  socket.onopen = () => {
    window.seen.opened = true;
    socket.send(JSON.stringify(
      { type: "subscribe", id: "s1", db, since: "now", include_docs: true }));
  };
  socket.onmessage = (event) => window.seen.messages.push(JSON.parse(event.data));
  socket.onclose = (event) => { window.seen.close = event.code; };
}

await runCheck(browser, async () => {
  const own = logPage(await context.newPage());
  await own.goto(`${base}/?db=${db}`);
  await logInToDemo(own, user, password);
  const [cookie] = (await context.cookies(base)).filter((c) => c.name === COOKIE);
  expect(cookie && cookie.secure && cookie.sameSite === "None", "Secure SameSite=None cookie kept",
    await context.cookies(base));

  const page = which === "own" ? own : logPage(await context.newPage());
  const handshake = {};
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketWillSendHandshakeRequest",
    (e) => { handshake.request = e.request.headers; });
  const extraInfo = [];
  cdp.on("Network.requestWillBeSentExtraInfo", (e) => extraInfo.push(e));
  if (which !== "own") await page.goto(`${ATTACKER}/`);
  const origin = which === "own" ? base : ATTACKER;
  expect(await page.evaluate(() => location.origin) === origin, "page origin", origin);
  // The browser does send the cookie from this page: a credentialed fetch to the gateway
  // carries it, as the DevTools protocol reports (not blocked, e.g. as a third-party one).
  await page.evaluate((url) => fetch(url, { credentials: "include", mode: "no-cors" }),
    `${base}/health`);
  await sleep(200);
  const carried = extraInfo.flatMap((e) => e.associatedCookies).filter(
    (c) => c.cookie.name === COOKIE && c.cookie.value === cookie.value);
  expect(carried.length && carried.every((c) => !c.blockedReasons.length), "the cookie is sent",
    carried);

  await page.evaluate(attack, [`${base.replace(/^http/, "ws")}/api/v1/changes`, db]);
  await page.waitForFunction(() => window.seen.close !== null || window.seen.messages.length > 0,
    null, { timeout: 10000 });
  await sleep(500);
  const secret = { _id: "secret", title: "the user's", done: false };
  await putDirect({ base, db, user, password }, secret);
  await sleep(2000);
  const seen = await page.evaluate(() => window.seen);

  const headers = Object.fromEntries(Object.entries(handshake.request ?? {})
    .map(([k, v]) => [k.toLowerCase(), v]));
  expect(headers.origin === origin, "the handshake's Origin", headers);

  const changes = seen.messages.filter((m) => m.type === "change");
  if (outcome === "refused") {
    expect(!seen.opened && seen.close === 1006 && !seen.messages.length, "refused handshake",
      seen);
  } else if (outcome === "unauth") {
    const [first, ...rest] = seen.messages;
    expect(seen.opened && first?.type === "error" && first.id === "s1" && first.status === 401
      && first.error === "unauthorized" && !rest.length, "subscription refused", seen);
  } else {
    expect(seen.opened && seen.close === null && seen.messages[0]?.type === "subscribed"
      && changes.some((c) => c.id === "secret" && c.doc?.title === "the user's"), "live", seen);
  }
  if (outcome !== "live") expect(!changes.length, "no change of the user's database", seen);
  // The change was made and is live: the user's own demo page lists it.
  await own.waitForFunction(() => document.body.innerText.includes("the user's"), null,
    { timeout: 10000 });
});
attackerSite.close();
