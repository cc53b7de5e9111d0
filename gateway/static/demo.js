// The demo: a shared to-do list on database "demo" (or ?db=name), updated live.
import { Wallaby } from "/static/wallaby.js";

const params = new URLSearchParams(location.search);
const DB = params.get("db") || "demo";
const $ = (id) => document.getElementById(id);
const items = new Map(); // id -> doc
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
    if (state === "unauthenticated") askToLogIn();
  },
});

function render() {
  const list = $("items");
  list.replaceChildren();
  // Other clients may write any JSON: order by what is a string, show titles as text.
  const created = (doc) => (typeof doc.created === "string" ? doc.created : "");
  const docs = [...items.values()].sort((a, b) => created(a).localeCompare(created(b)) || a._id.localeCompare(b._id));
  for (const doc of docs) {
    const li = document.createElement("li");
    li.dataset.id = doc._id;
    li.dataset.testid = "item";
    li.className = doc.done ? "done" : "";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !!doc.done;
    const text = typeof doc.title === "string" ? doc.title : doc.title == null ? "" : JSON.stringify(doc.title);
    box.setAttribute("aria-label", `done: ${text}`);
    box.addEventListener("change", () => save({ ...doc, done: box.checked }));
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = text;
    const remove = document.createElement("button");
    remove.className = "delete";
    remove.type = "button";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `delete ${text}`);
    remove.addEventListener("click", () => wb.delete(DB, doc._id, doc._rev).catch(showError));
    li.append(box, title, remove);
    list.append(li);
  }
  list.dataset.count = String(docs.length);
}

function showError(error) {
  $("error").textContent = error.message || String(error);
  if (error.status === 401) askToLogIn(); // a REST call found the session gone
}

async function save(doc) {
  try {
    await wb.put(DB, doc);
  } catch (error) {
    showError(error);
  }
}

function onChange(change) {
  if (change.deleted) items.delete(change.id);
  else if (change.doc && !change.id.startsWith("_design/")) items.set(change.id, change.doc);
  render();
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
  // since: 0 — the catch-up brings the current list, then changes stream in live.
  subscription = wb.subscribe(DB, { since: 0, include_docs: true, onError: showError }, onChange);
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
  $("title").value = "";
  const id = `todo-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  await save({ _id: id, title, done: false, created: new Date().toISOString() });
});

function stop() {
  if (subscription) subscription.unsubscribe();
  subscription = null;
  signedIn = null;
  items.clear();
  render();
}

$("logout").addEventListener("click", async () => {
  stop();
  await wb.logout().catch(() => {});
  $("app").hidden = true;
  $("login").hidden = false;
});

// Already logged in (cookie still valid)? Go straight to the list.
wb.session().then((ctx) => {
  const name = ctx && (ctx.name || (ctx.userCtx && ctx.userCtx.name));
  if (name) start(name);
}).catch(() => {});
