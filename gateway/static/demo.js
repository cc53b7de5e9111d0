// The demo: a shared to-do list on database "demo" (or ?db=name), updated live.
import { Wallaby } from "/static/wallaby.js";

const params = new URLSearchParams(location.search);
const DB = params.get("db") || "demo";
const $ = (id) => document.getElementById(id);
const items = new Map(); // id -> doc
let subscription = null;

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
  const docs = [...items.values()].sort((a, b) => (a.created || "").localeCompare(b.created || "") || a._id.localeCompare(b._id));
  for (const doc of docs) {
    const li = document.createElement("li");
    li.dataset.id = doc._id;
    li.dataset.testid = "item";
    li.className = doc.done ? "done" : "";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !!doc.done;
    box.setAttribute("aria-label", `done: ${doc.title}`);
    box.addEventListener("change", () => save({ ...doc, done: box.checked }));
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = doc.title;
    const remove = document.createElement("button");
    remove.className = "delete";
    remove.type = "button";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `delete ${doc.title}`);
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
  if (subscription) return; // a subscription that waited for a new login resumes by itself
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

$("logout").addEventListener("click", async () => {
  if (subscription) subscription.unsubscribe();
  subscription = null;
  items.clear();
  render();
  await wb.logout().catch(() => {});
  $("app").hidden = true;
  $("login").hidden = false;
});

// Already logged in (cookie still valid)? Go straight to the list.
wb.session().then((ctx) => {
  const name = ctx && (ctx.name || (ctx.userCtx && ctx.userCtx.name));
  if (name) start(name);
}).catch(() => {});
