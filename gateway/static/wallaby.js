// Wallaby Gateway browser client: a dependency-free ES module.
//
//   import { Wallaby } from "/static/wallaby.js";
//   const wb = new Wallaby();                      // same origin as the gateway
//   await wb.login("demo", "demo");                // sets the HttpOnly session cookie
//   const todo = await wb.put("demo", { _id: "t1", title: "milk", done: false });
//   const sub = wb.subscribe("demo", { since: 0, include_docs: true }, (change) => {
//     console.log(change.id, change.deleted, change.doc);
//   });
//   sub.unsubscribe();
//
// Live changes travel over ONE WebSocket per Wallaby instance (/api/v1/changes). When it
// drops (network, gateway restart) the client reconnects with jittered exponential
// backoff and resubscribes every subscription from the last seq it delivered, so the
// callback sees every change exactly once, in order.

const API = "/api/v1";
/** Close code: the session behind the socket expired (see api_schema/asyncapi.yaml). */
const SESSION_INVALID = 4001;

/** An error answered by the gateway ({error, reason, status}). */
export class WallabyError extends Error {
  constructor(status, body) {
    super((body && body.reason) || `HTTP ${status}`);
    this.name = "WallabyError";
    this.status = status;
    this.error = body && body.error;
    this.reason = body && body.reason;
    this.body = body;
  }
}

function enc(segment) {
  return encodeURIComponent(segment);
}

function query(params) {
  const parts = [];
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined) continue;
    const text = typeof value === "string" ? value : JSON.stringify(value);
    parts.push(`${enc(key)}=${enc(text)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

export class Wallaby {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] Gateway origin (default: the page's).
   * @param {string} [options.wsUrl] WebSocket URL (default: derived from baseUrl).
   * @param {string} [options.token] A bearer token (instead of the session cookie).
   * @param {number} [options.minBackoff] First reconnect delay in ms (default 250).
   * @param {number} [options.maxBackoff] Largest reconnect delay in ms (default 10000).
   * @param {(state: string, detail?: any) => void} [options.onStatus] Connection state:
   *   "connecting", "open", "closed", "interrupted" / "live" (upstream feed).
   */
  constructor(options = {}) {
    const origin = options.baseUrl || (typeof location !== "undefined" ? location.origin : "");
    this.baseUrl = origin.replace(/\/$/, "");
    this.wsUrl = options.wsUrl || `${this.baseUrl.replace(/^http/, "ws")}${API}/changes`;
    this.token = options.token || null;
    this.minBackoff = options.minBackoff ?? 250;
    this.maxBackoff = options.maxBackoff ?? 10000;
    this.onStatus = options.onStatus || (() => {});
    this._subs = new Map(); // id -> subscription
    this._nextId = 1;
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._closed = false;
    this._opened = false; // whether the current socket completed its handshake
    this._waitingForLogin = false;
    this._authSuspect = false;
    // CouchDB sessions expire unless used; while live changes run, touching the session
    // lets the gateway hand back CouchDB's refreshed cookie, so reconnects keep working.
    this.keepAliveMs = options.keepAliveMs ?? 60000;
    this._keepAlive = null;
  }

  // -- REST --------------------------------------------------------------------

  async request(method, path, body, params) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const answer = await fetch(`${this.baseUrl}${API}${path}${query(params)}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "include",
    });
    const text = await answer.text();
    const data = text ? JSON.parse(text) : null;
    if (!answer.ok) throw new WallabyError(answer.status, data);
    return data;
  }

  /** Log in; the gateway sets its HttpOnly session cookie. Returns {name, roles, token}. */
  async login(name, password) {
    const result = await this.request("POST", "/session", { name, password });
    if (this._waitingForLogin) {
      this._waitingForLogin = false;
      this._attempt = 0;
      this._connect(); // resume every subscription from its last delivered seq
    }
    return result;
  }

  /** Log out (clears the cookie) and stop live changes. */
  async logout() {
    this.close();
    this.token = null;
    return this.request("DELETE", "/session");
  }

  /** The current user ({name, roles}); throws WallabyError 401 when logged out. */
  session() {
    return this.request("GET", "/session");
  }

  get(db, id, params) {
    return this.request("GET", `/db/${enc(db)}/docs/${enc(id)}`, undefined, params);
  }

  /** Create or update a document (it needs an _id; _rev for updates). Returns {ok, id, rev}. */
  async put(db, doc) {
    const result = await this.request("PUT", `/db/${enc(db)}/docs/${enc(doc._id)}`, doc);
    doc._rev = result.rev;
    return result;
  }

  /** Create a document with a server-generated id. */
  post(db, doc) {
    return this.request("POST", `/db/${enc(db)}/docs`, doc);
  }

  delete(db, id, rev) {
    return this.request("DELETE", `/db/${enc(db)}/docs/${enc(id)}`, undefined, { rev });
  }

  allDocs(db, params = {}) {
    return this.request("GET", `/db/${enc(db)}/all_docs`, undefined, params);
  }

  // -- live changes ----------------------------------------------------------------

  /**
   * Follow a database's changes.
   * @param {string} db
   * @param {object} [options] since ("now", 0 or a seq), include_docs, filter, doc_ids,
   *   selector, view, query; onError(error) for subscription errors.
   * @param {(change: object) => void} onChange Called once per change, in order.
   * @returns {{unsubscribe: () => void, id: string, readonly lastSeq: any}}
   */
  subscribe(db, options = {}, onChange = () => {}) {
    const { onError, since, ...params } = options;
    const sub = {
      id: `s${this._nextId++}`,
      db,
      params,
      since: since === undefined ? "now" : since,
      lastSeq: null,
      feed: null,
      onChange,
      onError: onError || ((error) => console.warn("wallaby subscription", error)),
    };
    this._subs.set(sub.id, sub);
    this._closed = false;
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._sendSubscribe(sub);
    else this._connect();
    return {
      id: sub.id,
      get lastSeq() {
        return sub.lastSeq;
      },
      unsubscribe: () => {
        if (!this._subs.delete(sub.id)) return;
        if (this._ws && this._ws.readyState === WebSocket.OPEN) {
          this._ws.send(JSON.stringify({ type: "unsubscribe", id: sub.id }));
        }
        if (this._subs.size === 0) this.close();
      },
    };
  }

  /** Close the WebSocket and stop reconnecting (subscriptions are dropped). */
  close() {
    this._closed = true;
    this._waitingForLogin = false;
    this._stopKeepAlive();
    this._subs.clear();
    clearTimeout(this._timer);
    this._timer = null;
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.close(1000);
    }
  }

  _sendSubscribe(sub) {
    const since = sub.lastSeq !== null ? sub.lastSeq : sub.since;
    const message = { type: "subscribe", id: sub.id, db: sub.db, since, ...sub.params };
    this._ws.send(JSON.stringify(message));
  }

  _connect() {
    if (this._ws || this._timer || this._closed) return;
    const url = this.token ? `${this.wsUrl}?token=${enc(this.token)}` : this.wsUrl;
    this.onStatus("connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => {
      this._attempt = 0;
      this._opened = true;
      this.onStatus("open");
      this._startKeepAlive();
      for (const sub of this._subs.values()) this._sendSubscribe(sub);
    };
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => {
      const opened = this._opened;
      if (this._ws === ws) this._ws = null;
      // Feed ids are per gateway process (and per replica): on the next connection an old
      // id may name another database's feed. A subscription follows no feed until that
      // connection's `subscribed` names it.
      for (const sub of this._subs.values()) sub.feed = null;
      this.onStatus("closed", { code: event.code, reason: event.reason });
      if (this._closed || !this._subs.size) return;
      // 4001: the session behind the socket expired. A refused handshake looks like
      // 1006 without an open. Either way, ask whether we are still logged in.
      const suspect = this._authSuspect;
      this._authSuspect = false;
      if (event.code === SESSION_INVALID || suspect || (!opened && !this.token)) this._checkSession();
      else this._scheduleReconnect();
    };
  }

  async _checkSession() {
    try {
      await this.session();
      this._scheduleReconnect();
    } catch (error) {
      if (error instanceof WallabyError && error.status === 401) {
        this._waitingForLogin = true; // subscriptions resume after the next login()
        this._stopKeepAlive();
        this.onStatus("unauthenticated");
      } else {
        this._scheduleReconnect();
      }
    }
  }

  _startKeepAlive() {
    if (this._keepAlive || !this.keepAliveMs) return;
    this._keepAlive = setInterval(() => {
      if (this._subs.size) this.session().catch(() => {});
    }, this.keepAliveMs);
  }

  _stopKeepAlive() {
    clearInterval(this._keepAlive);
    this._keepAlive = null;
  }

  _scheduleReconnect() {
    if (this._timer || this._closed || this._waitingForLogin) return;
    const ceiling = Math.min(this.maxBackoff, this.minBackoff * 2 ** this._attempt);
    this._attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jittered
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, delay);
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      return;
    }
    switch (message.type) {
      case "subscribed": {
        const sub = this._subs.get(message.id);
        if (sub) {
          sub.feed = message.feed;
          // Where this subscription starts: resuming from it after a drop loses
          // nothing, even before the first change arrived.
          if (sub.lastSeq === null && message.since !== undefined) sub.lastSeq = message.since;
        }
        break;
      }
      case "change":
        for (const sub of this._subs.values()) {
          if (sub.feed === null || sub.feed !== message.feed) continue;
          sub.lastSeq = message.seq;
          try {
            sub.onChange(message);
          } catch (error) {
            console.error("wallaby onChange", error);
          }
        }
        break;
      case "error": {
        const sub = message.id && this._subs.get(message.id);
        if (sub && message.status === 401 && !this.token) {
          // Not (or no longer) authenticated: keep the subscription, find out whether
          // the session is gone, and resume it after a new login if so.
          this._authSuspect = true;
          if (this._ws) this._ws.close(4000, "re-authenticating");
          break;
        }
        if (sub) {
          this._subs.delete(message.id);
          sub.onError(message);
        } else {
          console.warn("wallaby", message);
        }
        break;
      }
      case "feed_state":
        this.onStatus(message.state, message);
        break;
      default:
        break; // pong, unsubscribed, closing (we resume from our own lastSeq)
    }
  }
}

export default Wallaby;
