// The demo: a shared to-do list on database "demo" (or ?db=name), updated live.
import { Wallaby } from "/static/wallaby.js";

const params = new URLSearchParams(location.search);
const DB = params.get("db") || "demo";
/** Rows listed at most (the first ones in list order); a line counts the others. */
const SHOWN = 5000;
const $ = (id) => document.getElementById(id);
const docs = new Map(); // id -> the latest version of each document
const keys = new Map(); // id -> its sort key, as placed in `order`
let order = []; // every id, in list order
const rows = new Map(); // id -> its <li>, for the ones listed
const changed = new Set(); // ids changed since the last render
let frame = 0; // the render requested for the next animation frame, if any
const busy = new Set(); // ids with a save or delete in flight
// id -> the revisions the page's own writes to it replaced, until the live list brings
// another one: the feed may deliver one of them after the write's answer (stale by then).
// A lower revision that is not among them is news: a conflict's other branch, which a
// delete of the winner brought back.
const replaced = new Map();
let subscription = null;
let signedIn = null; // whose items are listed

// The session ended (expired, or logged out in another tab): log in again and the list
// resumes where it stopped.
function askToLogIn() {
  $("app").hidden = true;
  $("login").hidden = false;
}

const wb = new Wallaby({
  onStatus: (state) => {
    $("status").textContent = state;
    if (state === "open") $("error").textContent = ""; // whatever failed, the gateway is back
    if (state === "unauthenticated") askToLogIn();
  },
});

// Other clients may write any JSON: order by what is a string, show titles as text.
const keyOf = (doc) => [typeof doc.created === "string" ? doc.created : "", doc._id];
const before = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
const titleOf = (doc) => (typeof doc.title === "string" ? doc.title : doc.title == null ? "" : JSON.stringify(doc.title));

/** Where `key` is (or goes) in `order`: a binary search, keys are unique (ids are). */
function position(key) {
  let low = 0;
  let high = order.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (before(keys.get(order[middle]), key)) low = middle + 1;
    else high = middle;
  }
  return low;
}

function newRow(id) {
  const li = document.createElement("li");
  li.dataset.id = id;
  li.dataset.testid = "item";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.addEventListener("change", () => toggle(id, box));
  const title = document.createElement("span");
  title.className = "title";
  const remove = document.createElement("button");
  remove.className = "delete";
  remove.type = "button";
  remove.textContent = "✕";
  remove.addEventListener("click", () => erase(id));
  li.append(box, title, remove);
  return li;
}

function fill(li, doc) {
  const [box, title, remove] = li.children;
  const text = titleOf(doc);
  li.className = doc.done ? "done" : "";
  if (!busy.has(doc._id)) box.checked = !!doc.done; // else the box shows what is being saved
  box.setAttribute("aria-label", `done: ${text}`);
  title.textContent = text;
  remove.setAttribute("aria-label", `delete ${text}`);
}

// Changes are drawn once per animation frame, and only what changed: a catch-up of
// thousands of documents stays quick, and rows (with the keyboard focus) stay in place.
function schedule(id) {
  changed.add(id);
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const focused = document.activeElement;
  for (const id of changed) {
    const doc = docs.get(id);
    const was = keys.get(id);
    const key = doc && keyOf(doc);
    if (was && !(key && key[0] === was[0])) { // gone, or moved: take it out
      order.splice(position(was), 1);
      keys.delete(id);
      if (rows.has(id)) rows.get(id).remove();
      rows.delete(id);
    }
    if (key && !keys.has(id)) {
      order.splice(position(key), 0, id);
      keys.set(id, key);
    }
    if (rows.has(id)) fill(rows.get(id), doc);
  }
  changed.clear();
  // The rows left are in list order: add the missing ones among them, drop the surplus.
  const list = $("items");
  let next = list.firstElementChild;
  for (const id of order.slice(0, SHOWN)) {
    if (rows.has(id)) {
      next = rows.get(id).nextElementSibling;
      continue;
    }
    const li = newRow(id);
    fill(li, docs.get(id));
    rows.set(id, li);
    list.insertBefore(li, next);
  }
  while (next) {
    const surplus = next;
    next = next.nextElementSibling;
    rows.delete(surplus.dataset.id);
    surplus.remove();
  }
  const more = order.length - rows.size;
  $("more").hidden = more <= 0;
  $("more").textContent = `… and ${more} more`;
  if (focused && focused !== document.activeElement && focused.isConnected) focused.focus(); // a moved row
}

function showError(error) {
  $("error").textContent = error.message || String(error);
  if (error.status === 401) askToLogIn(); // a REST call found the session gone
}

/** Runs a write: shows its error, or clears an earlier one. Whether it worked. */
async function write(action) {
  try {
    await action();
    $("error").textContent = "";
    return true;
  } catch (error) {
    showError(error);
    return false;
  }
}

// A write's answer may come before the live list brings its change: the list takes it
// (unless it brought a newer one), so that the next write starts from the new revision.
function wrote(id, was, doc) {
  const held = docs.get(id);
  if (held !== was && !(held && was && held._rev === was._rev)) return;
  if (doc) docs.set(id, doc);
  else docs.delete(id);
  if (!replaced.has(id)) replaced.set(id, new Set());
  replaced.get(id).add(was._rev);
  schedule(id);
}

async function toggle(id, box) {
  if (busy.has(id)) return; // the save in flight saves the box's state again when done
  busy.add(id);
  let stored = docs.get(id);
  const saved = await write(async () => {
    while (stored && box.checked !== !!stored.done) {
      const doc = { ...stored, done: box.checked };
      await wb.put(DB, doc); // sets doc._rev
      wrote(id, stored, doc);
      stored = doc;
    }
  });
  busy.delete(id);
  if (!saved) box.checked = !!stored.done; // what is stored, not the click that failed
}

async function erase(id) {
  const doc = docs.get(id);
  if (!doc || busy.has(id)) return;
  busy.add(id);
  if (await write(() => wb.delete(DB, id, doc._rev))) wrote(id, doc, null);
  busy.delete(id);
}

function onChange(change) {
  const stale = replaced.get(change.id);
  const rev = change.doc?._rev ?? change.changes?.[0]?.rev;
  if (stale && rev !== undefined) {
    if (stale.has(rev)) return; // the page's own write replaced it
    replaced.delete(change.id); // the feed has caught up with it
  }
  if (change.deleted) docs.delete(change.id);
  else if (change.doc && !change.id.startsWith("_design/")) docs.set(change.id, change.doc);
  else return;
  schedule(change.id);
}

function follow(since) {
  subscription = wb.subscribe(DB, { since, include_docs: true, onError: showError }, onChange);
}

async function start(name) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("user").textContent = name;
  // A subscription that waited for a new login resumes by itself, for the same user; for
  // another one, the list starts again from what that user may read.
  if (subscription && name === signedIn) return;
  if (subscription) stop();
  signedIn = name;
  follow(0); // the catch-up brings the current list, then changes stream in live
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  try {
    const user = await wb.login($("name").value, $("password").value);
    await start(user.name);
  } catch (error) {
    showError(error);
  }
});

$("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("title").value.trim();
  if (!title) return;
  const id = `todo-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const doc = { _id: id, title, done: false, created: new Date().toISOString() };
  // The text stays until it is saved (and unless the user typed on meanwhile).
  if ((await write(() => wb.put(DB, doc))) && $("title").value.trim() === title) $("title").value = "";
});

function stop() {
  if (subscription) subscription.unsubscribe();
  subscription = null;
  signedIn = null;
  cancelAnimationFrame(frame);
  frame = 0;
  for (const map of [docs, keys, rows, changed, busy, replaced]) map.clear();
  order = [];
  $("items").replaceChildren();
  $("more").hidden = true;
}

$("logout").addEventListener("click", async () => {
  try {
    await wb.logout();
  } catch (error) {
    // Unreachable, or refused: the HttpOnly cookie is still set, so the page stays signed
    // in (a reload would be), and logout() left the live list running.
    $("error").textContent = `Could not log out: ${error.message}`;
    return;
  }
  stop();
  askToLogIn();
});

// Already logged in (cookie still valid)? Go straight to the list.
wb.session().then((ctx) => {
  const name = ctx && (ctx.name || (ctx.userCtx && ctx.userCtx.name));
  if (name) start(name);
}).catch(() => {});
