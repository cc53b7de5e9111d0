"""A recording stand-in for the authentication handlers of Apache CouchDB 3.x.

Why: pouchdb-server (the suite's usual backend) has neither CouchDB's proxy nor its JWT
authentication handler, so the gateway's ``proxy`` and ``jwt`` auth modes cannot be driven
end to end against it. What: a small threaded HTTP server on 127.0.0.1 that answers only
the endpoints the gateway uses (``/``, ``/_up``, ``GET``/``POST /_session``, ``/{db}``,
``/{db}/{doc}``, ``/{db}/_changes`` normal and continuous) and decides who a request is
the way the handlers of CouchDB 3.x's ``src/couch/src/couch_httpd_auth.erl`` do, tried in
the order deploy/couchdb_setup.py configures them (JWT, cookie, proxy, Basic; a mode
enables only its own of JWT and proxy, the stand-in always has both):

* JWT (``jwt_authentication_handler``): HS256 only, ``exp`` and ``sub`` required, roles
  from ``_couchdb.roles``; a bad token is refused (401).
* cookie (``cookie_authentication_handler``): a session is valid for
  ``session_timeout`` seconds (``[chttpd_auth] timeout``) and, once older than 10 % of it,
  refreshed with a ``Set-Cookie`` on any answer it authenticated
  (``cookie_auth_header``); an expired or unknown cookie is anonymous, not refused. Roles
  are read from the user's current document on every request.
* proxy (``proxy_authentication_handler``): ``X-Auth-CouchDB-UserName``/``-Roles``,
  token = hex HMAC-SHA256 of the name with ``secret`` (as CouchDB 3.3.2 and later with
  the default ``hash_algorithms``; 3.0 to 3.3.1 check HMAC-SHA1); ``_users`` is not
  consulted.
* Basic (``default_authentication_handler``): the admin or a user's password.

Deliberately simplified: no ``_users`` database (``users`` is a dict), a cookie value is
base64url of the name, the issue time and a random part kept in a table (CouchDB's third
part is an HMAC; neither has a ``.``), security objects hold only
members, and ``_changes`` knows ``since``, ``feed=continuous`` and ``heartbeat``. Every
request's headers are recorded (``requests``), so a test sees exactly what the gateway
sends upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class CouchAuthStandIn:
    """State of the stand-in; mutate it from the test (under ``lock``)."""

    admin: tuple[str, str] = ("admin", "adminpw")
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> password, roles
    sessions: dict[str, tuple[str, float]] = field(default_factory=dict)  # value -> name, issued
    #: ``[chttpd_auth] timeout``: a cookie older than this is anonymous; one older than
    #: 10 % of it is refreshed (``Set-Cookie``) on any request it authenticates.
    session_timeout: float = 600.0
    secret: str = "proxy-secret"
    jwt_key: bytes = b"jwt-key"
    security: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # db -> members
    docs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    changes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None
    stopping: bool = False

    # -- set-up --------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{self.admin[0]}:{self.admin[1]}@127.0.0.1:{self.server.server_port}"

    def add_user(self, name: str, password: str, roles: list[str]) -> None:
        with self.lock:
            self.users[name] = {"password": password, "roles": list(roles)}

    def add_db(self, db: str, names: list[str] = (), roles: list[str] = ()) -> None:  # type: ignore[assignment]
        with self.lock:
            self.security[db] = {"names": list(names), "roles": list(roles)}
            self.docs[db] = {}
            self.changes[db] = []

    def put_doc(self, db: str, doc_id: str, body: dict[str, Any]) -> None:
        with self.lock:
            rev = f"{len(self.changes[db]) + 1}-{secrets.token_hex(16)}"
            self.docs[db][doc_id] = {"_id": doc_id, "_rev": rev, **body}
            self.changes[db].append({"seq": f"{len(self.changes[db]) + 1}-x", "id": doc_id,
                                     "changes": [{"rev": rev}]})
            self.lock.notify_all()

    def delete_user(self, name: str) -> None:
        """As deleting ``org.couchdb.user:<name>``: its cookies no longer verify."""
        with self.lock:
            self.users.pop(name, None)

    def recorded(self, path_prefix: str = "") -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    # -- CouchDB's authentication handlers -----------------------------------------

    def user_ctx(self, headers: Any) -> tuple[str | None, list[str], str | None]:
        """(name, roles, error) as CouchDB's handler chain would decide.

        error is "unauthorized" when a handler throws (bad JWT, wrong Basic password).
        """
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            claims = self._jwt(authorization[len("Bearer "):])
            if claims is None:
                return None, [], "unauthorized"
            return claims["sub"], list(claims.get("_couchdb.roles", [])), None
        cookie = _cookie(headers.get("Cookie") or "", "AuthSession")
        if cookie:
            name, issued = self.sessions.get(cookie, (None, 0.0))
            fresh = time.monotonic() < issued + self.session_timeout
            if name is not None and name in self.users and fresh:
                return name, list(self.users[name]["roles"]), None
        proxy_name = headers.get("X-Auth-CouchDB-UserName")
        if proxy_name is not None:
            expected = hmac.new(self.secret.encode(), proxy_name.encode("latin-1"),
                                hashlib.sha256).hexdigest()
            if headers.get("X-Auth-CouchDB-Token") == expected:
                raw_roles = headers.get("X-Auth-CouchDB-Roles") or ""
                return proxy_name, [r for r in raw_roles.split(",") if r], None
        if authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if (name, password) == self.admin:
                return name, ["_admin"], None
            user = self.users.get(name)
            if user is None or user["password"] != password:
                return None, [], "unauthorized"
            return name, list(user["roles"]), None
        return None, [], None

    def _jwt(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            head = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            return None
        if head.get("alg") != "HS256":
            return None
        signature = hmac.new(self.jwt_key, f"{parts[0]}.{parts[1]}".encode(),
                             hashlib.sha256).digest()
        if not hmac.compare_digest(_unb64(parts[2]), signature):
            return None
        if "exp" not in claims or claims["exp"] <= time.time() or "sub" not in claims:
            return None
        return claims

    def login(self, name: str, password: str) -> str | None:
        user = self.users.get(name)
        if user is None or user["password"] != password:
            return None
        token = base64.urlsafe_b64encode(
            f"{name}:{int(time.time()):X}:{secrets.token_hex(8)}".encode()).decode().rstrip("=")
        self.sessions[token] = (name, time.monotonic())
        return token

    def refreshed_cookie(self, headers: Any) -> str | None:
        """CouchDB's ``cookie_auth_header``: a new cookie past 10 % of the timeout."""
        cookie = _cookie(headers.get("Cookie") or "", "AuthSession")
        if not cookie or cookie not in self.sessions:
            return None
        name, issued = self.sessions[cookie]
        age = time.monotonic() - issued
        if name not in self.users or age >= self.session_timeout:
            return None
        if age < 0.1 * self.session_timeout:
            return None
        return self.login(name, self.users[name]["password"])

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> CouchAuthStandIn:
        fake = self

        class Handler(_Handler):
            couch = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def hs256(claims: dict[str, Any], key: bytes, alg: str = "HS256") -> str:
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = part(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class _Handler(BaseHTTPRequestHandler):
    couch: CouchAuthStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "must-revalidate")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if status < 400 and not (extra and "Set-Cookie" in extra):
            with self.couch.lock:
                renewed = self.couch.refreshed_cookie(self.headers)
            if renewed:
                self.send_header("Set-Cookie",
                                 f"AuthSession={renewed}; Version=1; Path=/; HttpOnly")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _record(self) -> None:
        with self.couch.lock:
            self.couch.requests.append(Recorded(self.command, self.path,
                                                list(self.headers.items())))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_session":
            if "json" in (self.headers.get("Content-Type") or ""):
                form = json.loads(raw or b"{}")
            else:
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            with self.couch.lock:
                token = self.couch.login(form.get("name", ""), form.get("password", ""))
                roles = self.couch.users.get(form.get("name", ""), {}).get("roles", [])
            if token is None:
                self._send(401, {"error": "unauthorized",
                                 "reason": "Name or password is incorrect."})
                return
            self._send(200, {"ok": True, "name": form["name"], "roles": roles},
                       {"Set-Cookie": f"AuthSession={token}; Version=1; Path=/; HttpOnly"})
            return
        self._send(404, {"error": "not_found", "reason": "missing"})

    def do_GET(self) -> None:
        self._record()
        split = urllib.parse.urlsplit(self.path)
        segments = [urllib.parse.unquote(s) for s in split.path.split("/") if s]
        query = {k: v[0] for k, v in urllib.parse.parse_qs(split.query).items()}
        couch = self.couch
        with couch.lock:
            name, roles, error = couch.user_ctx(self.headers)
        if error:
            self._send(401, {"error": "unauthorized", "reason": "bad credentials"})
            return
        if not segments:
            self._send(200, {"couchdb": "Welcome", "version": "3.4.2",
                             "vendor": {"name": "The Apache Software Foundation"}})
            return
        if segments == ["_up"]:
            self._send(200, {"status": "ok", "seeds": {}})
            return
        if segments == ["_session"]:
            self._send(200, {"ok": True, "userCtx": {"name": name, "roles": roles},
                             "info": {"authentication_handlers": ["cookie", "proxy", "default"]}})
            return
        db = segments[0]
        with couch.lock:
            security = couch.security.get(db)
        if security is None:
            self._send(404, {"error": "not_found", "reason": "Database does not exist."})
            return
        allowed = "_admin" in roles or (name is not None and (
            name in security["names"] or any(r in security["roles"] for r in roles)))
        if not allowed:
            if name is None:
                self._send(401, {"error": "unauthorized",
                                 "reason": "You are not authorized to access this db."})
            else:
                self._send(403, {"error": "forbidden",
                                 "reason": "You are not allowed to access this db."})
            return
        if len(segments) == 1:
            with couch.lock:
                seq = len(couch.changes[db])
            self._send(200, {"db_name": db, "update_seq": f"{seq}-x", "doc_count": seq,
                             "instance_start_time": "0", "purge_seq": "0-x",
                             "sizes": {"active": 0, "external": 0, "file": 0},
                             "props": {}, "doc_del_count": 0, "compact_running": False,
                             "disk_format_version": 8, "cluster": {"q": 2, "n": 1, "w": 1, "r": 1}})
            return
        if segments[1] == "_changes":
            self._changes(db, query)
            return
        with couch.lock:
            doc = couch.docs[db].get(segments[1])
        if doc is None:
            self._send(404, {"error": "not_found", "reason": "missing"})
            return
        self._send(200, doc, {"ETag": f'"{doc["_rev"]}"'})

    def _changes(self, db: str, query: dict[str, str]) -> None:
        couch = self.couch
        since = query.get("since", "0")
        with couch.lock:
            rows = list(couch.changes[db])
        start = len(rows) if since == "now" else int(str(since).split("-")[0] or 0)
        if query.get("feed") != "continuous":
            results = rows[start:]
            self._send(200, {"results": results, "last_seq": f"{len(rows)}-x", "pending": 0})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        heartbeat = max(0.05, int(query.get("heartbeat", "1000")) / 1000)

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        sent = start
        try:
            while True:
                with couch.lock:
                    if couch.stopping:
                        return
                    if len(couch.changes[db]) <= sent:
                        couch.lock.wait(heartbeat)
                    pending = couch.changes[db][sent:]
                if pending:
                    for row in pending:
                        chunk(json.dumps(row).encode() + b"\n")
                    sent += len(pending)
                else:
                    chunk(b"\n")
        except OSError:
            return
