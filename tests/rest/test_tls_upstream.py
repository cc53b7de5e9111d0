"""The gateway talking to CouchDB over ``https://`` (a review of session 20).

Everything on loopback: the session's pouchdb-server behind a TLS terminator in its own
process (``tests/support/tlsproxy.py``), certificates from a private CA made per session
(``tests/support/tlscerts.py``), the gateway as a real ``python -m gateway run`` process
with ``COUCHDB_URL=https://localhost:<port>``. The private CA is trusted with
``WALLABY_COUCHDB_CA_FILE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool

from gateway.couch.tls import HANDSHAKE_SECONDS, HandshakeEndpoint, TLSHandshakeFailed, client_tls
from tests.conftest import CouchBackend, unique_name
from tests.rest.conftest import ApiClient, basic
from tests.support import tlscerts
from tests.support.gatewayproc import ROOT, GatewayProcess, spawn_gateway
from tests.ws.conftest import open_client, sleep

# --------------------------------------------------------------------------- harness


@dataclass
class Certs:
    ca: Path
    good: tuple[Path, Path]
    rotated: tuple[Path, Path]  # another certificate of the same CA
    self_signed: tuple[Path, Path]
    other_ca: tuple[Path, Path]
    wrong_host: tuple[Path, Path]
    expired: tuple[Path, Path]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca = tlscerts.make_ca(folder)
    other = tlscerts.make_ca(folder, "Unknown CA")
    return Certs(
        ca=ca.path,
        good=ca.issue(folder, "good"),
        rotated=ca.issue(folder, "rotated"),
        self_signed=tlscerts.self_signed(folder, "selfsigned"),
        other_ca=other.issue(folder, "otherca"),
        wrong_host=ca.issue(folder, "wronghost", names=("couch.example.invalid",), ips=("10.9.9.9",)),
        expired=ca.issue(folder, "expired", days=(-30, -1)),
    )


@dataclass
class TlsProxy:
    process: subprocess.Popen[bytes]
    port: int

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def _start_proxy(reactor: Any, log: Path, args: list[str]) -> TlsProxy:
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "tests.support.tlsproxy", *args], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    for _ in range(400):
        text = log.read_text()  # noqa: ASYNC240 - a small local log
        for line in text.splitlines():
            if line.startswith("READY "):
                return TlsProxy(process, int(line.split()[1]))
        if process.poll() is not None:
            break
        await deferLater(reactor, 0.05, lambda: None)
    process.kill()
    raise AssertionError(f"TLS proxy did not start: {log.read_text()}")  # noqa: ASYNC240


@pytest_twisted.async_yield_fixture
async def proxies(reactor: Any, tmp_path: Path, couch_backend: CouchBackend
                  ) -> AsyncIterator[Callable[..., Any]]:
    """Start TLS terminators in front of the session's server; killed afterwards."""
    started: list[TlsProxy] = []
    upstream = couch_backend.url.split("://", 1)[1]

    async def start(cert: tuple[Path, Path] | None, port: int = 0) -> TlsProxy:
        if cert is None:
            args = ["--port", str(port), "--stall"]
        else:
            args = ["--port", str(port), "--cert", str(cert[0]), "--key", str(cert[1]),
                    "--upstream", upstream]
        proxy = await _start_proxy(reactor, tmp_path / f"proxy-{os.urandom(3).hex()}.log", args)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.kill()


@pytest_twisted.async_yield_fixture
async def spawn(reactor: Any, tmp_path: Path, couch_backend: CouchBackend
                ) -> AsyncIterator[Callable[..., Any]]:
    """Start gateway processes with an https:// COUCHDB_URL; killed afterwards."""
    children: list[GatewayProcess] = []

    async def start(port: int, **env: str) -> GatewayProcess:
        url = (f"https://{couch_backend.admin_username}:{couch_backend.admin_password}"
               f"@localhost:{port}")
        environment = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
        environment.update({"COUCHDB_URL": url, "WALLABY_LOG_FORMAT": "json",
                            "WALLABY_RATE_LIMIT_PER_SECOND": "0", **env})
        child = await spawn_gateway(
            reactor, environment, tmp_path / f"gateway-{os.urandom(3).hex()}.log",
            args=("--host", "127.0.0.1", "--port", "0"),
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


@pytest_twisted.async_yield_fixture
async def http(reactor: Any) -> AsyncIterator[Agent]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield Agent(reactor, pool=pool, connectTimeout=10)
    await pool.closeCachedConnections()


def _client(gw: GatewayProcess, agent: Agent, backend: CouchBackend) -> ApiClient:
    return ApiClient(gw.url, agent, secrets=(backend.admin_password,)).with_headers(
        basic(backend.admin_username, backend.admin_password))


def _no_unhandled(gw: GatewayProcess) -> None:
    out = gw.output()
    assert "Unhandled" not in out and "Traceback" not in out, out[-3000:]


def _json_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for line in gw.output().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


async def _wait_until(reactor: Any, check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        result = await check()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(reactor, 0.1)


TRUST = "WALLABY_COUCHDB_CA_FILE"

# --------------------------------------------------------------------------- defects


@pytest.mark.parametrize("which", ["self_signed", "other_ca", "wrong_host", "expired"])
async def test_refused_certificate_is_reported_as_a_tls_failure(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, which: str,
) -> None:
    """A certificate the gateway refuses must be refused (it is) and *said* to be: a 502
    naming the TLS/certificate failure, no ``Retry-After`` (waiting does not fix a bad
    certificate), and a log line an operator can act on. Today it is a 503
    "CouchDB is unreachable (ResponseNeverReceived)" with ``Retry-After: 5`` and nothing in
    the log but that."""
    proxy = await proxies(getattr(certs, which))
    gw = await spawn(proxy.port, **{TRUST: str(certs.ca)})
    client = _client(gw, http, couch_backend)
    ready = await client.get("/ready")
    doc = await client.get(f"/api/v1/db/{unique_name()}/docs/x")
    _no_unhandled(gw)
    for reply in (ready, doc):
        body = reply.json
        assert "certificate" in body["reason"].lower() or "tls" in body["reason"].lower(), (
            f"{which}: the error does not name the TLS failure: {reply.status} {body}")
        assert reply.status == 502, (reply.status, body)
        assert reply.header("Retry-After") is None
    logged = gw.output().lower()
    assert "certificate" in logged, f"no log line names the certificate failure:\n{gw.output()[-1500:]}"


@pytest.mark.parametrize("replacement", ["untrusted", "stalled"])
async def test_write_refused_at_the_tls_handshake_is_not_reported_as_maybe_applied(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, admin: Any, replacement: str,
) -> None:
    """A write whose TLS handshake failed (or never finished) certainly never left the
    gateway: Twisted holds the request bytes in the TLS buffer until the handshake is
    done. docs/rest-api.md keeps "may have been applied" for a connection that "dropped
    after the request went out". Today an untrusted certificate gives 502
    ``upstream_answer_lost`` and a stalled handshake 504 "... it may have been applied;
    read before writing again" — sending clients into needless reconciliation (and
    stripping ``Retry-After``) for requests CouchDB never saw."""
    database = admin.database(unique_name("tls"))
    await database.create()
    try:
        proxy = await proxies(certs.good)
        gw = await spawn(proxy.port, WALLABY_REQUEST_TIMEOUT="2", **{TRUST: str(certs.ca)})
        client = _client(gw, http, couch_backend)
        assert (await client.get(f"/api/v1/db/{database.name}")).status == 200  # caller verified
        # The terminator is replaced (a botched certificate rotation, or one that hangs):
        # the pooled connections die with the old process.
        port = proxy.port
        proxy.kill()
        await proxies(certs.self_signed if replacement == "untrusted" else None, port=port)
        reply = await client.post(f"/api/v1/db/{database.name}/docs", json_body={"n": 1})
        assert reply.status >= 500
        assert reply.json["error"] != "upstream_answer_lost", reply.json
        assert "may have been applied" not in reply.json["reason"], reply.json
        assert (await database.info())["doc_count"] == 0  # indeed nothing was written
        _no_unhandled(gw)
    finally:
        await database.destroy()


async def test_an_operator_can_trust_a_private_ca_with_a_documented_setting(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend,
) -> None:
    """Production CouchDBs are often behind a private CA. Neither the README's settings
    table nor docs/deployment.md says how to trust one; the only way that works is
    OpenSSL's ``SSL_CERT_FILE``, which replaces the system trust store for the whole
    process. Suggested: ``WALLABY_COUCHDB_CA_FILE`` (PEM bundle added to the trust roots
    of upstream connections), documented."""
    proxy = await proxies(certs.good)
    gw = await spawn(proxy.port, WALLABY_COUCHDB_CA_FILE=str(certs.ca))
    ready = await _client(gw, http, couch_backend).get("/ready")
    assert ready.status == 200, ready.json


# --------------------------------------------------------------------------- coverage


async def test_every_rest_feature_over_tls(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, admin: Any, make_user: Any,
) -> None:
    proxy = await proxies(certs.good)
    gw = await spawn(proxy.port, **{TRUST: str(certs.ca)})
    client = _client(gw, http, couch_backend)
    assert (await client.get("/ready")).status == 200
    name = unique_name("tls")
    base = f"/api/v1/db/{name}"
    assert (await client.put(base)).status in (201, 202)
    try:
        put = await client.put(f"{base}/docs/a", json_body={"kind": "x", "n": 1})
        assert put.status == 201
        got = await client.get(f"{base}/docs/a")
        assert got.json["n"] == 1
        again = await client.get(f"{base}/docs/a", headers={"If-None-Match": got.header("ETag")})
        assert again.status == 304
        bulk = await client.post(f"{base}/bulk_docs", json_body={"docs": [
            {"_id": f"b{i}", "kind": "y", "n": i} for i in range(50)]})
        assert bulk.status == 201 and len(bulk.json) == 50
        assert (await client.post(f"{base}/bulk_get", json_body={"docs": [{"id": "b1"}]})).status == 200
        assert (await client.put(f"{base}/docs/_design%2Fd", json_body={"views": {"by_kind": {
            "map": "function (doc) { emit(doc.kind, 1); }", "reduce": "_count"}}})).status == 201
        view = await client.get(f"{base}/views/d/by_kind?group=true")
        assert {r["key"]: r["value"] for r in view.json["rows"]} == {"x": 1, "y": 50}
        found = await client.post(f"{base}/find", json_body={"selector": {"kind": "y", "n": {"$lt": 3}}})
        assert sorted(d["_id"] for d in found.json["docs"]) == ["b0", "b1", "b2"]
        assert len((await client.get(f"{base}/all_docs?limit=1000")).json["rows"]) == 52
        deleted = await client.delete(f"{base}/docs/a", headers={"If-Match": put.json["rev"]})
        assert deleted.status == 200
        # Login / session / logout as an ordinary user.
        user = await make_user()
        anonymous = ApiClient(gw.url, http, secrets=(couch_backend.admin_password,))
        login = await anonymous.post("/api/v1/session", json_body={"name": user.name, "password": user.password})
        assert login.status == 200
        token = login.json["token"]
        who = await anonymous.get("/api/v1/session", headers={"Authorization": f"Bearer {token}"})
        assert who.json["name"] == user.name
        # Attachments: large upload and download (byte-exact), Range, HEAD.
        data = os.urandom(24 * 1024 * 1024)
        rev = (await client.get(f"{base}/docs/b0")).json["_rev"]
        response = await client.open("PUT", f"{base}/docs/b0/attachments/big.bin",
                                     data=FileBodyProducer(io.BytesIO(data)),
                                     headers={"Content-Type": "application/octet-stream", "If-Match": rev})
        assert response.code == 201, await treq.content(response)
        await treq.content(response)
        response = await client.open("GET", f"{base}/docs/b0/attachments/big.bin")
        body = await treq.content(response)
        assert response.code == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        part = await client.get(f"{base}/docs/b0/attachments/big.bin",
                                headers={"Range": "bytes=5000000-6999999"})
        assert part.status == 206 and part.body == data[5000000:7000000]
        tail = await client.get(f"{base}/docs/b0/attachments/big.bin", headers={"Range": "bytes=-10"})
        assert tail.status == 206 and tail.body == data[-10:]
        head = await client.request("HEAD", f"{base}/docs/b0/attachments/big.bin")
        assert head.status == 200 and head.body == b""
        metrics = (await client.get("/metrics")).body.decode()
        # splice(2) works on raw TCP sockets only: over TLS it must never be taken.
        assert "wallaby_spliced_downloads_total 0" in metrics
        assert "wallaby_spliced_uploads_total 0" in metrics
        _no_unhandled(gw)
    finally:
        await client.delete(base)


async def test_live_changes_over_tls_survive_stalls_and_terminator_restarts(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, admin: Any,
) -> None:
    """Shared feed over TLS, heartbeat-detected stall (terminator SIGSTOPped), terminator
    killed and restarted (on a rotated certificate of the same CA), a client resuming
    after reconnect: every change exactly once, nothing unhandled in the log."""
    database = admin.database(unique_name("tlsws"))
    await database.create()
    try:
        proxy = await proxies(certs.good)
        gw = await spawn(proxy.port, WALLABY_FEED_HEARTBEAT_MS="500", WALLABY_WS_PING_INTERVAL="0",
                         WALLABY_REQUEST_TIMEOUT="5", **{TRUST: str(certs.ca)})
        anonymous = ApiClient(gw.url, http)
        token = (await anonymous.post("/api/v1/session", json_body={
            "name": couch_backend.admin_username, "password": couch_backend.admin_password})).json["token"]
        url = f"ws://127.0.0.1:{gw.port}/api/v1/changes?token={token}"
        a = await open_client(reactor, url)
        b = await open_client(reactor, url)
        for c in (a, b):
            sub = await c.subscribe("s", database.name, since=0)
            assert sub["type"] == "subscribed", sub
        await database.save({"_id": "d0"})
        assert [m["id"] for m in await a.collect_changes(1)] == ["d0"]
        assert [m["id"] for m in await b.collect_changes(1)] == ["d0"]
        metrics = (await _client(gw, http, couch_backend).get("/metrics")).body.decode()
        assert "wallaby_ws" in metrics

        # A stalled terminator: the feed must notice by its heartbeat.
        os.kill(proxy.process.pid, signal.SIGSTOP)
        try:
            state = await a.next("feed_state", timeout=10)
            assert state["state"] == "interrupted", state
        finally:
            os.kill(proxy.process.pid, signal.SIGCONT)
        await database.save({"_id": "d1"})
        await a.next("feed_state", timeout=20, where=lambda m: m["state"] == "live")

        # Killed and restarted on the same port, with a rotated certificate.
        port = proxy.port
        proxy.kill()
        await database.save({"_id": "d2"})
        await proxies(certs.rotated, port=port)
        await database.save({"_id": "d3"})
        seen_a = [m["id"] for m in await a.collect_changes(3, timeout=30)]
        assert seen_a == ["d1", "d2", "d3"], seen_a

        # b drops and resumes from its last seq: nothing lost, nothing twice.
        changes_b = await b.collect_changes(3, timeout=30)
        last = changes_b[-1]["seq"]
        b.protocol.dropConnection(abort=True)
        await database.save({"_id": "d4"})
        b2 = await open_client(reactor, url)
        await b2.subscribe("s", database.name, since=last)
        assert [m["id"] for m in await b2.collect_changes(1, timeout=20)] == ["d4"]
        await sleep(reactor, 1.5)
        assert not [m for m in b2.messages if m["type"] == "change" and m["id"] != "d4"]
        for c in (a, b2):
            await c.close()
        _no_unhandled(gw)
    finally:
        await database.destroy()


async def test_terminator_killed_mid_download_then_recovers(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, admin: Any,
) -> None:
    database = admin.database(unique_name("tlsdl"))
    await database.create()
    try:
        doc = {"_id": "big"}
        await database.save(doc)
        data = os.urandom(48 * 1024 * 1024)
        await database.put_attachment(doc, "big.bin", data, content_type="application/octet-stream")
        proxy = await proxies(certs.good)
        gw = await spawn(proxy.port, WALLABY_REQUEST_TIMEOUT="5", **{TRUST: str(certs.ca)})
        client = _client(gw, http, couch_backend)
        path = f"/api/v1/db/{database.name}/docs/big/attachments/big.bin"
        response = await client.open("GET", path)
        assert response.code == 200
        received: list[bytes] = []
        done = treq.collect(response, received.append)
        await deferLater(reactor, 0.05, lambda: None)
        port = proxy.port
        proxy.kill()
        outcome = None
        try:
            await done
        except Exception as exc:  # the client connection must be cut, not ended cleanly
            outcome = exc
        got = sum(map(len, received))
        assert got < len(data), "the kill came too late"
        assert outcome is not None, f"a cut download ended cleanly after {got} bytes"
        await proxies(certs.good, port=port)
        ready = await client.get("/ready")
        assert ready.status == 200
        response = await client.open("GET", path)
        body = await treq.content(response)
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        _no_unhandled(gw)
        aborted = [line for line in _json_lines(gw) if line.get("path") == path]
        assert aborted and aborted[0].get("aborted") is True, aborted[:1]
    finally:
        await database.destroy()


async def test_stalled_tls_handshake_times_out_cleanly(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend,
) -> None:
    stall = await proxies(None)
    gw = await spawn(stall.port, WALLABY_REQUEST_TIMEOUT="3", **{TRUST: str(certs.ca)})
    client = _client(gw, http, couch_backend)
    started = reactor.seconds()
    ready = await client.get("/ready")
    doc = await client.get(f"/api/v1/db/{unique_name()}/docs/x")
    assert ready.status == 504 and doc.status == 504, (ready.json, doc.json)
    assert reactor.seconds() - started < 10
    _no_unhandled(gw)


class _NeverConnects:
    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


def test_a_tls_handshake_is_given_up_after_handshake_seconds() -> None:
    """A stalled handshake fails as a connect error after HANDSHAKE_SECONDS (10, as long
    as a TCP connect may), not only when the request's own timeout (30 s) expires."""
    assert HANDSHAKE_SECONDS == 10.0
    clock = Clock()
    endpoint = HandshakeEndpoint(clock, _NeverConnects(), client_tls(b"localhost", None))
    outcome: list[Any] = []
    endpoint.connect(None).addBoth(outcome.append)  # type: ignore[arg-type]
    clock.advance(9.9)
    assert outcome == []
    clock.advance(0.1)
    assert len(outcome) == 1 and isinstance(outcome[0].value, TLSHandshakeFailed)
    assert "within 10 s" in outcome[0].value.detail
    assert outcome[0].value.refused is False


async def test_live_feed_recovers_after_a_stalled_tls_handshake(
    reactor: Any, certs: Certs, proxies: Any, spawn: Any, http: Agent,
    couch_backend: CouchBackend, admin: Any,
) -> None:
    """The terminator is replaced by a listener that accepts and never answers (a TLS
    handshake that stalls), then by a working one again: the shared feed must not hang
    in the handshake for ever."""
    database = admin.database(unique_name("tlshs"))
    await database.create()
    try:
        proxy = await proxies(certs.good)
        gw = await spawn(proxy.port, WALLABY_FEED_HEARTBEAT_MS="500", WALLABY_WS_PING_INTERVAL="0",
                         WALLABY_WS_AUTH_RECHECK="0", WALLABY_REQUEST_TIMEOUT="5",
                         **{TRUST: str(certs.ca)})
        anonymous = ApiClient(gw.url, http)
        token = (await anonymous.post("/api/v1/session", json_body={
            "name": couch_backend.admin_username, "password": couch_backend.admin_password})).json["token"]
        a = await open_client(reactor, f"ws://127.0.0.1:{gw.port}/api/v1/changes?token={token}")
        assert (await a.subscribe("s", database.name, since=0))["type"] == "subscribed"
        await database.save({"_id": "d0"})
        await a.collect_changes(1)
        port = proxy.port
        proxy.kill()
        stall = await proxies(None, port=port)
        assert (await a.next("feed_state", timeout=10))["state"] == "interrupted"
        await database.save({"_id": "d1"})
        await sleep(reactor, 3)
        stall.kill()
        started = reactor.seconds()
        await proxies(certs.good, port=port)
        await a.next("feed_state", timeout=60, where=lambda m: m["state"] == "live")
        assert [m["id"] for m in await a.collect_changes(1, timeout=10)] == ["d1"]
        print("live again after", reactor.seconds() - started, "s")
        await a.close()
        _no_unhandled(gw)
    finally:
        await database.destroy()
