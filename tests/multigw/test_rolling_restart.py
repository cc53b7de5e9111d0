"""Rolling restart behind the shipped HAProxy config: SIGTERM one of two gateways under load.

docs/deployment.md: on SIGTERM the gateway "at once fail[s] /ready (503 shutting_down)
and refuses new WebSockets, closes the open ones …, then stops accepting and gives
in-flight requests WALLABY_SHUTDOWN_GRACE seconds"; deploy/haproxy.cfg: "A replica that
gets SIGTERM fails /ready, leaves the rotation, and drains." A rolling restart of one
replica out of two must then cost clients nothing but a reconnect: no 5xx for a request
the other replica would have answered, and in-flight requests finish.
"""

from __future__ import annotations

import collections
import http.client
import signal
import threading
import time
from typing import Any

from tests.multigw.stack import (
    WebSocketClosed,
    WsClient,
    basic,
    metric,
    request,
)


def _load(port: int, path: str, headers: dict[str, str], stop: threading.Event,
          seen: collections.Counter[Any], bad: list[Any]) -> None:
    while not stop.is_set():
        try:
            answer = request(port, "GET", path, headers=headers, timeout=15)
        except OSError as exc:
            seen[type(exc).__name__] += 1
            bad.append(repr(exc))
            continue
        seen[answer.status] += 1
        if answer.status >= 500:
            bad.append((answer.status, answer.body[:100]))


def test_sigterm_of_one_gateway_under_load_gives_clients_no_5xx(lab: Any) -> None:
    db = lab.database()
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    stop = threading.Event()
    seen: collections.Counter[Any] = collections.Counter()
    bad: list[Any] = []
    workers = [threading.Thread(target=_load, args=(proxy.port, f"/api/v1/db/{db}",
                                                    basic(*lab.admin), stop, seen, bad))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.5)
        assert seen[200] > 0 and not bad, (seen, bad)
        a.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and proxy.server_states().get("a") != "DOWN":
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert proxy.server_states().get("a") == "DOWN"
    assert a.process.wait(15) == 0
    assert not bad, f"clients saw {len(bad)} errors of {sum(seen.values())} requests: {bad[:3]}"


def test_websocket_reconnects_during_a_rolling_restart_get_no_5xx(lab: Any) -> None:
    """A browser client reconnects at once after ``closing`` + 1001 (its first backoff is
    250 ms): the proxy must not hand it a 503 while the other replica is healthy."""
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    db = lab.database()
    token = request(proxy.port, "POST", "/api/v1/session",
                    body={"name": lab.admin[0], "password": lab.admin[1]}).json["token"]
    sockets = []
    for _ in range(6):
        client = WsClient.connect(proxy.port, f"/api/v1/changes?token={token}")
        assert client.status == 101
        client.send_json({"type": "subscribe", "id": "s", "db": db, "since": 0})
        assert client.receive()["type"] == "subscribed"
        sockets.append(client)
    assert metric(a.port, "wallaby_ws_connections") >= 1
    a.process.send_signal(signal.SIGTERM)
    refusals: list[Any] = []
    attempts = 0
    end = time.monotonic() + 8
    while time.monotonic() < end:
        attempts += 1
        try:
            client = WsClient.connect(proxy.port, f"/api/v1/changes?token={token}")
        except (OSError, WebSocketClosed) as exc:
            refusals.append(repr(exc))
            continue
        if client.status != 101:
            refusals.append((client.status, client.buffer[:90]))
        client.close()
        time.sleep(0.25)
    for client in sockets:
        client.close()
    assert not refusals, f"{len(refusals)} of {attempts} handshakes refused: {refusals[:3]}"


def test_in_flight_download_through_the_proxy_finishes_after_sigterm(lab: Any) -> None:
    db = lab.database()
    a = lab.gateway("a", WALLABY_SHUTDOWN_GRACE="20")
    b = lab.gateway("b", WALLABY_SHUTDOWN_GRACE="20")
    proxy = lab.haproxy(a, b)
    payload = bytes(range(256)) * (32 * 4096)  # 32 MiB: more than the socket buffers on the way hold
    assert lab.couch("PUT", f"/{db}/doc", {"x": 1}).status == 201
    rev = lab.couch("GET", f"/{db}/doc").json["_rev"]
    put = request(int(lab.backend.url.rsplit(":", 1)[1]), "PUT", f"/{db}/doc/blob?rev={rev}",
                  headers={**basic(*lab.admin), "Content-Type": "application/octet-stream"},
                  body=payload)
    assert put.status == 201, put
    # pouchdb-server storing 32 MiB can keep /ready waiting past HAProxy's check timeout:
    # both replicas back in rotation first, or the GET meets a 503 (no server).
    proxy.wait_up(timeout=60)
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request("GET", f"/api/v1/db/{db}/docs/doc/attachments/blob", headers=basic(*lab.admin))
    response = connection.getresponse()
    assert response.status == 200
    # A bytearray: `bytes += chunk` copies everything read so far on each read (~8 GB
    # for 32 MiB), which made this "15 MB/s" reader take 20-45 s on a loaded machine.
    got = bytearray(response.read(256 * 1024))
    busy = [g for g in (a, b) if metric(g.port, "wallaby_http_requests_in_flight") > 1]
    assert len(busy) == 1, "cannot tell which gateway serves the download"
    busy[0].process.send_signal(signal.SIGTERM)
    while True:
        chunk = response.read(64 * 1024)
        if not chunk:
            break
        got += chunk
        time.sleep(0.004)  # a slow reader: about 15 MB/s
    connection.close()
    assert got == payload
    assert busy[0].process.wait(25) == 0
