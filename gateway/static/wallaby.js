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
// Live changes travel over a WebSocket (/api/v1/changes), one per Wallaby instance as long
// as no two subscriptions have the same database and options (the gateway refuses such a
// pair on one connection, so the second one gets a socket of its own). When a socket drops
// (network, gateway restart) the client reconnects with jittered exponential backoff and
// resubscribes every subscription from the last seq it delivered, so each callback sees
// every change exactly once, in order.

const API = "/api/v1";
/** Response header: a bearer client's refreshed session token (see docs/rest-api.md). */
const TOKEN_HEADER = "X-Wallaby-Token";
/** Close code: the session behind the socket expired (see api_schema/asyncapi.yaml). */
const SESSION_INVALID = 4001;
/** Close code: a message larger than the gateway accepts (WALLABY_WS_MAX_MESSAGE_BYTES). */
const MESSAGE_TOO_BIG = 1009;
/**
 * A subscription refused with 401/403 while the session still looks valid is tried once
 * more after this long: the gateway trusts a verified session for a few seconds (5 s), so
 * a session that just ended can look valid that long; a second refusal ends it.
 */
const AUTH_RETRY_MS = 6000;
/** Close code reported when a socket is given up for not answering a ping (as for a drop). */
const NO_ANSWER = 1006;
/** Longest `keys` (as percent-encoded JSON) that allDocs sends in the query string. */
const KEYS_IN_QUERY = 4000;
/** Query parameters the gateway reads as JSON even when they are strings. */
const JSON_PARAMS = new Set(["key", "keys", "startkey", "endkey", "start_key", "end_key", "atts_since"]);

/**
 * A failure: an error answered by the gateway ({error, reason, status}), a network
 * failure (status 0, error "network_error") or an answer that is not JSON (error
 * "bad_response", with the answer's HTTP status).
 */
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
    const json = JSON_PARAMS.has(key) || (key === "open_revs" && value !== "all");
    const text = typeof value === "string" && !json ? value : JSON.stringify(value);
    parts.push(`${enc(key)}=${enc(text)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

/** JSON with object keys sorted, so equal values give equal text. */
function stable(value) {
  if (Array.isArray(value)) return `[${value.map(stable).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${stable(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value === undefined ? null : value);
}

/** What the gateway compares to find duplicate subscriptions: db and options, not since. */
function feedKey(db, p) {
  return stable([db, p.filter ?? null, [...new Set(p.doc_ids || [])].sort(), p.selector ?? null,
    p.view ?? null, Object.entries(p.query || {}).sort(), !!p.include_docs]);
}

/** One WebSocket and the subscriptions it carries (at most one per feed key). */
class Lane {
  constructor(wb) {
    this.wb = wb;
    this.subs = new Map(); // id -> subscription
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.ended = false;
    this.unanswered = new Map(); // sub -> size of its subscribe message, until answered
    this.pinger = null;
    this.pingDue = false; // a ping went out and nothing has come since
  }

  has(key) {
    for (const sub of this.subs.values()) if (sub.key === key) return true;
    return false;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  add(sub) {
    sub.lane = this;
    this.subs.set(sub.id, sub);
    if (this.isOpen) this.send(sub);
    else this.connect();
  }

  /** Forget a subscription (telling the gateway if it is live there); close when empty. */
  remove(sub, { tellServer = false } = {}) {
    if (!this.subs.delete(sub.id)) return;
    this.unanswered.delete(sub);
    if (tellServer && this.isOpen) this.ws.send(JSON.stringify({ type: "unsubscribe", id: sub.id }));
    if (!this.subs.size) this.wb._dropLane(this);
  }

  send(sub) {
    const since = sub.lastSeq !== null ? sub.lastSeq : sub.since;
    const text = JSON.stringify({ type: "subscribe", id: sub.id, db: sub.db, since, ...sub.params });
    this.unanswered.set(sub, new TextEncoder().encode(text).length);
    this.ws.send(text);
  }

  /**
   * The subscription whose message closed the socket with 1009: of those sent on it and
   * not yet answered, the largest (the gateway's limit is not known here, but the one
   * over it is larger than any under it).
   */
  tooBig() {
    let largest = null;
    for (const [sub, size] of this.unanswered) {
      if (largest === null || size > this.unanswered.get(largest)) largest = sub;
    }
    return largest;
  }

  /**
   * Ping the gateway every `pingMs` while open; a socket that answers nothing until the
   * next ping is given up (a proxy or NAT that drops a connection silently never closes it).
   */
  startPinging(ws, token) {
    const every = this.wb.pingMs;
    this.pingDue = false;
    if (!every) return;
    this.pinger = setInterval(() => {
      if (this.ws !== ws) return;
      if (this.pingDue) {
        this.ws = null; // its onclose, if it ever comes, is ignored
        ws.close();
        this.lost({ code: NO_ANSWER, reason: "no answer to ping" }, true, token);
        return;
      }
      this.pingDue = true;
      ws.send(JSON.stringify({ type: "ping" }));
    }, every);
  }

  stopPinging() {
    clearInterval(this.pinger);
    this.pinger = null;
  }

  connect() {
    const wb = this.wb;
    if (this.ws || this.timer || this.ended || wb._waitingForLogin) return;
    const token = wb.token;
    const url = token ? `${wb.wsUrl}${wb.wsUrl.includes("?") ? "&" : "?"}token=${enc(token)}`
      : wb.wsUrl;
    wb._status("connecting");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.unanswered = new Map();
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true; // the backoff resets only once a subscription is accepted
      wb._status("open");
      wb._startKeepAlive();
      this.startPinging(ws, token);
      for (const sub of this.subs.values()) if (!sub.checking) this.send(sub);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.pingDue = false;
      this.onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // an old socket, already replaced or closed on purpose
      this.ws = null;
      this.lost(event, opened, token);
    };
  }

  /** The socket is gone (closed, or given up): end what cannot go on, reconnect the rest. */
  lost(event, opened, token) {
    const wb = this.wb;
    this.stopPinging();
    // Feed ids are per gateway process (and per replica): on the next connection an old
    // id may name another database's feed. A subscription follows no feed until that
    // connection's `subscribed` names it.
    const unanswered = event.code === MESSAGE_TOO_BIG ? this.tooBig() : null;
    for (const sub of this.subs.values()) sub.feed = null;
    wb._status("closed", { code: event.code, reason: event.reason });
    if (unanswered) {
      // Its subscribe message is over the gateway's limit: sending it again would close
      // the socket again. It ends; the others reconnect.
      wb._end(unanswered, new WallabyError(MESSAGE_TOO_BIG, { error: "message_too_big",
        reason: "the subscribe message is larger than the gateway accepts (doc_ids, selector)" }));
    }
    if (this.ended || !this.subs.size) return;
    // 4001: the session behind the socket expired; if the socket's token is still the
    // one in use (no refreshed token taken since), that session is over.
    if (event.code === SESSION_INVALID && token && token === wb.token) {
      wb._unauthenticated();
    } else if (event.code === SESSION_INVALID || !opened) {
      // A cookie may have been renewed meanwhile; a refused handshake looks like 1006
      // without an open. Ask whether we are still logged in.
      wb._checkSession().then((state) => {
        if (state !== "invalid") this.scheduleReconnect();
      });
    } else {
      this.scheduleReconnect();
    }
  }

  scheduleReconnect() {
    if (this.ws || this.timer || this.ended || this.wb._waitingForLogin) return;
    const { minBackoff, maxBackoff } = this.wb;
    const ceiling = Math.min(maxBackoff, minBackoff * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jittered
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  /** Close the socket now; `end` for good, else until resume(). */
  close(end, code = 1000, reason = "") {
    this.ended = this.ended || end;
    clearTimeout(this.timer);
    this.timer = null;
    this.stopPinging();
    if (!this.ws) return;
    const ws = this.ws;
    this.ws = null; // its onclose is ignored from now on
    for (const sub of this.subs.values()) sub.feed = null;
    ws.close(code, reason);
    this.wb._status("closed", { code, reason });
  }

  resume() {
    this.attempt = 0;
    this.connect();
  }

  onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      return;
    }
    switch (message.type) {
      case "subscribed": {
        const sub = this.subs.get(message.id);
        if (sub) {
          this.unanswered.delete(sub);
          this.attempt = 0;
          sub.feed = message.feed;
          sub.authRetried = false;
          // Where this subscription starts: resuming from it after a drop loses
          // nothing, even before the first change arrived.
          if (sub.lastSeq === null && message.since !== undefined) sub.lastSeq = message.since;
        }
        break;
      }
      case "change":
        for (const sub of this.subs.values()) {
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
        const sub = message.id && this.subs.get(message.id);
        if (!sub) {
          console.warn("wallaby", message);
        } else if (message.error === "duplicate_subscription"
            || message.error === "too_many_subscriptions") {
          // Equal to another on this socket, or one too many for a socket: use another.
          this.subs.delete(sub.id);
          this.unanswered.delete(sub);
          this.wb._place(sub, this);
          if (!this.subs.size) this.wb._dropLane(this);
        } else {
          this.wb._refused(sub, message);
        }
        break;
      }
      case "feed_state":
        this.wb._status(message.state, message);
        break;
      default:
        break; // pong, unsubscribed, closing (we resume from our own lastSeq)
    }
  }
}

export class Wallaby {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] Gateway origin (default: the page's).
   * @param {string} [options.wsUrl] WebSocket URL (default: derived from baseUrl).
   * @param {string} [options.token] A bearer token (instead of the session cookie); such
   *   an instance keeps using tokens: login() replaces it with the new session's token,
   *   and the refreshed token the gateway hands back while the session is used replaces
   *   it too (`this.token`), so an active client outlives CouchDB's session timeout.
   * @param {number} [options.minBackoff] First reconnect delay in ms (default 250).
   * @param {number} [options.maxBackoff] Largest reconnect delay in ms (default 10000).
   * @param {number} [options.keepAliveMs] Session touch interval while subscribed (default 60000, 0 = off).
   * @param {number} [options.pingMs] Ping interval of each socket (default 30000, 0 = off): a
   *   socket that answers nothing until the next ping is given up and reconnected.
   * @param {(state: string, detail?: any) => void} [options.onStatus] Connection state:
   *   "connecting", "open", "closed", "unauthenticated" (the session ended: call login()
   *   to resume), "interrupted" / "live" (upstream feed).
   */
  constructor(options = {}) {
    const origin = options.baseUrl || (typeof location !== "undefined" ? location.origin : "");
    this.baseUrl = origin.replace(/\/$/, "");
    this.wsUrl = options.wsUrl || `${this.baseUrl.replace(/^http/, "ws")}${API}/changes`;
    this.token = options.token || null;
    this._tokenMode = !!options.token;
    this.minBackoff = options.minBackoff ?? 250;
    this.maxBackoff = options.maxBackoff ?? 10000;
    this.onStatus = options.onStatus || (() => {});
    this._subs = new Map(); // id -> subscription, over every lane
    this._lanes = []; // sockets; a subscription goes on the first without an equal one
    this._nextId = 1;
    this._waitingForLogin = false;
    // Bumped whenever the credentials change (login(), logout()): a session check sent
    // with older ones says nothing about the current ones (see _checkSession).
    this._credentials = 0;
    this._sessionCheck = null; // {credentials, answer}: the check in flight
    // CouchDB sessions expire unless used; while live changes run, touching the session
    // lets the gateway hand back CouchDB's refreshed cookie (or token), so reconnects keep
    // working.
    this.keepAliveMs = options.keepAliveMs ?? 60000;
    this._keepAlive = null;
    this.pingMs = options.pingMs ?? 30000;
    // Back online: sockets waiting out a backoff reconnect now (listened to while any
    // socket is wanted, see _place and close).
    this._online = () => {
      for (const lane of this._lanes) {
        if (!lane.timer) continue;
        clearTimeout(lane.timer);
        lane.timer = null;
        lane.resume();
      }
    };
    this._listening = false;
  }

  // -- REST --------------------------------------------------------------------

  /**
   * Any REST route of the gateway. Returns the parsed JSON answer (null when empty).
   * @param {string} method "GET", "PUT", "POST", "DELETE", ...
   * @param {string} path Below /api/v1, e.g. `/db/${encodeURIComponent(db)}/find`.
   * @param {any} [body] Sent as JSON (omit for none).
   * @param {object} [params] Query parameters: strings as they are, other values as JSON;
   *   key, keys, startkey, endkey, start_key, end_key, atts_since and open_revs (but "all")
   *   always as JSON.
   * @throws {WallabyError} the gateway's error; status 0 "network_error"; "bad_response"
   *   for an answer that is not JSON.
   */
  async request(method, path, body, params) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = this.token;
    const credentials = this._credentials;
    if (token) headers.Authorization = `Bearer ${token}`;
    let answer;
    let text;
    try {
      answer = await fetch(`${this.baseUrl}${API}${path}${query(params)}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "include",
      });
      // CouchDB refreshed the session this token is: the gateway hands the new token
      // back (as it hands a cookie client its cookie). The same session, not a new
      // login: the credentials generation stays. Unless login()/logout() came meanwhile.
      const refreshed = answer.headers.get(TOKEN_HEADER);
      if (refreshed && token && this.token === token && this._credentials === credentials) {
        this.token = refreshed;
      }
      text = await answer.text();
    } catch (error) {
      throw new WallabyError(0, { error: "network_error", reason: error.message });
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      const reason = `the answer (HTTP ${answer.status}) is not JSON`;
      throw new WallabyError(answer.status, { error: "bad_response", reason });
    }
    if (!answer.ok) throw new WallabyError(answer.status, data);
    return data;
  }

  /**
   * Log in; the gateway sets its HttpOnly session cookie (an instance made with a token
   * takes the new token instead). Subscriptions waiting after "unauthenticated" resume.
   * @returns {Promise<{ok: boolean, name: string, roles: string[], token: string}>}
   */
  async login(name, password) {
    const result = await this.request("POST", "/session", { name, password });
    if (this._tokenMode) this.token = result.token;
    this._credentials += 1;
    this._waitingForLogin = false;
    // Sockets carry the credentials they were opened with: every one is opened again
    // with the new ones (maybe another user's), each subscription from its last seq.
    for (const sub of this._subs.values()) {
      clearTimeout(sub.retryTimer);
      sub.checking = false;
      sub.authRetried = false;
    }
    for (const lane of this._lanes) {
      lane.close(false, 4000, "new login");
      lane.resume();
    }
    return result;
  }

  /** Log out (clears the cookie and the token) and stop live changes. */
  /**
   * End the session: the gateway clears its cookie, then this client drops its token and
   * every subscription. When the gateway cannot be reached (or fails) this throws and
   * changes nothing: the HttpOnly cookie is still set, so the page is still signed in,
   * and its subscriptions go on. A 401 (the session was over already) counts as done.
   */
  async logout() {
    let answer = null;
    try {
      answer = await this.request("DELETE", "/session");
    } catch (error) {
      if (!(error instanceof WallabyError && error.status === 401)) throw error;
    }
    this.close();
    this.token = null;
    this._credentials += 1;
    return answer;
  }

  /** The current user ({name, roles}); throws WallabyError 401 when logged out. */
  session() {
    return this.request("GET", "/session");
  }

  /** A document; params e.g. {rev}, {revs_info: true}, {open_revs: "all"}. */
  get(db, id, params) {
    return this.request("GET", `/db/${enc(db)}/docs/${enc(id)}`, undefined, params);
  }

  /**
   * Create or update a document; it needs a non-empty string _id (use post() to have one
   * generated, else this throws TypeError) and _rev for updates. Sets doc._rev.
   * @returns {Promise<{ok: boolean, id: string, rev: string}>}
   */
  async put(db, doc) {
    if (!doc || typeof doc._id !== "string" || !doc._id) {
      throw new TypeError("put() needs a document with a non-empty string _id (post() generates one)");
    }
    const result = await this.request("PUT", `/db/${enc(db)}/docs/${enc(doc._id)}`, doc);
    doc._rev = result.rev;
    return result;
  }

  /** Create a document with a server-generated id. Returns {ok, id, rev}. */
  post(db, doc) {
    return this.request("POST", `/db/${enc(db)}/docs`, doc);
  }

  /** Delete a document's revision `rev`. Returns {ok, id, rev}. */
  delete(db, id, rev) {
    return this.request("DELETE", `/db/${enc(db)}/docs/${enc(id)}`, undefined, { rev });
  }

  /** All documents; params e.g. {include_docs: true, startkey: "a", endkey: "b", keys: [...]}. */
  allDocs(db, params = {}) {
    const { keys, ...rest } = params;
    // A long list of keys goes in the body: in the query it would outgrow the request
    // line a server reads (the gateway's answers 414 beyond 16 KiB). A short one stays a
    // GET, which the browser can revalidate.
    if (keys !== undefined && enc(JSON.stringify(keys)).length > KEYS_IN_QUERY) {
      return this.request("POST", `/db/${enc(db)}/all_docs`, { keys }, rest);
    }
    return this.request("GET", `/db/${enc(db)}/all_docs`, undefined, params);
  }

  // -- live changes ----------------------------------------------------------------

  /**
   * Follow a database's changes.
   * @param {string} db
   * @param {object} [options] since ("now", 0 or a seq), include_docs, filter, doc_ids,
   *   selector, view, query; onError(WallabyError) when the subscription ends with an error.
   * @param {(change: object) => void} onChange Called once per change, in order.
   * @returns {{unsubscribe: () => void, id: string, readonly lastSeq: any}}
   */
  subscribe(db, options = {}, onChange = () => {}) {
    const { onError, since, ...params } = options;
    const sub = {
      id: `s${this._nextId++}`,
      db,
      params,
      key: feedKey(db, params),
      since: since === undefined ? "now" : since,
      lastSeq: null,
      feed: null,
      lane: null,
      checking: false, // refused with 401/403 and not resent yet (see _refused)
      authRetried: false,
      retryTimer: null,
      onChange,
      onError: onError || ((error) => console.warn("wallaby subscription", error)),
    };
    this._subs.set(sub.id, sub);
    this._place(sub, null);
    return {
      id: sub.id,
      get lastSeq() {
        return sub.lastSeq;
      },
      unsubscribe: () => {
        if (!this._subs.delete(sub.id)) return;
        clearTimeout(sub.retryTimer);
        sub.lane.remove(sub, { tellServer: !sub.checking });
        if (!this._subs.size) this._stopKeepAlive();
      },
    };
  }

  /** Close every WebSocket and stop reconnecting (subscriptions are dropped). */
  close() {
    this._waitingForLogin = false;
    this._stopKeepAlive();
    if (this._listening) window.removeEventListener("online", this._online);
    this._listening = false;
    this._subs.clear();
    const lanes = this._lanes;
    this._lanes = [];
    for (const lane of lanes) lane.close(true);
  }

  /** Put a subscription on the first socket after `after` without an equal one. */
  _place(sub, after) {
    const start = after ? this._lanes.indexOf(after) + 1 : 0;
    let lane = this._lanes.slice(start).find((candidate) => !candidate.has(sub.key));
    if (!lane) {
      lane = new Lane(this);
      this._lanes.push(lane);
    }
    if (!this._listening && typeof window !== "undefined") {
      window.addEventListener("online", this._online);
      this._listening = true;
    }
    lane.add(sub);
  }

  _dropLane(lane) {
    this._lanes = this._lanes.filter((other) => other !== lane);
    lane.close(true);
  }

  /** The gateway ended a subscription with an error. */
  async _refused(sub, message) {
    const error = new WallabyError(message.status, message);
    if (message.status === 401 || message.status === 403) {
      // Forbidden, or not logged in any more? Only the session can tell. The other
      // subscriptions on the socket go on meanwhile.
      sub.checking = true;
      const credentials = this._credentials;
      const state = await this._checkSession();
      if (!this._subs.has(sub.id)) return; // unsubscribed meanwhile
      // A login() meanwhile already sent it again with the new credentials.
      if (credentials !== this._credentials) return;
      if (state === "invalid") {
        sub.checking = false; // kept: resubscribed after the next login()
        return;
      }
      if (!sub.authRetried) {
        sub.authRetried = true;
        sub.retryTimer = setTimeout(() => {
          sub.checking = false;
          if (this._subs.has(sub.id) && sub.lane.isOpen) sub.lane.send(sub);
        }, AUTH_RETRY_MS);
        return;
      }
      // Refused twice while logged in: this database is not readable for this user.
    }
    this._end(sub, error);
  }

  /** End a subscription with an error (onError). */
  _end(sub, error) {
    if (!this._subs.delete(sub.id)) return;
    clearTimeout(sub.retryTimer);
    sub.lane.remove(sub);
    if (!this._subs.size) this._stopKeepAlive();
    try {
      sub.onError(error);
    } catch (failure) {
      console.error("wallaby onError", failure);
    }
  }

  /**
   * "valid", "invalid" (then the client waits for login()) or "unknown" (no answer, or
   * the credentials changed while it was asked: a late 401 about the old ones must not
   * close the sockets login() just opened with the new ones).
   */
  _checkSession() {
    const credentials = this._credentials;
    if (this._sessionCheck?.credentials === credentials) return this._sessionCheck.answer;
    const token = this.token;
    const answer = this.session().then(
      () => (credentials === this._credentials ? "valid" : "unknown"),
      (error) => {
        if (credentials !== this._credentials) return "unknown";
        // A 401 about a token replaced meanwhile by its refresh says nothing of the new one.
        if (token !== this.token) return "unknown";
        if (!(error instanceof WallabyError && error.status === 401)) return "unknown";
        this._unauthenticated();
        return "invalid";
      },
    ).finally(() => {
      if (this._sessionCheck?.answer === answer) this._sessionCheck = null;
    });
    this._sessionCheck = { credentials, answer };
    return answer;
  }

  _unauthenticated() {
    if (this._waitingForLogin || !this._subs.size) return;
    this._waitingForLogin = true; // subscriptions resume after the next login()
    this._stopKeepAlive();
    for (const lane of this._lanes) lane.close(false, 4000, "logged out");
    this._status("unauthenticated");
  }

  /** Tell onStatus; a throwing callback must not stop the client (as for onChange). */
  _status(state, detail) {
    try {
      this.onStatus(state, detail);
    } catch (error) {
      console.error("wallaby onStatus", error);
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
}

export default Wallaby;
