"""Faults: upstream kill -9 mid-stream, gateway kill -9 with browser-style clients,
a stalled upstream (heartbeat detection), upstream 500s and truncated answers.

Each test records what it survived in ``var/reliability/results.jsonl``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from gateway.couch import BasicAuth, CouchServer
from gateway.embedded import free_port
from gateway.ws.service import ChangesService
from tests.conftest import CouchBackend
from tests.reliability.conftest import (
    Couch,
    GatewayProcess,
    basic_header,
    http,
    record,
    spawn_gateway,
)
from tests.reliability.wsclient import ResumingClient
from tests.support.couchconfig import config_value
from tests.support.faultproxy import FaultProxy
from tests.ws.conftest import WsServer, session_authenticator, sleep, stop_server, ws_settings


class Writer:
    """Creates ``count`` documents directly in CouchDB from a thread, retrying through faults.

    A write whose answer was lost is retried with the same id (409 then means it landed).
    Bounded: stops after ``count`` documents or ``max_seconds``.
    """

    def __init__(self, couch: Couch, db: str, prefix: str, count: int, pace: float = 0.01,
                 max_seconds: float = 90.0) -> None:
        self.couch, self.db, self.prefix, self.count = couch, db, prefix, count
        self.pace, self.max_seconds = pace, max_seconds
        self.done = 0
        self.failed_attempts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        give_up = time.monotonic() + self.max_seconds
        i = 0
        while i < self.count and time.monotonic() < give_up:
            try:
                answer = self.couch.call("PUT", f"/{self.db}/{self.prefix}{i:05d}", {"n": i},
                                         timeout=5)
                ok = answer.status in (201, 202, 409)
            except OSError:
                ok = False
            if ok:
                i += 1
                self.done = i
                time.sleep(self.pace)
            else:
                self.failed_attempts += 1
                time.sleep(0.1)

    def start(self) -> Writer:
        self.thread.start()
        return self

    def wait(self) -> None:
        self.thread.join(self.max_seconds + 10)
        assert self.done == self.count, f"writer stopped at {self.done}/{self.count}"


async def wait_until(reactor: Any, predicate: Any, timeout: float, what: str) -> float:
    started = reactor.seconds()
    while not predicate():
        if reactor.seconds() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(reactor, 0.05)
    return float(reactor.seconds() - started)


def _no_dupes_and_complete(received: list[str], expected: set[str], who: str) -> None:
    duplicates = sorted({i for i in received if received.count(i) > 1})
    assert not duplicates, f"{who}: received twice: {duplicates[:10]}"
    missing = sorted(expected - set(received))
    extra = sorted(set(received) - expected)
    assert not missing, f"{who}: lost {len(missing)} changes: {missing[:10]}"
    assert not extra, f"{who}: received changes CouchDB does not have: {extra[:10]}"


# --------------------------------------------------------------------------- upstream kill -9

async def test_upstream_kill9_mid_write_stream_subscribers_get_exactly_couchdbs_changes(
    make_server: Any, make_user: Any, couch: Couch, couch_backend: CouchBackend, reactor: Any,
) -> None:
    embedded = couch_backend.require_killable()
    server: WsServer = await make_server(ws_settings(feed_heartbeat_ms=1000))
    user = await make_user()
    db = couch.new_db(members=[user.name])
    try:
        token = await server.login(user)
        clients = [await server.connect(token) for _ in range(4)]
        for client in clients:
            assert (await client.subscribe("s", db, since="now"))["type"] == "subscribed"
        writer = Writer(couch, db, "w", count=300, pace=0.01).start()
        await wait_until(reactor, lambda: writer.done >= 80, 30, "80 writes before the kill")
        killed_at = writer.done
        await deferToThread(embedded.kill)
        for client in clients:
            notice = await client.next("feed_state", timeout=20)
            assert notice["state"] == "interrupted"
        await sleep(reactor, 1.0)  # writes keep failing while CouchDB is down
        await deferToThread(embedded.restart)
        await deferToThread(writer.wait)
        expected = {row["id"] for row in couch.changes(db)}
        assert len(expected) == writer.count

        def ids(client: Any) -> list[str]:
            return [m["id"] for m in client.messages if m["type"] == "change"]

        await wait_until(reactor, lambda: all(set(ids(c)) >= expected for c in clients), 60,
                         "every subscriber to catch up")
        assert couch.call("PUT", f"/{db}/zz-sentinel", {}).status == 201
        await wait_until(reactor, lambda: all("zz-sentinel" in ids(c) for c in clients), 30,
                         "the sentinel")
        expected.add("zz-sentinel")
        for n, client in enumerate(clients):
            client.check()
            _no_dupes_and_complete(ids(client), expected, f"subscriber {n}")
        assert server.feeds() == 1
        record("faults", "upstream_kill9_mid_writes", subscribers=len(clients),
               writes=writer.count + 1, killed_after_writes=killed_at,
               failed_write_attempts_while_down=writer.failed_attempts,
               changes_lost=0, duplicates=0, passed=True)
    finally:
        couch.delete_db(db)


# --------------------------------------------------------------------------- gateway kill -9

@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return tmp_path


async def test_gateway_kill9_browser_clients_resume_on_new_process_nothing_lost(
    couch: Couch, couch_backend: CouchBackend, reactor: Any, logdir: Path,
    gateways: list[GatewayProcess],
) -> None:
    port = free_port()
    env = {"WALLABY_FEED_HEARTBEAT_MS": "1000", "WALLABY_WS_PING_INTERVAL": "5"}
    first = await deferToThread(spawn_gateway, couch_backend.admin_url, logdir, port=port, **env)
    gateways.append(first)
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    clients: list[ResumingClient] = []
    runs = []
    try:
        login = await deferToThread(http, "POST", first.url + "/api/v1/session",
                                    {"name": user, "password": password})
        assert login.status == 200, login
        token = login.json["token"]
        clients = [ResumingClient(reactor, port, token, db, name=f"browser{i}", last_seq=0)
                   for i in range(5)]
        for client in clients:
            await client.connect()
        runs = [client.run() for client in clients]
        import twisted.internet.defer as defer

        running = [defer.ensureDeferred(r) for r in runs]
        writer = Writer(couch, db, "g", count=200, pace=0.015).start()
        await wait_until(reactor, lambda: writer.done >= 60, 30, "60 writes before the kill")
        killed_at = writer.done
        first.kill9()
        await sleep(reactor, 0.5)  # writes go on while no gateway runs
        second = await deferToThread(spawn_gateway, couch_backend.admin_url, logdir, port=port,
                                     **env)
        gateways.append(second)
        await deferToThread(writer.wait)
        expected = {row["id"] for row in couch.changes(db)}
        assert len(expected) == writer.count
        await wait_until(reactor, lambda: all(set(c.ids()) >= expected for c in clients), 60,
                         "every browser client to catch up after the restart")
        for client in clients:
            await client.stop()
        await defer.DeferredList(running, consumeErrors=True)
        reconnects = []
        for client in clients:
            assert not client.errors, client.errors
            assert client.connects >= 2, f"{client.name} never reconnected"
            reconnects.append(client.connects - 1)
            _no_dupes_and_complete(client.ids(), expected, client.name)
        record("faults", "gateway_kill9_browser_clients_resume", clients=len(clients),
               writes=writer.count, killed_after_writes=killed_at,
               reconnects=sum(reconnects), changes_lost=0, duplicates=0, passed=True)
    finally:
        for client in clients:
            client.stopped = True
            if client.protocol is not None and not client.protocol.closed.called:
                client.protocol.dropConnection(abort=True)
        couch.delete_db(db)


async def test_entry_point_serves_websocket(
    couch_backend: CouchBackend, logdir: Path, gateways: list[GatewayProcess], couch: Couch,
    reactor: Any,
) -> None:
    """``python -m gateway run`` serves ``/api/v1/changes`` (README, docs/websocket.md)."""
    gateway = await deferToThread(spawn_gateway, couch_backend.admin_url, logdir)
    gateways.append(gateway)
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    try:
        login = await deferToThread(http, "POST", gateway.url + "/api/v1/session",
                                    {"name": user, "password": password})
        client = ResumingClient(reactor, gateway.port, login.json["token"], db)
        await client.connect(deadline_s=10)
        couch.call("PUT", f"/{db}/hello", {})
        await wait_until(reactor, lambda: client.ids() == ["hello"], 15, "the change")
        await client.stop()
        record("faults", "entry_point_serves_websocket", passed=True)
    finally:
        couch.delete_db(db)


async def test_a_client_whose_token_expired_logs_in_again_and_loses_nothing(
    couch_backend: CouchBackend, logdir: Path, gateways: list[GatewayProcess], couch: Couch,
    reactor: Any, admin: CouchServer,
) -> None:
    """A token is a CouchDB session: a reconnect after it expired is refused 401. An app
    logs in again and resumes from its last seq; nothing written meanwhile is lost (what
    the soak's clients do past the 10-minute default session)."""
    async with config_value(admin, couch_backend.is_pouchdb, "chttpd_auth", "timeout", "3"):
        gateway = await deferToThread(spawn_gateway, couch_backend.admin_url, logdir)
        gateways.append(gateway)
        user, password = couch.new_user()
        db = couch.new_db(members=[user])

        async def log_in() -> str:
            answer = await deferToThread(http, "POST", gateway.url + "/api/v1/session",
                                         {"name": user, "password": password})
            assert answer.status == 200, answer
            return str(answer.json["token"])

        first = await log_in()
        client = ResumingClient(reactor, gateway.port, first, db, last_seq=0, renew=log_in)
        try:
            await client.connect(deadline_s=10)
            running = defer.ensureDeferred(client.run())
            couch.call("PUT", f"/{db}/before", {})
            await wait_until(reactor, lambda: client.ids() == ["before"], 15, "the first change")
            await sleep(reactor, 9)  # past the session (3 s) and the gateway's identity cache (5 s)
            stale = await deferToThread(http, "GET", gateway.url + "/api/v1/session",
                                        headers={"Authorization": f"Bearer {first}"})
            assert stale.status == 401, stale  # the old token is dead
            assert client.protocol is not None
            client.protocol.dropConnection(abort=True)
            couch.call("PUT", f"/{db}/while-away", {})
            await wait_until(reactor, lambda: client.renewals >= 1, 15, "a new login")
            couch.call("PUT", f"/{db}/after", {})
            await wait_until(reactor, lambda: "after" in client.ids(), 15, "the change after")
            assert client.ids() == ["before", "while-away", "after"], client.ids()
            assert client.token != first
            await client.stop()
            await running
            record("faults", "token_expired_relogin_resumes", renewals=client.renewals,
                   passed=True)
        finally:
            client.stopped = True
            if client.protocol is not None and not client.protocol.closed.called:
                client.protocol.dropConnection(abort=True)
            couch.delete_db(db)


async def test_resume_before_the_first_change_loses_nothing(
    make_server: Any, make_user: Any, couch: Couch, reactor: Any,
) -> None:
    server: WsServer = await make_server(ws_settings())
    user = await make_user()
    db = couch.new_db(members=[user.name])
    try:
        token = await server.login(user)
        watcher = await server.connect(token)
        await watcher.subscribe("w", db)  # keeps the shared feed open, as other tabs do
        client = await server.connect(token)
        subscribed = await client.subscribe("s", db)  # since "now" (the default)
        client.protocol.dropConnection(abort=True)
        await client.protocol.closed
        couch.call("PUT", f"/{db}/while-away", {})
        assert (await watcher.next("change"))["id"] == "while-away"
        # the browser client's rule: resume from the last seq, else from what it knows
        resume_from = subscribed.get("since", "now")
        again = await server.connect(token)
        assert (await again.subscribe("s", db, since=resume_from))["type"] == "subscribed"
        couch.call("PUT", f"/{db}/after", {})
        ids = []
        while "after" not in ids:
            ids.append((await again.next("change", timeout=10))["id"])
        record("faults", "resume_before_first_change", resumed_from=str(resume_from),
               received=ids, passed="while-away" in ids)
        assert ids == ["while-away", "after"], f"resumed from {resume_from!r}, got {ids}"
    finally:
        couch.delete_db(db)


# --------------------------------------------------------------------------- stalled upstream

async def test_stalled_upstream_detected_by_heartbeat_and_recovered(
    admin: CouchServer, couch: Couch, couch_backend: CouchBackend, make_user: Any,
    reactor: Any,
) -> None:
    heartbeat_ms = 500
    bound = 3 * heartbeat_ms / 1000 + 2.0
    target_port = int(couch_backend.url.rsplit(":", 1)[1])
    proxy = FaultProxy(reactor, target_port)
    proxy.listen()
    pool = HTTPConnectionPool(reactor, persistent=False)
    proxied = CouchServer(proxy.url, reactor=reactor, pool=pool, timeout=60,
                          auth=BasicAuth(couch_backend.admin_username, couch_backend.admin_password))
    settings = ws_settings(feed_heartbeat_ms=heartbeat_ms)
    service = ChangesService(proxied.transport, settings, session_authenticator(admin), reactor)
    service.startService()
    port = reactor.listenTCP(0, service.factory, interface="127.0.0.1")
    ws = WsServer(service, port, reactor, admin)
    user = await make_user()
    db = couch.new_db(members=[user.name])
    try:
        client = await ws.connect(await admin.login(user.name, user.password))
        assert (await client.subscribe("s", db))["type"] == "subscribed"
        couch.call("PUT", f"/{db}/before", {})
        assert (await client.next("change"))["id"] == "before"
        proxy.stall()
        stalled_at = reactor.seconds()
        couch.call("PUT", f"/{db}/during", {})  # happens while the path is dead
        notice = await client.next("feed_state", timeout=bound + 40)
        detected_after = reactor.seconds() - stalled_at
        record("faults", "stalled_upstream_detection", heartbeat_ms=heartbeat_ms,
               bound_s=bound, detected_after_s=round(detected_after, 2),
               passed=detected_after <= bound)
        assert notice["state"] == "interrupted"
        assert detected_after <= bound, (
            f"stall detected after {detected_after:.1f} s, bound {bound} s (heartbeat "
            f"{heartbeat_ms} ms)")
        proxy.resume()
        proxy.reset_all()  # the dead path's sockets go away as a middlebox timeout would
        await client.next("feed_state", timeout=30, where=lambda m: m["state"] == "live")
        couch.call("PUT", f"/{db}/after", {})
        ids = []
        while "after" not in ids:
            ids.append((await client.next("change", timeout=30))["id"])
        assert sorted(ids) == ["after", "during"], ids
        record("faults", "stalled_upstream_recovered", changes_lost=0, duplicates=0, passed=True)
    finally:
        await stop_server(ws)
        await proxy.close()
        await pool.closeCachedConnections()
        couch.delete_db(db)


# --------------------------------------------------------------------------- broken upstream

@asynccontextmanager
async def _through_stand_in(
    start_gateway: Any, reactor: Any, fake: resource.Resource, *, request_timeout: float,
) -> AsyncIterator[tuple[Any, Any]]:
    """A gateway in front of a stand-in CouchDB, and its client with Basic credentials."""
    listening = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    try:
        gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{listening.getHost().port}",
                                      request_timeout=request_timeout)
        yield gateway, gateway.client.with_headers(basic_header("u", "pw"))
    finally:
        await listening.stopListening()


class BrokenCouch(resource.Resource):
    """A stand-in CouchDB: ``/_session`` works; every other answer follows ``mode``."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.hits = 0

    def render(self, request: Any) -> Any:
        self.hits += 1
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/_session":
            return json.dumps({"ok": True, "userCtx": {"name": "u", "roles": []}}).encode()
        body = json.dumps({"db_name": "x", "doc_count": 0, "update_seq": "0",
                           "_id": "d", "_rev": "1-a", "padding": "x" * 2000}).encode()
        if self.mode == "500":
            request.setResponseCode(500)
            return b'{"error":"unknown_error","reason":"function_clause"}'
        if self.mode == "500-html":
            request.setResponseCode(500)
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html>Internal Server Error</html>"
        if self.mode == "503":
            request.setResponseCode(503)
            return b'{"error":"service_unavailable","reason":"maintenance"}'
        if self.mode == "half":
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body[: len(body) // 2])
            request.channel.transport.loseConnection()
            return server.NOT_DONE_YET
        if self.mode == "reset":
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if self.mode == "garbage":
            return b"{not json at all"
        return body


@pytest.mark.parametrize("mode,expected", [
    ("500", {502}), ("500-html", {502}), ("503", {502, 503}), ("half", {502, 503}),
    ("reset", {502, 503}),
    ("garbage", {502}),
])
async def test_broken_upstream_answers_give_clean_error_envelopes(
    start_gateway: Any, reactor: Any, mode: str, expected: set[int],
) -> None:
    fake = BrokenCouch()
    async with _through_stand_in(start_gateway, reactor, fake,
                                 request_timeout=5.0) as (gateway, client):
        assert (await client.get("/api/v1/db/x")).status == 200
        fake.mode = mode
        statuses = []
        for path in ("/api/v1/db/x", "/api/v1/db/x/docs/d", "/api/v1/db/x/all_docs"):
            reply = await client.get(path)  # the contract check validates the envelope
            statuses.append(reply.status)
            assert reply.status in expected, (mode, path, reply.status, reply.body[:200])
            envelope = reply.json
            assert set(envelope) >= {"error", "reason", "status"}
            assert b"Traceback" not in reply.body
        assert (await gateway.client.get("/health")).status == 200
        fake.mode = "ok"
        assert (await client.get("/api/v1/db/x")).status == 200  # recovered
        record("faults", f"upstream_{mode}", requests=len(statuses), statuses=statuses,
               clean_envelopes=len(statuses), healthy_after=True, passed=True)


async def test_a_write_whose_answer_is_lost_is_not_offered_a_retry(
    start_gateway: Any, reactor: Any,
) -> None:
    """CouchDB took the request and dropped the connection before answering: a read is
    503 with Retry-After, but a write may have been applied, and a POST sent again
    stores a second document. It is 502 upstream_answer_lost, without Retry-After."""
    fake = BrokenCouch()
    async with _through_stand_in(start_gateway, reactor, fake,
                                 request_timeout=5.0) as (_gateway, client):
        fake.mode = "reset"
        read = await client.get("/api/v1/db/x/docs/d")
        assert read.status == 503 and read.json["error"] == "upstream_unavailable"
        assert read.header("Retry-After") == "5"
        for method, path, body in (("POST", "/api/v1/db/x/docs", {"v": 1}),
                                   ("PUT", "/api/v1/db/x/docs/d", {"v": 1}),
                                   ("POST", "/api/v1/db/x/bulk_docs", {"docs": [{"v": 1}]})):
            write = await client.request(method, path, json_body=body)
            assert write.status == 502, (method, path, write.status, write.body[:200])
            assert write.json["error"] == "upstream_answer_lost"
            assert "may have been applied" in write.json["reason"]
            assert write.header("Retry-After") is None


class WriteBreakingCouch(resource.Resource):
    """A stand-in CouchDB whose GETs answer, and whose other requests fail as ``mode``
    says: ``reset`` (dropped before any answer), ``half`` (201 and half a body: it was
    stored) or ``hang`` (no answer)."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def render(self, request: Any) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/_session" or request.method == b"GET":
            return json.dumps({"ok": True, "userCtx": {"name": "u", "roles": []},
                               "db_name": "x", "rows": [], "total_rows": 0}).encode()
        if self.mode == "reset":
            request.channel.transport.abortConnection()
        elif self.mode == "half":
            body = json.dumps({"ok": True, "id": "new", "rev": "1-b", "pad": "x" * 2000})
            request.setResponseCode(201)
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body.encode()[:1000])
            request.channel.transport.loseConnection()
        return server.NOT_DONE_YET


@pytest.mark.parametrize("mode,status", [("reset", 502), ("half", 502), ("hang", 504)])
async def test_a_write_that_may_have_been_applied_is_not_offered_a_retry(
    start_gateway: Any, reactor: Any, mode: str, status: int,
) -> None:
    """A POST without an _id sent again on a Retry-After's invitation stores a second
    document: a write whose answer was lost, cut or late is answered without one."""
    async with _through_stand_in(start_gateway, reactor, WriteBreakingCouch(mode),
                                 request_timeout=1.0) as (_gateway, client):
        for method, path, body in (("POST", "/api/v1/db/x/docs", {"v": 1}),
                                   ("PUT", "/api/v1/db/x/docs/d", {"v": 1}),
                                   ("POST", "/api/v1/db/x/bulk_docs", {"docs": [{"v": 1}]})):
            write = await client.request(method, path, json_body=body)
            assert write.status == status, (method, path, write.status, write.body[:200])
            assert "may have been applied" in write.json["reason"]
            assert write.header("Retry-After") is None
        # An attachment streamed upstream (the stand-in is no pouchdb-server), timed
        # once its body is sent: the same.
        upload = await client.request(
            "PUT", "/api/v1/db/x/docs/d/attachments/a.bin?rev=1-a", data=b"x" * 50_000,
            headers={"Content-Type": "application/octet-stream"})
        assert upload.status == status, (upload.status, upload.body[:200])
        assert "may have been applied" in upload.json["reason"]
        assert upload.header("Retry-After") is None


@pytest.mark.parametrize("path,body", [
    ("/api/v1/db/x/find", {"selector": {"a": 1}}),
    ("/api/v1/db/x/all_docs", {"keys": ["a"]}),
    ("/api/v1/db/x/bulk_get", {"docs": [{"id": "a"}]}),
    ("/api/v1/db/x/views/dd/v", {"keys": ["a"]}),
])
async def test_a_read_sent_as_a_post_is_still_offered_a_retry(
    start_gateway: Any, reactor: Any, path: str, body: Any,
) -> None:
    async with _through_stand_in(start_gateway, reactor, WriteBreakingCouch("reset"),
                                 request_timeout=5.0) as (_gateway, client):
        read = await client.post(path, json_body=body)
        assert read.status == 503 and read.json["error"] == "upstream_unavailable", read.body
        assert read.header("Retry-After") == "5"

