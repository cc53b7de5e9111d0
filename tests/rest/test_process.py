"""The gateway as a process (``python -m gateway run``): shutdown and flat memory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import LoopingCall, deferLater
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool

from gateway.couch import CouchServer
from tests.conftest import CouchBackend, unique_name
from tests.rest.conftest import ApiClient, basic
from tests.support.gatewayproc import GatewayProcess, spawn_gateway


async def _spawn(
    reactor: Any, tmp_path: Path, couchdb_url: str, **env: str
) -> GatewayProcess:
    environment = {**os.environ, "COUCHDB_URL": couchdb_url, "WALLABY_LOG_FORMAT": "json",
                   "WALLABY_RATE_LIMIT_PER_SECOND": "0", **env}
    return await spawn_gateway(
        reactor, environment, tmp_path / f"gateway-{os.urandom(4).hex()}.err",
        stdout=tmp_path / "gateway.out", args=("--host", "127.0.0.1", "--port", "0"),
    )


async def _wait_exit(reactor: Any, process: subprocess.Popen[bytes], seconds: float) -> int:
    for _ in range(int(seconds / 0.05)):
        code = process.poll()
        if code is not None:
            return code
        await deferLater(reactor, 0.05, lambda: None)
    process.kill()
    raise AssertionError("the gateway did not exit")


@pytest_twisted.async_yield_fixture
async def spawn(reactor: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start gateway processes; kill leftovers afterwards."""
    children: list[GatewayProcess] = []

    async def start(couchdb_url: str, **env: str) -> GatewayProcess:
        child = await _spawn(reactor, tmp_path, couchdb_url, **env)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


class SlowCouch(resource.Resource):
    """A stand-in CouchDB whose answers take ``delay`` seconds."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, reactor: Any, delay: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.delay = delay
        self.seen: list[bytes] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request.path)
        if request.path == b"/_session":
            body = {"ok": True, "userCtx": {"name": "slow", "roles": []}}
        else:
            body = {"db_name": "slowdb", "doc_count": 0}

        def answer() -> None:
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(body).encode())
            request.finish()

        self.reactor.callLater(self.delay, answer)
        return server.NOT_DONE_YET


async def test_sigterm_finishes_in_flight_requests(
    reactor: Any, spawn: Callable[..., Any]
) -> None:
    stub = SlowCouch(reactor, delay=1.0)
    port = reactor.listenTCP(0, server.Site(stub), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        child = await spawn(f"http://127.0.0.1:{port.getHost().port}",
                            WALLABY_SHUTDOWN_GRACE="10")
        client = ApiClient(child.url, Agent(reactor, pool=pool))
        in_flight = defer.ensureDeferred(client.get("/api/v1/db/slowdb", headers=basic("s", "p")))
        while not stub.seen:
            await deferLater(reactor, 0.02, lambda: None)
        child.process.send_signal(signal.SIGTERM)
        reply = await in_flight
        assert reply.status == 200 and reply.json["db_name"] == "slowdb"
        with pytest.raises(ConnectionRefusedError):
            await client.get("/health")
        assert await _wait_exit(reactor, child.process, 15) == 0
        log = (child.log.parent / "gateway.out").read_text()
        access = [json.loads(line) for line in log.splitlines() if '"type": "access"' in line]
        assert any(a["route"] == "getDatabase" and a["status"] == 200 for a in access)
        assert all(a.get("user") != "p" and "Authorization" not in json.dumps(a) for a in access)
    finally:
        await defer.maybeDeferred(port.stopListening)
        await pool.closeCachedConnections()


async def test_a_running_gateway_reports_its_garbage_collection(
    reactor: Any, spawn: Callable[..., Any], couch_backend: CouchBackend
) -> None:
    child = await spawn(couch_backend.url)
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        metrics = await ApiClient(child.url, Agent(reactor, pool=pool)).get("/metrics")
    finally:
        await pool.closeCachedConnections()
    text = metrics.body.decode()
    frozen = re.search(r"^wallaby_gc_frozen_objects (\d+)$", text, re.MULTILINE)
    assert frozen and int(frozen.group(1)) > 10_000, text  # start-up objects, frozen
    assert 'wallaby_gc_pause_seconds_count{generation="2"}' in text
    assert 'wallaby_gc_pause_max_seconds{generation="0"}' in text
    assert re.search(r"^wallaby_gc_freezes_total \d+$", text, re.MULTILINE), text
    assert re.search(r"^wallaby_gc_thaws_total \d+$", text, re.MULTILINE), text


SIZE = 110 * 1024 * 1024


@pytest.mark.slow
async def test_large_attachment_streams_with_flat_gateway_memory(
    reactor: Any, spawn: Callable[..., Any], admin: CouchServer, couch_backend: CouchBackend,
    tmp_path: Path,
) -> None:
    database = admin.database(unique_name("big"))
    await database.create()
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        source = tmp_path / "big.bin"
        digest = hashlib.sha256()
        with source.open("wb") as handle:
            block = os.urandom(1024 * 1024)
            for i in range(SIZE // len(block)):
                chunk = block[:-8] + i.to_bytes(8, "big")
                digest.update(chunk)
                handle.write(chunk)
        child = await spawn(couch_backend.url)
        client = ApiClient(child.url, Agent(reactor, pool=pool)).with_headers(
            basic(couch_backend.admin_username, couch_backend.admin_password)
        )
        made = await client.put(f"/api/v1/db/{database.name}/docs/big", json_body={})
        assert made.status == 201
        baseline = child.rss_kib()
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], child.rss_kib())

        sampler = LoopingCall(sample)
        sampler.start(0.1)
        try:
            with source.open("rb") as handle:
                up = await client.put(
                    f"/api/v1/db/{database.name}/docs/big/attachments/blob?rev={made.json['rev']}",
                    data=FileBodyProducer(handle, readSize=256 * 1024),
                    headers={"Content-Type": "application/x-big"},
                )
            assert up.status == 201, up.body
            response = await client.open(
                "GET", f"/api/v1/db/{database.name}/docs/big/attachments/blob"
            )
            assert response.code == 200
            assert response.headers.getRawHeaders("Content-Type") == ["application/x-big"]
            received = hashlib.sha256()
            count = [0]

            def collect(data: bytes) -> None:
                count[0] += len(data)
                received.update(data)

            await treq.collect(response, collect)
        finally:
            sampler.stop()
        assert count[0] == SIZE and received.digest() == digest.digest()
        assert response.length == SIZE
        growth_mib = (max(peak[0], child.rss_kib("VmHWM")) - baseline) / 1024
        print(f"gateway RSS baseline {baseline / 1024:.1f} MiB, growth {growth_mib:.1f} MiB")
        assert growth_mib < 40, f"gateway memory grew by {growth_mib:.1f} MiB"
    finally:
        await pool.closeCachedConnections()
        await database.destroy()


@pytest.mark.parametrize(("setting", "message"), [
    ({"WALLABY_AUTH_MODE": "bogus"},
     "WALLABY_AUTH_MODE: 'bogus' is not one of forward, jwt, proxy"),
    # A "/" in a password that was not percent-encoded: Python would quote the secret.
    ({"COUCHDB_URL": "http://admin:s3cr3t/x@127.0.0.1:1"},
     "COUCHDB_URL: the CouchDB URL's host and port are not where they should be"),
])
async def test_a_bad_setting_stops_the_gateway_with_a_message(
    setting: dict[str, str], message: str,
    reactor: Any, tmp_path: Path, couch_backend: CouchBackend
) -> None:
    log = tmp_path / "bad.err"
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "gateway", "run"],
            env={**os.environ, "COUCHDB_URL": couch_backend.admin_url, **setting},
            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    assert await _wait_exit(reactor, process, 30) == 2
    text = log.read_text()
    assert message in text
    assert "Traceback" not in text and "s3cr3t" not in text


async def test_no_service_credentials_is_warned_of_at_start(
    spawn: Callable[..., Any], couch_backend: CouchBackend, tmp_path: Path
) -> None:
    """Live changes read as the service identity: without one they are refused, so the
    operator hears of it when the gateway starts, not from a user's failed subscription.
    The warning is a log event (JSON here), on the log stream (stdout), before READY."""
    log = tmp_path / "gateway.out"  # every spawned gateway's stdout, appended
    await spawn(couch_backend.url)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    warned = [e for e in events if "no service credentials" in e.get("message", "")]
    assert [e["level"] for e in warned] == ["warn"] and "COUCHDB_USER" in warned[0]["message"]
    seen = len(log.read_text())
    with_user = await spawn(couch_backend.admin_url)
    assert "no service credentials" not in log.read_text()[seen:] + with_user.output()


async def test_a_port_it_cannot_listen_on_is_a_failed_start(
    reactor: Any, tmp_path: Path, couch_backend: CouchBackend
) -> None:
    holder = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
    busy = holder.getHost().port
    log = tmp_path / "busy.err"
    try:
        with log.open("wb") as err:
            process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "gateway", "run",
                 "--host", "127.0.0.1", "--port", str(busy)],
                env={**os.environ, "COUCHDB_URL": couch_backend.admin_url},
                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        assert await _wait_exit(reactor, process, 30) == 1
        assert "cannot listen" in log.read_text()
    finally:
        await holder.stopListening()


async def test_run_without_couchdb_url_from_a_fresh_folder(
    reactor: Any, tmp_path: Path, couch_backend: CouchBackend
) -> None:
    """What ``./wallaby run`` does on a fresh checkout: the embedded server with the default
    (relative) data folder, the demo user, then a clean stop leaving no server behind."""
    if couch_backend.embedded is None:
        pytest.skip("starts the embedded pouchdb-server, which a COUCHDB_URL run does not use")
    environment = {k: v for k, v in os.environ.items()
                   if k != "COUCHDB_URL" and not k.startswith("WALLABY_")}
    environment["WALLABY_RATE_LIMIT_PER_SECOND"] = "0"
    child = await spawn_gateway(
        reactor, environment, tmp_path / "fresh.err", cwd=tmp_path,
        args=("--port", "0", "--couch-port", "0"), timeout=90)
    try:
        response = await treq.get(f"{child.url}/api/v1/db/demo",
                                  headers=basic("demo", "demo"))
        assert response.code == 200, child.output()
        assert (await response.json())["db_name"] == "demo"
        assert (tmp_path / "var" / "couch" / "config.json").exists()
        assert not (tmp_path / "var" / "couch" / "var").exists()  # not nested in itself
        node = _children_named(child.process.pid, "node")
        assert node, "no embedded server process"
    finally:
        child.process.send_signal(signal.SIGINT)
        assert await _wait_exit(reactor, child.process, 60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in node)  # noqa: ASYNC240


def _children_named(pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1:stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        if parent == pid and command == name:
            found.append(int(entry.name))
    return found
