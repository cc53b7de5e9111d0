"""``python -m gateway run`` as a real process: REST login, live changes over WebSocket at
``/api/v1/changes``, the WebSocket metrics on ``/metrics``, and a graceful SIGTERM
(every socket gets ``closing`` with its resume seqs and close code 1001; exit code 0)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from gateway.couch import Database
from gateway.embedded import free_port
from gateway.ws.protocol import CLOSE_GOING_AWAY
from tests.conftest import CouchBackend
from tests.support.gatewayproc import GatewayProcess, spawn_gateway
from tests.ws.conftest import Client, StopsReading, open_client, sleep


async def start_gateway(reactor: Any, backend: CouchBackend, log: Path,
                        **env: str) -> GatewayProcess:
    """Start the entry point against the test server; wait for its ``READY`` line."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("WALLABY_") and k not in ("COUCHDB_USER", "COUCHDB_PASSWORD")}
    environ.update(COUCHDB_URL=backend.admin_url, WALLABY_PORT=str(port),
                   WALLABY_LOG_FORMAT="text", WALLABY_SHUTDOWN_GRACE="5", **env)
    return await spawn_gateway(reactor, environ, log)


async def stop_gateway(gateway: GatewayProcess, sig: int = signal.SIGTERM) -> int:
    """Signal the process and wait for its exit code (killed after 30 s)."""
    if gateway.process.poll() is None:
        gateway.process.send_signal(sig)

    def wait() -> int:
        try:
            return gateway.process.wait(30)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()
            raise

    return await deferToThread(wait)


@pytest_twisted.async_yield_fixture
async def gateway(reactor: Any, couch_backend: CouchBackend, tmp_path: Path
                  ) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway run`` in front of the test server (stopped after the test)."""
    process = await start_gateway(reactor, couch_backend, tmp_path / "gateway.log")
    yield process
    if process.process.poll() is None:
        process.process.kill()
        await deferToThread(process.process.wait)


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def metric_families_defined_twice(text: str) -> list[str]:
    """Families declared more than once: Prometheus names a counter's family without its
    ``_total`` (so a gauge ``x`` and a counter ``x_total`` clash, and OpenMetrics parsers
    refuse the exposition)."""
    families = [name.removesuffix("_total") if kind == "counter" else name
                for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)]
    return sorted({family for family in families if families.count(family) > 1})


async def scrape(gateway: GatewayProcess) -> str:
    answer = await treq.get(gateway.url + "/metrics")
    assert answer.code == 200
    text: str = await answer.text()
    return text


async def login(gateway: GatewayProcess, user: Any) -> str:
    """``POST /api/v1/session``; the ``Cookie`` header to send."""
    answer = await treq.post(gateway.url + "/api/v1/session",
                             json={"name": user.name, "password": user.password})
    assert answer.code == 200, await answer.text()
    return str(answer.headers.getRawHeaders("set-cookie")[0].split(";")[0])


async def connect(reactor: Any, gateway: GatewayProcess, cookie: str) -> Client:
    return await open_client(reactor, f"ws://127.0.0.1:{gateway.port}/api/v1/changes",
                             headers={"Cookie": cookie})


async def test_entry_point_serves_changes_metrics_and_closes_1001_on_sigterm(
    reactor: Any, gateway: GatewayProcess, db: Database, make_user: Any,
) -> None:
    cookie = await login(gateway, await make_user())
    client = await connect(reactor, gateway, cookie)
    assert (await client.subscribe("s", db.name, include_docs=True))["type"] == "subscribed"
    await db.save({"_id": "e2e", "v": 1})
    change = await client.next("change")
    assert change["id"] == "e2e" and change["doc"]["v"] == 1

    text = await scrape(gateway)
    assert metric(text, "wallaby_ws_connections") == 1
    assert metric(text, "wallaby_ws_subscriptions") == 1
    assert metric(text, "wallaby_ws_upstream_feeds") == 1
    assert metric(text, "wallaby_ws_messages_sent_total") >= 2  # subscribed + change
    assert metric(text, "wallaby_ws_delivery_lag_seconds_count") == 1
    assert metric(text, "wallaby_ws_coalesced_total") == 0
    assert metric(text, "wallaby_ws_slow_clients_closed_total") == 0
    assert "# TYPE wallaby_ws_delivery_lag_seconds summary" in text
    assert metric(text, "wallaby_ws_fanout_seconds_count") == 1  # one upstream batch
    assert 0 < metric(text, "wallaby_ws_fanout_seconds_sum") == metric(
        text, "wallaby_ws_fanout_max_seconds")
    assert "# TYPE wallaby_ws_fanout_seconds summary" in text
    assert "wallaby_http_requests_total" in text  # the REST metrics are still there
    assert metric(text, "wallaby_ws_connections_accepted_total") == 1
    assert metric_families_defined_twice(text) == []

    # a second subscription with other options opens a second feed; leaving closes it
    assert (await client.subscribe("t", db.name))["type"] == "subscribed"
    assert metric(await scrape(gateway), "wallaby_ws_upstream_feeds") == 2
    client.send({"type": "unsubscribe", "id": "t"})
    await client.next("unsubscribed")
    for _ in range(100):
        if metric(await scrape(gateway), "wallaby_ws_upstream_feeds") == 1:
            break
        await sleep(reactor, 0.05)
    assert metric(await scrape(gateway), "wallaby_ws_upstream_feeds") == 1

    code = await stop_gateway(gateway)
    _clean, close_code, _reason = await client.protocol.closed
    assert close_code == CLOSE_GOING_AWAY
    closing = await client.next("closing")
    assert closing["code"] == CLOSE_GOING_AWAY
    assert closing["resume"] == {"s": change["seq"]}
    assert code == 0, gateway.output()
    client.check()


async def test_ready_fails_as_soon_as_shutdown_begins(
    reactor: Any, gateway: GatewayProcess, make_user: Any,
) -> None:
    """The WebSockets close first, for up to WALLABY_SHUTDOWN_GRACE when a client does not
    answer its close frame; meanwhile /ready said 200, so a load balancer kept sending new
    clients to a gateway on its way out."""
    cookie = await login(gateway, await make_user())
    await open_client(reactor, f"ws://127.0.0.1:{gateway.port}/api/v1/changes",
                      headers={"Cookie": cookie}, protocol=StopsReading)
    assert (await treq.get(gateway.url + "/ready")).code == 200
    gateway.process.send_signal(signal.SIGTERM)
    await sleep(reactor, 0.5)  # the WebSocket phase waits for the silent client
    answer = await treq.get(gateway.url + "/ready")
    body = await answer.json()
    assert answer.code == 503 and body["error"] == "shutting_down", body
    assert answer.headers.getRawHeaders("retry-after") == ["5"]
    assert await stop_gateway(gateway) == 0, gateway.output()

