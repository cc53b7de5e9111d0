// The browser client's REST methods in Chromium, one case per run.
// argv: <gateway base url> <db> <user> <password> <case>
//   json_keys       allDocs/get take key parameters as plain JS values (strings too); a
//                   long list of keys goes in a POST body
//   put_without_id  put() of a document without _id throws TypeError and writes nothing
//   errors          network failures and non-JSON answers reject with WallabyError
//   request         the request() examples of docs/browser-client.md (find, view, bulk_docs)
// Prints "OK" or "FAIL <why>".
import http from "node:http";

import { launchBrowser, runCheck } from "./harness.mjs";

const [base, db, user, password, which] = process.argv.slice(2);
const browser = await launchBrowser();
const { context } = browser;

function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function clientPage() {
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  await page.goto(`${base}/health`); // any page of the gateway's origin
  await page.evaluate(async ([user, password]) => {
    window.W = await import("/static/wallaby.js");
    window.wb = new window.W.Wallaby();
    await window.wb.login(user, password);
    // What a call threw, as plain data.
    window.failure = async (call) => {
      try {
        await call();
        return null;
      } catch (error) {
        return { type: error.constructor.name, isWallaby: error instanceof window.W.WallabyError,
          status: error.status, error: error.error, reason: error.reason };
      }
    };
  }, [user, password]);
  return page;
}

const cases = {
  async json_keys(page) {
    const got = await page.evaluate(async (db) => {
      for (const id of ["a1", "b1", "c1", "x/y"]) await wb.put(db, { _id: id, v: id });
      const ids = (answer) => answer.rows.map((row) => row.key);
      return {
        range: ids(await wb.allDocs(db, { startkey: "b", endkey: "c\ufff0" })),
        range2: ids(await wb.allDocs(db, { start_key: "a", end_key: "b1", inclusive_end: false })),
        key: ids(await wb.allDocs(db, { key: "b1" })),
        keys: ids(await wb.allDocs(db, { keys: ["c1", "a1"] })),
        // 600 keys of 32 characters: 20 KiB of JSON, over the request line the gateway reads
        manyKeys: (await wb.allDocs(db, { include_docs: true,
          keys: ["c1", ...Array.from({ length: 599 }, (_, n) => n.toString(16).padStart(32, "0"))] }))
          .rows.slice(0, 2).map((row) => [row.id, row.doc && row.doc.v, row.error]),
        // 60 ids of 30 CJK characters: 2 KB of JSON, but 16.7 KB percent-encoded
        cjkKeys: (await wb.allDocs(db, {
          keys: Array.from({ length: 60 }, (_, n) => "\u6f22".repeat(29) + String.fromCharCode(0x4e00 + n)) }))
          .rows.length,
        numberLike: await failure(() => wb.allDocs(db, { key: "123" })),
        revs: (await wb.get(db, "x/y", { open_revs: "all" })).length,
        openRevs: (await wb.get(db, "a1", { open_revs: [(await wb.get(db, "a1"))._rev] })).length,
        rev: (await wb.get(db, "a1", { rev: (await wb.get(db, "a1"))._rev })).v,
      };
    }, db);
    expect(JSON.stringify(got.range) === '["b1","c1"]', "startkey/endkey as strings", got);
    expect(JSON.stringify(got.range2) === '["a1"]', "start_key/end_key as strings", got);
    expect(JSON.stringify(got.key) === '["b1"]', "key as a string", got);
    expect(JSON.stringify(got.manyKeys) === '[["c1","c1",null],[null,null,"not_found"]]',
      "600 keys (in a POST body)", got.manyKeys);
    expect(got.cjkKeys === 60, "60 long non-ASCII keys (in a POST body)", got.cjkKeys);
    expect(JSON.stringify(got.keys) === '["c1","a1"]', "keys", got);
    expect(got.numberLike === null, "key '123' is the string 123", got);
    expect(got.revs === 1 && got.openRevs === 1 && got.rev === "a1", "open_revs / rev", got);
  },

  async put_without_id(page) {
    const got = await page.evaluate(async (db) => ({
      missing: await failure(() => wb.put(db, { title: "no id" })),
      empty: await failure(() => wb.put(db, { _id: "", title: "empty id" })),
      written: (await wb.allDocs(db)).rows.map((row) => row.id),
    }), db);
    expect(got.missing && got.missing.type === "TypeError", "put without _id throws TypeError", got);
    expect(got.empty && got.empty.type === "TypeError", "put with an empty _id throws TypeError", got);
    expect(got.written.length === 0, "nothing written", got);
  },

  async request(page) {
    // The examples of docs/browser-client.md (request() reaches every JSON route).
    const got = await page.evaluate(async (db) => {
      const e = encodeURIComponent;
      // (_design/app with the view by_date is written by the test, as the admin)
      const bulk = await wb.request("POST", `/db/${e(db)}/bulk_docs`, { docs: [
        { _id: "a", done: false, date: "2023-12" }, { _id: "b", done: true, date: "2024-02" },
        { _id: "c", done: false, date: "2024-05" }] });
      const found = await wb.request("POST", `/db/${e(db)}/find`, { selector: { done: false } });
      const view = await wb.request("GET", `/db/${e(db)}/views/${e("app")}/${e("by_date")}`, undefined,
        { startkey: "2024", limit: 10 });
      return { bulk: bulk.map((r) => r.id), found: found.docs.map((d) => d._id).sort(),
        view: view.rows.map((r) => r.id) };
    }, db);
    expect(JSON.stringify(got.bulk) === '["a","b","c"]', "bulk_docs", got);
    expect(JSON.stringify(got.found) === '["a","c"]', "find", got);
    expect(JSON.stringify(got.view) === '["b","c"]', "view with a string startkey", got);
  },

  async errors(page) {
    // An HTML error page from a proxy in front of the gateway, and an unreachable gateway.
    await page.route("**/api/v1/db/*/docs/proxied", (route) => route.fulfill({
      status: 502, contentType: "text/html", body: "<html><body>Bad Gateway</body></html>" }));
    await page.route("**/api/v1/db/*/docs/fine-but-html", (route) => route.fulfill({
      status: 200, contentType: "text/html", body: "<html></html>" }));
    // A connection cut in the middle of an answer's body: a network failure too (status
    // 0), though its headers said 200.
    const cut = http.createServer((request, response) => {
      response.writeHead(200, { "Content-Type": "application/json", "Content-Length": "100",
        "Access-Control-Allow-Origin": base, "Access-Control-Allow-Credentials": "true" });
      response.write('{"_id": "x", ');
      setTimeout(() => response.destroy(), 50);
    });
    await new Promise((resolve) => cut.listen(0, "127.0.0.1", resolve));
    const cutOrigin = `http://127.0.0.1:${cut.address().port}`;
    const got = await page.evaluate(async ([db, cutOrigin]) => {
      const nowhere = new W.Wallaby({ baseUrl: "http://127.0.0.1:9" }); // nothing listens on 9
      return {
        cutMidway: await failure(() => new W.Wallaby({ baseUrl: cutOrigin }).get(db, "x")),
        network: await failure(() => nowhere.get(db, "x")),
        networkSession: await failure(() => nowhere.session()),
        proxy: await failure(() => wb.get(db, "proxied")),
        html: await failure(() => wb.get(db, "fine-but-html")),
        missing: await failure(() => wb.get(db, "missing")),
      };
    }, [db, cutOrigin]);
    cut.close();
    expect(got.cutMidway && got.cutMidway.isWallaby && got.cutMidway.status === 0
      && got.cutMidway.error === "network_error", "a body cut midway", got.cutMidway);
    expect(got.network && got.network.isWallaby && got.network.status === 0
      && got.network.error === "network_error", "network failure", got.network);
    expect(got.networkSession && got.networkSession.error === "network_error", "session()", got);
    expect(got.proxy && got.proxy.isWallaby && got.proxy.status === 502
      && got.proxy.error === "bad_response", "HTML 502", got.proxy);
    expect(got.html && got.html.isWallaby && got.html.status === 200
      && got.html.error === "bad_response", "HTML 200", got.html);
    expect(got.missing && got.missing.status === 404 && got.missing.error === "not_found", "404", got);
  },
};

await runCheck(browser, async () => {
  if (!cases[which]) throw new Error(`unknown case ${which}`);
  await cases[which](await clientPage());
});
