// The demo page as a user (and an attacker) sees it, in headless Chromium.
// argv: <gateway base url> <db> <user> <password> <case> [args…]
// Cases that need the gateway stopped print "DOWN?" and wait for "DOWN", then "UP?" / "UP".
// Prints "OK" or "FAIL <why>"; screenshots of failures go to $DEMO_SHOTS (default /tmp).
import { createServer } from "node:http";
import { launchBrowser, nextLine, runCheck } from "./harness.mjs";

const [base, db, user, password, which, ...args] = process.argv.slice(2);
const shots = process.env.DEMO_SHOTS || "/tmp";
const browser = await launchBrowser();
const { context } = browser;
const basic = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/demo_page_${name}.png`, fullPage: true, timeout: 10000 })
    .catch(() => {});
}

async function ask(line) {
  console.log(`${line}?`);
  const answer = await nextLine();
  expect(answer === line, "the Python side answered", answer);
}

async function put(doc) {
  const answer = await fetch(`${base}/api/v1/db/${db}/docs/${encodeURIComponent(doc._id)}`, {
    method: "PUT", headers: { "Content-Type": "application/json", Authorization: basic },
    body: JSON.stringify(doc),
  });
  expect(answer.status === 201, "a document is written", answer.status);
}

async function open(path = `/?db=${db}`) {
  const page = await context.newPage();
  page.failures = [];
  page.on("pageerror", (error) => page.failures.push(error.message));
  page.on("console", (message) => {
    if (message.type() === "error" && message.text().includes("Content Security Policy")) {
      page.failures.push(message.text());
    }
  });
  await page.goto(`${base}${path}`);
  return page;
}

async function logIn(page, count) {
  await page.fill("#name", user);
  await page.fill("#password", password);
  await page.click("[data-testid=login]");
  await page.waitForSelector("#app:not([hidden])");
  await page.waitForFunction((n) => document.querySelectorAll("#items li").length === n, count);
  await page.waitForFunction(() => document.getElementById("status").textContent === "open");
}

const checks = {
  // Once signed in, the login form must be gone (the CSS `form {display: flex}` overrides
  // the `hidden` attribute): not shown, not in the accessibility tree.
  async login_form_hidden() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await open();
    await logIn(page, 1);
    const visible = await page.isVisible("#login");
    const tree = await page.locator("main").ariaSnapshot();
    if (visible) await shot(page, "login_form_visible_while_signed_in");
    expect(!visible && !tree.includes('button "Log in"'),
      "signed in, the login form is still shown", { visible, tree });
  },

  // Space on a checkbox (or a change from elsewhere) must leave the keyboard focus where it
  // was: render() rebuilds every row, so focus falls back to <body>.
  async focus_kept() {
    for (const id of ["a", "b", "c"]) await put({ _id: id, title: id, done: false, created: id });
    const page = await open();
    await logIn(page, 3);
    await page.focus('#items li[data-id="b"] input[type=checkbox]');
    await page.keyboard.press("Space");
    await page.waitForSelector('#items li[data-id="b"].done');
    const afterToggle = await page.evaluate(() => {
      const el = document.activeElement;
      return `${el.tagName} ${el.closest("li") ? el.closest("li").dataset.id : ""}`;
    });
    await page.focus('#items li[data-id="c"] input[type=checkbox]');
    await put({ _id: "d", title: "from elsewhere", done: false, created: "d" });
    await page.waitForFunction(() => document.querySelectorAll("#items li").length === 4);
    const afterRemote = await page.evaluate(() => {
      const el = document.activeElement;
      return `${el.tagName} ${el.closest("li") ? el.closest("li").dataset.id : ""}`;
    });
    expect(afterToggle === "INPUT b" && afterRemote === "INPUT c",
      "keyboard focus is lost when the list changes", { afterToggle, afterRemote });
  },

  // N documents (args[0]): the page lists them in reasonable time and stays responsive.
  async big_list() {
    const n = Number(args[0]);
    const page = await open();
    const started = Date.now();
    await page.fill("#name", user);
    await page.fill("#password", password);
    await page.click("[data-testid=login]");
    const slowest = [];
    let shown = 0;
    while (Date.now() - started < 20000) {
      const t = Date.now();
      shown = await page.evaluate(() => document.querySelectorAll("#items li").length);
      slowest.push(Date.now() - t);
      if (shown === n) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const seconds = (Date.now() - started) / 1000;
    if (shown !== n) await shot(page, `big_list_${n}`);
    expect(shown === n && Math.max(...slowest) < 2000,
      `${n} documents listed within 20 s with the page answering within 2 s`,
      { shown, seconds, slowestAnswerMs: Math.max(...slowest) });
  },

  // Quick second clicks on a box and on ✕: each write starts from the latest revision the
  // page knows (the first write's answer), or waits for the one in flight; a write from
  // the revision the row was drawn with is refused (409) and leaves the box wrong.
  async double_clicks() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    await put({ _id: "b", title: "b", done: false, created: "2" });
    const page = await open();
    await logIn(page, 2);
    const box = '#items li[data-id="a"] input[type=checkbox]';
    await page.locator(box).dblclick();
    await page.click(box);
    await page.locator('#items li[data-id="b"] button.delete').dblclick();
    await page.waitForFunction(() => document.querySelectorAll("#items li").length === 1);
    await page.waitForTimeout(1000);
    const answer = await fetch(`${base}/api/v1/db/${db}/docs/a`, { headers: { Authorization: basic } });
    const stored = await answer.json();
    const checked = await page.isChecked(box);
    const error = await page.textContent("#error");
    expect(error === "" && stored.done === true && checked && !page.failures.length,
      "quick clicks end in an error or a box that is not what is stored",
      { error, stored, checked, failures: page.failures });
  },

  // The live list lags behind the page's own writes (the feed's message for revision 2
  // arrives after the answer for revision 3): the late, older change must not replace what
  // the page wrote, or the box shows a stale state and the next click writes from an old
  // revision (409). The feed's messages are held here and let through one at a time.
  async late_feed_change() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await open();
    const held = [];
    let holding = false;
    await page.routeWebSocket(/\/api\/v1\/changes/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((message) => (holding ? held.push(message) : ws.send(message)));
      ws.onMessage((message) => server.send(message));
      page.releaseUntil = async (pattern) => {
        while (true) {
          const message = held.shift();
          if (message === undefined) {
            await new Promise((resolve) => setTimeout(resolve, 50));
            continue;
          }
          ws.send(message);
          if (String(message).includes(pattern)) return;
        }
      };
      page.releaseAll = () => {
        holding = false;
        for (const message of held.splice(0)) ws.send(message);
      };
    });
    await logIn(page, 1);
    holding = true;
    const box = '#items li[data-id="a"] input[type=checkbox]';
    const putAnswer = () => page.waitForResponse((r) => r.request().method() === "PUT");
    let answered = putAnswer();
    await page.click(box);
    await answered; // revision 2: done
    answered = putAnswer();
    await page.click(box);
    await answered; // revision 3: not done
    await page.waitForTimeout(200); // the page has taken the answer
    await page.releaseUntil('"2-'); // the late change of revision 2 (done)
    await page.waitForTimeout(300); // an animation frame or more
    const shownAfterLate = await page.isChecked(box);
    answered = putAnswer();
    await page.click(box);
    const third = await answered;
    page.releaseAll();
    await page.waitForTimeout(1000);
    const answer = await fetch(`${base}/api/v1/db/${db}/docs/a`, { headers: { Authorization: basic } });
    const stored = await answer.json();
    const checked = await page.isChecked(box);
    const error = await page.textContent("#error");
    expect(!shownAfterLate && third.status() === 201 && error === "" && stored.done === checked
      && stored._rev.startsWith("4-") && !page.failures.length,
      "a late change from the feed undid the page's own write",
      { shownAfterLate, third: third.status(), error, stored, checked, failures: page.failures });
  },

  // The gateway is down: "Add" must not throw away what the user typed.
  async down_add_keeps_text() {
    const page = await open();
    await logIn(page, 0);
    await ask("DOWN");
    await page.fill("[data-testid=new-title]", "typed while the gateway is down");
    await page.click("[data-testid=add]");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    const left = await page.inputValue("[data-testid=new-title]");
    const error = await page.textContent("#error");
    if (left === "") await shot(page, "down_add_text_lost");
    expect(left === "typed while the gateway is down", "the typed item is thrown away", { left, error });
  },

  // The gateway is down: a tick that was not saved must not stay shown as saved.
  async down_toggle_reverts() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await open();
    await logIn(page, 1);
    await ask("DOWN");
    await page.click('#items li[data-id="a"] input[type=checkbox]');
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    await page.waitForTimeout(500);
    const checked = await page.isChecked('#items li[data-id="a"] input[type=checkbox]');
    if (checked) await shot(page, "down_toggle_shown_saved");
    expect(!checked, "the box stays ticked though nothing was saved (the document says done: false)",
      { checked, error: await page.textContent("#error") });
  },

  // An error from a moment the gateway was down stays on screen after it is back and
  // every later action succeeded.
  async error_clears_after_recovery() {
    const page = await open();
    await logIn(page, 0);
    await ask("DOWN");
    await page.fill("[data-testid=new-title]", "fails");
    await page.click("[data-testid=add]");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "");
    await ask("UP");
    await page.waitForFunction(() => document.getElementById("status").textContent === "open",
      null, { timeout: 30000 });
    await page.fill("[data-testid=new-title]", "works");
    await page.click("[data-testid=add]");
    await page.waitForFunction(() => document.querySelectorAll("#items li").length === 1);
    await page.waitForTimeout(300);
    const error = await page.textContent("#error");
    if (error) await shot(page, "stale_error_after_recovery");
    expect(error === "", "a stale error stays shown after later actions succeeded", error);
  },

  // "Log out" while the gateway is down: the HttpOnly cookie cannot be cleared, yet the
  // page shows the login form and says nothing; once the gateway is back a reload is
  // signed in again (a shared computer's next user gets the account).
  async down_logout() {
    const page = await open();
    await logIn(page, 0);
    await ask("DOWN");
    await page.click("#logout");
    await page.waitForTimeout(1500);
    const error = await page.textContent("#error");
    const appShown = await page.isVisible("#app");
    await ask("UP");
    await page.reload();
    const signedInAgain = await page.waitForSelector("#app:not([hidden])", { timeout: 8000 })
      .then(() => true, () => false);
    if (signedInAgain) await shot(page, "down_logout_still_signed_in");
    expect(error !== "" || appShown || !signedInAgain,
      "Log out failed silently: the page looked logged out, a reload is signed in again",
      { error, appShown, signedInAgain });
  },

  // Another origin of the same site (another port of 127.0.0.1: the session cookie is
  // SameSite=Lax, so it is sent) frames the demo page, signed in, with its delete buttons.
  async framed() {
    await put({ _id: "a", title: "a", done: false, created: "1" });
    const page = await open();
    await logIn(page, 1); // the live list works under the page's CSP (its WebSocket too)
    expect(!page.failures.length, "the page under its CSP has no errors", page.failures);
    // A page on another port of 127.0.0.1 (a real server: Chromium's private network
    // checks block a loopback frame in a page that came from nowhere).
    const server = createServer((request, response) => {
      response.writeHead(200, { "Content-Type": "text/html" });
      response.end(`<!doctype html><p>Win a prize: click the red cross!</p>
        <iframe id="f" src="${base}/?db=${db}" style="opacity:0.3" width="900" height="560"></iframe>`);
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const evil = await context.newPage();
    await evil.goto(`http://127.0.0.1:${server.address().port}/evil.html`);
    await evil.waitForTimeout(3000);
    const frame = evil.frames().find((f) => f.url().startsWith(base));
    const items = frame ? await frame.evaluate(
      () => document.querySelectorAll("#items li").length).catch(() => -1) : -1;
    if (items > 0) await shot(evil, "framed_by_other_origin");
    server.close();
    expect(items <= 0, "another origin frames the signed-in demo page (clickjacking)", { items });
  },

  // The connection state ("connecting", "open", "closed", "unauthenticated") is a status
  // message: it must be exposed as one (role=status / aria-live) to assistive technology.
  async status_live_region() {
    const page = await open();
    await logIn(page, 0);
    const cdp = await context.newCDPSession(page);
    await cdp.send("DOM.enable");
    await cdp.send("Accessibility.enable");
    const { root } = await cdp.send("DOM.getDocument");
    const { nodeId } = await cdp.send("DOM.querySelector", { nodeId: root.nodeId, selector: "#status" });
    const { node } = await cdp.send("DOM.describeNode", { nodeId });
    const { nodes } = await cdp.send("Accessibility.getFullAXTree");
    const byId = new Map(nodes.map((n) => [n.nodeId, n]));
    let ax = nodes.find((n) => n.backendDOMNodeId === node.backendNodeId);
    const chain = [];
    let live = null;
    while (ax) {
      const props = Object.fromEntries((ax.properties || []).map((p) => [p.name, p.value.value]));
      chain.push(`${ax.role && ax.role.value}${props.live ? `(live=${props.live})` : ""}`);
      if (props.live && props.live !== "off") { live = props.live; break; }
      ax = ax.parentId ? byId.get(ax.parentId) : null;
    }
    expect(live !== null, "the connection status is in no live region", chain);
  },

  // Text of done items: WCAG 2.x 1.4.3 asks 4.5:1 for 16 px text.
  async done_contrast() {
    await put({ _id: "a", title: "finished", done: true, created: "1" });
    const page = await open();
    await logIn(page, 1);
    const ratio = await page.evaluate(() => {
      const rgb = (text) => text.match(/\d+/g).slice(0, 3).map(Number);
      const lum = ([r, g, b]) => {
        const c = [r, g, b].map((v) => v / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
      };
      const title = document.querySelector("#items li.done .title");
      const fg = lum(rgb(getComputedStyle(title).color));
      const bg = lum(rgb(getComputedStyle(document.querySelector("main")).backgroundColor));
      return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    });
    expect(ratio >= 4.5, "a done item's text has too little contrast", ratio.toFixed(2));
  },
};

await runCheck(browser, async () => {
  expect(which in checks, "a known case", which);
  await checks[which]();
});
