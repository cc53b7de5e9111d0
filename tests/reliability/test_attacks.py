"""Attacks: each attempt must fail safely (refused with a 4xx envelope, nothing leaked,
the gateway healthy afterwards), and every attempt is counted into ``results.jsonl``.

Categories: another user's database; system databases and server config through encoded
paths, ``..``, doubled slashes and crafted ids; forged, tampered/expired and ``alg: none``
tokens (REST and WebSocket handshake); CRLF and header injection; oversize headers and
bodies; a flood of half-open and slow connections; a flood of WebSocket subscriptions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import deferToThread

from gateway.couch import CouchServer
from tests.conftest import CouchBackend
from tests.reliability.conftest import (
    Couch,
    GatewayProcess,
    basic_header,
    http,
    record,
    spawn_gateway,
)
from tests.reliability.wsclient import open_socket
from tests.rest.conftest import ApiClient, Reply
from tests.ws.conftest import WsServer, gateway_with_changes, sleep, ws_settings

LEAKS = ("org.couchdb.user", "couch_httpd_auth", '"vendor"', "userCtx", '"db_name":"_',
         "password_scheme", "derived_key", "chttpd", "all_nodes", "X-Evil", "evil=1")


@dataclass
class Tally:
    """Attempts per category and how many failed safely (with the first few failures)."""

    suite: str = "attacks"
    attempts: dict[str, int] = field(default_factory=dict)
    safe: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, category: str, ok: bool, detail: str) -> None:
        self.attempts[category] = self.attempts.get(category, 0) + 1
        if ok:
            self.safe[category] = self.safe.get(category, 0) + 1
        else:
            self.problems.append(f"{category}: {detail}")

    def check_reply(self, category: str, what: str, reply: Reply, marker: str | None = None,
                    allowed: tuple[int, ...] = (400, 401, 403, 404, 405, 413, 431)) -> None:
        body = reply.body.decode("utf-8", "replace")
        leaked = [leak for leak in LEAKS if leak in body]
        if marker and marker in body:
            leaked.append(marker)
        headers = {k.decode().lower() for k, _ in reply.headers.getAllRawHeaders()}
        injected = {"x-evil", "x-injected"} & headers
        ok = reply.status in allowed and not leaked and not injected
        self.count(category, ok, f"{what} -> {reply.status} leaked={leaked} "
                                  f"injected={injected} {body[:150]}")

    def save(self, name: str, **extra: Any) -> None:
        for category, attempts in self.attempts.items():
            record(self.suite, f"{name}:{category}", attempts=attempts,
                   failed_safely=self.safe.get(category, 0),
                   passed=self.safe.get(category, 0) == attempts, **extra)

    def assert_all_safe(self) -> None:
        assert not self.problems, f"{len(self.problems)} unsafe outcomes:\n" + "\n".join(self.problems[:20])


def pct(text: str, upper: bool = True) -> str:
    return "".join(f"%{ord(c):02X}" if upper else f"%{ord(c):02x}" for c in text)


def encodings(segment: str) -> Iterator[str]:
    """The ways a path segment can be smuggled."""
    yield segment
    yield pct(segment)
    yield pct(segment, upper=False)
    yield pct(segment).replace("%", "%25")          # double-encoded
    yield segment.replace("_", "%5F").replace("/", "%2F")
    yield "./" + segment
    yield "%2E%2F" + segment.replace("/", "%2F")
    yield segment + "%00"
    yield segment + "%0D%0AX-Evil:%201"
    yield segment.upper()


SYSTEM_TARGETS = ["_users", "_replicator", "_global_changes", "_config", "_node/_local/_config",
                  "_node/nonode@nohost/_config", "_all_dbs", "_session", "_utils",
                  "_membership", "_active_tasks", "_users/org.couchdb.user:admin"]


def system_paths(own: str) -> Iterator[str]:
    for target in SYSTEM_TARGETS:
        for enc in encodings(target):
            yield f"/api/v1/db/{enc}"
            yield f"/api/v1/db/{enc}/docs/x"
            yield f"/api/v1/db/{enc}/all_docs"
            yield f"/api/v1/db/{own}/docs/..%2F..%2F{enc.replace('/', '%2F')}"
            yield f"/api/v1/db/{own}/../../{enc}"
            yield f"/api/v1/db/{own}//{enc}"
            yield f"/api/v1/db/{own}/docs/x/attachments/..%2F..%2F..%2F{enc.replace('/', '%2F')}"
            yield f"/api/v1/db/{own}/views/..%2F..%2F{enc.replace('/', '%2F')}/x"
            yield f"//{enc}"
            yield f"/{enc}"
            yield f"/api/v1/{enc}"
            yield f"/api/v1/db/{own}%2F..%2F{enc.replace('/', '%2F')}"


CRAFTED_IDS = ["_all_docs", "_changes", "_security", "_bulk_docs", "_find", "_index",
               "_design%2F..%2F..%2F_users", "_local%2F..%2F..%2F_config", "..", "%2E%2E", "%2e",
               "_design", "_design%2F", "_local", "%5Fall_docs", "%255Fall_docs",
               "a%0d%0aX-Evil:%201", "a%0AX-Evil:1", "a%00b", "%C0%AE%C0%AE", "%E2%80%AE",
               "_purge", "_revs_limit", "_compact", "_view_cleanup", "_ensure_full_commit"]


async def test_paths_to_system_databases_and_config_fail_safely(
    start_gateway: Any, couch_backend: CouchBackend, scenario_db: tuple[str, str, str],
) -> None:
    gateway = await start_gateway()
    own, member, password = scenario_db
    admin_client: ApiClient = gateway.client.with_headers(
        basic_header(couch_backend.admin_username, couch_backend.admin_password))
    member_client: ApiClient = gateway.client.with_headers(basic_header(member, password))
    tally = Tally()
    for label, client in (("as_server_admin", admin_client), ("as_member", member_client)):
        for path in system_paths(own):
            reply = await client.get(path)
            tally.check_reply(f"system_db_and_config_{label}", path, reply)
        for doc_id in CRAFTED_IDS:
            for method in ("GET", "PUT", "DELETE"):
                kwargs: dict[str, Any] = {"json_body": {"x": 1}} if method == "PUT" else {}
                reply = await client.request(method, f"/api/v1/db/{own}/docs/{doc_id}", **kwargs)
                # a crafted id is refused (400/403), is an absent document (404), or is an
                # ordinary document of the caller's own database whose id is the segment
                # decoded once (``%255F`` is the id ``%5F…``, never ``_…``)
                allowed: tuple[int, ...] = (400, 403, 404, 405, 409)
                if reply.status in (200, 201):
                    created = str(reply.json.get("id") or reply.json.get("_id") or "")
                    if created and not created.startswith("_"):
                        allowed = (200, 201)
                tally.check_reply(f"crafted_ids_{label}", f"{method} {doc_id}", reply,
                                  allowed=allowed)
    assert (await gateway.client.get("/health")).status == 200
    tally.save("paths")
    tally.assert_all_safe()


@pytest.fixture
def scenario_db(couch: Couch) -> Iterator[tuple[str, str, str]]:
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    yield db, user, password
    couch.delete_db(db)


POUCHDB_UNGUARDED = ("/find", "/bulk_get", "/indexes")


def cross_user_requests(victim_db: str, own: str) -> list[tuple[str, str, Any]]:
    return [
        ("POST", f"/api/v1/db/{victim_db}/find", {"selector": {}}),
        ("POST", f"/api/v1/db/{victim_db}/bulk_get", {"docs": [{"id": "secret"}]}),
        ("POST", f"/api/v1/db/{own}/bulk_get", {"docs": [{"id": f"../{victim_db}/secret"}]}),
        ("POST", f"/api/v1/db/{victim_db}/all_docs", {"keys": ["secret"]}),
        ("PUT", f"/api/v1/db/{victim_db}/docs/planted", {"x": 1}),
        ("DELETE", f"/api/v1/db/{victim_db}/docs/secret?rev=1-x", None),
        ("POST", f"/api/v1/db/{victim_db}/bulk_docs", {"docs": [{"_id": "planted"}]}),
        ("POST", f"/api/v1/db/{victim_db}/indexes", {"index": {"fields": ["marker"]}}),
    ]


async def test_another_users_database_is_out_of_reach(
    start_gateway: Any, couch: Couch, scenario_db: tuple[str, str, str],
    couch_backend: CouchBackend,
) -> None:
    gateway = await start_gateway()
    victim_db, _victim, _pw = scenario_db
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    assert couch.call("PUT", f"/{victim_db}/secret", {"marker": marker}).status == 201
    outsider, outsider_pw = couch.new_user()
    own = couch.new_db(members=[outsider])
    client = gateway.client.with_headers(basic_header(outsider, outsider_pw))
    tally = Tally()
    try:
        paths = []
        for enc in (victim_db, pct(victim_db), pct(victim_db, upper=False),
                    pct(victim_db).replace("%", "%25"), victim_db.upper(), victim_db + "%2F",
                    f"{own}%2F..%2F{victim_db}", f"{own}/../{victim_db}", f"{own}//{victim_db}",
                    f"./{victim_db}", f"{victim_db}%00"):
            paths += [f"/api/v1/db/{enc}", f"/api/v1/db/{enc}/docs/secret",
                      f"/api/v1/db/{enc}/all_docs?include_docs=true",
                      f"/api/v1/db/{enc}/docs/secret/attachments/x"]
        paths += [f"/api/v1/db/{own}/docs/..%2F{victim_db}%2Fsecret",
                  f"/api/v1/db/{own}/docs/..%2F..%2F{victim_db}%2Fsecret",
                  f"/api/v1/db/{own}/views/..%2F..%2F{victim_db}%2Fsecret/x",
                  f"/api/v1/db/{own}/../{victim_db}/docs/secret",
                  f"/api/v1/db/{own}/docs/secret/../../../{victim_db}/docs/secret"]
        for path in paths:
            tally.check_reply("other_users_db", path, await client.get(path), marker)
        for method, path, body in cross_user_requests(victim_db, own):
            kwargs: dict[str, Any] = {"json_body": body} if body is not None else {}
            reply = await client.request(method, path, **kwargs)
            allowed = (400, 401, 403, 404, 405, 409)
            if method == "POST" and path.startswith(f"/api/v1/db/{own}/bulk_get"):
                allowed = (200, 400, 404)  # an absent document of the caller's own database
            if (path.endswith("/bulk_docs") and reply.status == 201
                    and all("error" in row for row in reply.json)):
                allowed = (201,)  # CouchDB refuses per document: every row is an error
            tally.check_reply("other_users_db", f"{method} {path}", reply, marker, allowed)
        assert couch.call("GET", f"/{victim_db}/planted").status == 404
        tally.save("cross_user")
        tally.assert_all_safe()
    finally:
        couch.delete_db(own)


async def test_unguarded_queries_on_another_users_database(
    start_gateway: Any, couch: Couch, scenario_db: tuple[str, str, str],
    couch_backend: CouchBackend,
) -> None:
    """``/find``, ``/bulk_get`` and ``POST /indexes`` on a database the caller may not read.

    pouchdb-server does not guard these with ``_security``; the gateway checks read access
    itself since f3d5076 (before, any authenticated user read any database through them)."""
    gateway = await start_gateway()
    victim_db, _victim, _pw = scenario_db
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    assert couch.call("PUT", f"/{victim_db}/secret", {"marker": marker}).status == 201
    outsider, outsider_pw = couch.new_user()
    client = gateway.client.with_headers(basic_header(outsider, outsider_pw))
    tally = Tally()
    for method, path, body in cross_user_requests(victim_db, "unused"):
        if path.endswith(POUCHDB_UNGUARDED) and victim_db in path:
            reply = await client.request(method, path, json_body=body)
            tally.check_reply("other_users_db_queries", f"{method} {path}", reply, marker,
                              (400, 401, 403, 404))
    tally.save("cross_user_queries", backend="pouchdb" if couch_backend.is_pouchdb else "couchdb")
    tally.assert_all_safe()


def _jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()),
                     b64(signature)])


def _tampered(token: str, **changes: Any) -> list[str]:
    """Variants of a real CouchDB AuthSession value: other user, old timestamp, bad HMAC."""
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
    except ValueError:
        return []
    parts = raw.split(b":")
    if len(parts) < 3:
        return []
    name, stamp, mac = parts[0], parts[1], b":".join(parts[2:])
    variants = [
        name + b":" + b"5F5E1000" + b":" + mac,                 # expired (2020) with the old HMAC
        name + b":" + stamp + b":" + bytes(reversed(mac)),      # forged HMAC
        changes.get("other", b"admin") + b":" + stamp + b":" + mac,  # someone else's name
        name + b":" + format(int(time.time()) + 10**6, "X").encode() + b":" + mac,  # far future
    ]
    return [base64.urlsafe_b64encode(v).rstrip(b"=").decode() for v in variants]


async def test_forged_expired_and_alg_none_tokens_are_refused(
    start_gateway: Any, couch: Couch, scenario_db: tuple[str, str, str], reactor: Any,
    couch_backend: CouchBackend, admin: CouchServer,
) -> None:
    db, member, password = scenario_db
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    couch.call("PUT", f"/{db}/secret", {"marker": marker})
    forward = await start_gateway()
    jwt_mode = await start_gateway(auth_mode="jwt")
    login = await forward.client.post("/api/v1/session",
                                      json_body={"name": member, "password": password})
    assert login.status == 200
    token = login.json["token"]
    now = int(time.time())
    claims = {"sub": member, "_couchdb.roles": ["_admin"], "exp": now + 3600}
    tokens = {
        "random_bearer": uuid.uuid4().hex,
        "empty_looking": "null",
        "alg_none_jwt": _jwt({"alg": "none", "typ": "JWT"}, claims),
        "alg_None_jwt": _jwt({"alg": "None"}, claims),
        "hs256_guessed_key": _jwt({"alg": "HS256", "typ": "JWT"}, claims, b"\x00" * 32),
        "expired_jwt": _jwt({"alg": "HS256"}, {**claims, "exp": now - 3600}, b"x" * 32),
        "admin_name_alg_none": _jwt({"alg": "none"}, {"sub": "admin", "_couchdb.roles": ["_admin"]}),
    }
    for n, variant in enumerate(_tampered(token)):
        tokens[f"tampered_authsession_{n}"] = variant
    tally = Tally()
    paths = [f"/api/v1/db/{db}/docs/secret", "/api/v1/session", f"/api/v1/db/{db}/all_docs"]
    for label, value in tokens.items():
        for gateway_label, gateway in (("forward", forward), ("jwt", jwt_mode)):
            for path in paths:
                for how, headers in (("bearer", {"Authorization": f"Bearer {value}"}),
                                     ("cookie", {"Cookie": f"wallaby_session={value}"})):
                    reply = await gateway.client.get(path, headers=headers)
                    ok_status = (401, 403)
                    if gateway_label == "jwt" and path == "/api/v1/session" and how == "bearer":
                        # anonymous session info (CouchDB's answer to an unverified JWT): no name
                        ok_status = (200, 401, 403)
                        if reply.status == 200:
                            assert not reply.json.get("name"), reply.json
                    tally.check_reply("forged_tokens_rest", f"{label} {gateway_label} {how} {path}",
                                      reply, marker, ok_status)
    for wrong in ("", "x", password + "x", password.upper()):
        reply = await forward.client.get(f"/api/v1/db/{db}/docs/secret",
                                         headers=basic_header(member, wrong))
        tally.check_reply("wrong_password", "basic", reply, marker, (401,))
    # the WebSocket handshake (of a gateway with the endpoint mounted, as the entry point
    # builds it) refuses the same tokens
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as mounted:
        port = mounted.port
        for label, value in tokens.items():
            for url_suffix, headers in ((f"?token={value}", {}),
                                        ("", {"Authorization": f"Bearer {value}"})):
                try:
                    await open_socket(reactor, port,
                                      f"ws://127.0.0.1:{port}/api/v1/changes{url_suffix}", headers)
                    tally.count("forged_tokens_ws", False, f"{label}: handshake accepted")
                except Exception as exc:
                    # Refused as unauthenticated, nothing else: a 404, a 500 or a dropped
                    # connection would also fail the handshake, and proves nothing.
                    tally.count("forged_tokens_ws", "upgrade failed [401]" in str(exc),
                                f"{label}: {exc}")
    assert (await forward.client.get("/health")).status == 200
    tally.save("tokens")
    tally.assert_all_safe()


# --------------------------------------------------------------------------- raw HTTP

def raw_request(port: int, data: bytes, timeout: float = 10.0, read: bool = True) -> bytes:
    """Send raw bytes, return whatever comes back before the peer closes or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        if read:
            sock.settimeout(timeout)
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                        break
            except (TimeoutError, OSError):
                pass
        return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return head.lower().find(b"transfer-encoding: chunked") < 0 or body.endswith(b"0\r\n\r\n")


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0  # closed without an answer


async def test_crlf_header_injection_and_oversize_requests_fail_safely(
    start_gateway: Any, scenario_db: tuple[str, str, str],
) -> None:
    gateway = await start_gateway(max_body_bytes=64 * 1024, max_attachment_bytes=256 * 1024)
    db, member, password = scenario_db
    port = gateway.service.port
    auth = basic_header(member, password)["Authorization"].encode()
    tally = Tally()

    def head(path: bytes, extra: bytes = b"", method: bytes = b"GET", body: bytes = b"") -> bytes:
        length = b"Content-Length: %d\r\n" % len(body) if body or method in (b"PUT", b"POST") else b""
        return (method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + auth
                + b"\r\nConnection: close\r\n" + length + extra + b"\r\n" + body)

    def injected(answer: bytes) -> bool:
        headers = answer.partition(b"\r\n\r\n")[0].lower()
        return b"x-evil" in headers or b"evil=1" in headers

    injections = [
        head(b"/health", b"X-Request-Id: abc\r\n X-Evil: 1\r\n"),                # obs-fold
        head(b"/health", b"X-Request-Id: abc%0d%0aX-Evil:%201\r\n"),
        head(b"/health", b"X-Request-Id: abc\rX-Evil: 1\r\n"),                  # bare CR
        head(b"/health", b"X-Request-Id: abc\nSet-Cookie: evil=1\r\n"),          # bare LF
        head(b"/api/v1/db/" + db.encode() + b"/docs/a%0d%0aX-Evil:%201"),
        head(b"/api/v1/db/" + db.encode() + b"/docs/a\r\nX-Evil: 1"),
        head(b"/api/v1/db/" + db.encode() + b"%0d%0aX-Evil:%201/docs/a"),
        head(b"/api/v1/db/" + db.encode() + b"/docs/a/attachments/n%0d%0aX-Evil:%201"),
        head(b"/api/v1/db/" + db.encode() + b"/docs/att/attachments/f", method=b"PUT",
             extra=b"Content-Type: text/plain\r\n\tX-Evil: 1\r\n", body=b"hello"),
        head(b"/api/v1/session", method=b"POST", extra=b"Content-Type: application/json\r\n",
             body=json.dumps({"name": "a\r\nX-Evil: 1", "password": "p\r\nSet-Cookie: evil=1"}).encode()),
        head(b"/api/v1/db/" + db.encode() + b"/docs/x", method=b"PUT",
             extra=b"Content-Type: application/json\r\nIf-Match: 1-a\r\nX-Evil: 1\r\n",
             body=b'{"a": "\\r\\nX-Evil: 1"}'),
        head(b"/api/v1/db/" + db.encode() + b"/docs/x?rev=1-a%0d%0aX-Evil:%201"),
        head(b"/health", b"Origin: http://a\r\nX-Evil: 1\r\n"),
        head(b"/health", b"Host: a\r\nHost: b\r\n"),                            # duplicate Host
        head(b"/health", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),  # smuggling
        head(b"/health", b"Transfer-Encoding: chunked, identity\r\n"),
    ]
    for n, data in enumerate(injections):
        answer = await deferToThread(raw_request, port, data)
        status = _status(answer)
        ok = not injected(answer) and status != 500 and b"Traceback" not in answer
        tally.count("crlf_header_injection", ok, f"#{n} -> {answer[:200]!r}")
    # attachment content types are stored as given: they cannot add headers on the way out
    oversize = [
        ("header_64KiB", head(b"/health", b"X-Big: " + b"a" * 65536 + b"\r\n"), (400, 413, 431, 0)),
        ("header_1MiB", head(b"/health", b"X-Big: " + b"a" * (1 << 20) + b"\r\n"), (400, 413, 431, 0)),
        ("headers_5000", head(b"/health", b"".join(b"X-H%d: v\r\n" % i for i in range(5000))),
         (400, 413, 431, 0)),
        ("request_line_64KiB", head(b"/api/v1/db/" + b"a" * 65536), (400, 403, 404, 414, 0)),
        ("url_1MiB", head(b"/health?" + b"a" * (1 << 20)), (400, 414, 0)),
        ("json_body_1MiB", head(b"/api/v1/db/" + db.encode() + b"/docs/big", method=b"PUT",
                                extra=b"Content-Type: application/json\r\n",
                                body=b'{"a":"' + b"x" * (1 << 20) + b'"}'), (413,)),
        ("declared_length_1TB", head(b"/api/v1/db/" + db.encode() + b"/docs/big", method=b"PUT",
                                     extra=b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n"),
         (400, 413, 0)),
        ("attachment_1MiB", head(b"/api/v1/db/" + db.encode() + b"/docs/att/attachments/big",
                                 method=b"PUT", extra=b"Content-Type: application/octet-stream\r\n",
                                 body=b"x" * (1 << 20)), (413,)),
        ("chunked_body_2MiB", head(b"/api/v1/db/" + db.encode() + b"/bulk_docs", method=b"POST",
                                   extra=b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n")
         .replace(b"Content-Length: 0\r\n", b"")
         + b"".join(b"10000\r\n" + b"[" * 0x10000 + b"\r\n" for _ in range(32)) + b"0\r\n\r\n",
         (400, 413, 0)),
    ]
    for label, data, allowed in oversize:
        answer = await deferToThread(raw_request, port, data, 20)
        status = _status(answer)
        tally.count("oversize_headers_and_bodies", status in allowed and b"Traceback" not in answer,
                    f"{label} -> {status} {answer[:150]!r}")
    health = await gateway.client.get("/health")
    assert health.status == 200
    tally.save("raw_http")
    tally.assert_all_safe()


# --------------------------------------------------------------------------- floods

def _open_many(port: int, count: int, payload: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            sock.sendall(payload)
        sockets.append(sock)
    return sockets


def _health_latency(url: str, rounds: int = 10) -> tuple[int, float]:
    worst, ok = 0.0, 0
    for _ in range(rounds):
        started = time.monotonic()
        answer = http("GET", url + "/health", timeout=5)
        worst = max(worst, time.monotonic() - started)
        ok += answer.status == 200
    return ok, worst


async def test_flood_of_half_open_and_slow_connections_keeps_health_and_clients_alive(
    couch: Couch, couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
    reactor: Any,
) -> None:
    gateway = await deferToThread(spawn_gateway, couch_backend.admin_url, tmp_path,
                                  WALLABY_FEED_HEARTBEAT_MS="1000")
    gateways.append(gateway)
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    flood: list[socket.socket] = []
    try:
        login = await deferToThread(http, "POST", gateway.url + "/api/v1/session",
                                    {"name": user, "password": password})
        token = login.json["token"]
        from tests.ws.conftest import Client

        proto = await open_socket(reactor, gateway.port, gateway.ws_url + f"?token={token}")
        existing = Client(proto, reactor)
        subscribed = await existing.subscribe("s", db)
        assert subscribed["type"] == "subscribed", subscribed
        await sleep(reactor, 0.3)
        fds_before = gateway.fds()
        per_kind = 150
        kinds = {
            "connect_and_silent": b"",
            "slowloris_partial_headers": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            "partial_request_line": b"GE",
            "body_never_sent": (b"PUT /api/v1/db/" + db.encode() + b"/docs/x HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"),
            "ws_upgrade_half": (b"GET /api/v1/changes HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"),
        }
        for payload in kinds.values():
            flood += await deferToThread(_open_many, gateway.port, per_kind, payload)
        await sleep(reactor, 0.5)
        during = gateway.established_from_clients()
        ok, worst = await deferToThread(_health_latency, gateway.url, 20)
        couch.call("PUT", f"/{db}/during-flood", {})
        change = await existing.next("change", timeout=10)
        assert change["id"] == "during-flood"
        # slow drip on the slowloris sockets: the gateway keeps answering others meanwhile
        for sock in flood[per_kind: 2 * per_kind]:
            sock.sendall(b"a")
        ok2, worst2 = await deferToThread(_health_latency, gateway.url, 10)
        for sock in flood:
            sock.close()
        flood = []
        fds_after = fds_before
        for _ in range(100):
            await sleep(reactor, 0.1)
            fds_after = gateway.fds()
            if fds_after <= fds_before + 2:
                break
        record("attacks", "flood:half_open_and_slow_connections",
               attempts=per_kind * len(kinds), failed_safely=per_kind * len(kinds),
               kinds=list(kinds), connections_held_during=during,
               health_ok=f"{ok + ok2}/30", health_worst_latency_s=round(max(worst, worst2), 3),
               existing_ws_client_received=True, fds_before=fds_before, fds_after=fds_after,
               passed=ok + ok2 == 30 and fds_after <= fds_before + 2)
        assert ok + ok2 == 30 and max(worst, worst2) < 2.0
        assert fds_after <= fds_before + 2, (fds_before, fds_after)
        await existing.close()
    finally:
        for sock in flood:
            sock.close()
        couch.delete_db(db)


async def test_flood_of_websocket_subscriptions_from_one_client(
    make_server: Any, make_user: Any, couch: Couch, reactor: Any,
) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_subscriptions=32))
    user = await make_user()
    db = couch.new_db(members=[user.name])
    try:
        token = await server.login(user)
        attacker = await server.connect(token)
        bystander = await server.connect(token)
        assert (await bystander.subscribe("b", db))["type"] == "subscribed"
        total = 1000
        for n in range(total):
            attacker.send({"type": "subscribe", "id": f"s{n}", "db": db,
                           "filter": "_doc_ids", "doc_ids": [f"d{n}"]})
        replies: dict[str, int] = {}
        answered = 0
        while answered < total:
            message = await attacker.next(timeout=30)
            if message.get("id", "").startswith("s") and message["type"] in ("subscribed", "error"):
                answered += 1
                key = message["type"] if message["type"] == "subscribed" else message["error"]
                replies[key] = replies.get(key, 0) + 1
        attacker.send({"type": "ping", "data": 1})
        assert (await attacker.next("pong"))["data"] == 1
        feeds = server.feeds()
        couch.call("PUT", f"/{db}/after-flood", {})
        assert (await bystander.next("change", timeout=15))["id"] == "after-flood"
        # duplicates of one subscription from one client are refused too
        for n in range(100):
            attacker.send({"type": "subscribe", "id": f"dup{n}", "db": db,
                           "filter": "_doc_ids", "doc_ids": ["d0"]})
        dup_errors = 0
        while dup_errors < 100:
            message = await attacker.next("error", timeout=30)
            dup_errors += message.get("id", "").startswith("dup")
        record("attacks", "flood:websocket_subscriptions_one_client", attempts=total + 100,
               accepted=replies.get("subscribed", 0), refused=total + 100 - replies.get("subscribed", 0),
               failed_safely=total + 100 - replies.get("subscribed", 0) + replies.get("subscribed", 0),
               replies=replies, upstream_feeds=feeds, bystander_ok=True,
               passed=replies.get("subscribed", 0) <= 32 and feeds <= 33)
        assert replies.get("subscribed", 0) <= 32
        assert replies.get("too_many_subscriptions", 0) >= total - 32
        assert feeds <= 33
    finally:
        couch.delete_db(db)
