"""Streaming through the shipped HAProxy config: live changes, large downloads, idle sockets."""

from __future__ import annotations

import http.client
import time
import uuid
from typing import Any

import pytest

from tests.multigw.stack import WebSocketClosed, WsClient, basic, request


def _token(lab: Any, port: int) -> str:
    answer = request(port, "POST", "/api/v1/session",
                     body={"name": lab.admin[0], "password": lab.admin[1]})
    assert answer.status == 200, answer
    return str(answer.json["token"])


def test_live_changes_through_the_proxy_are_not_held_back(lab: Any) -> None:
    db = lab.database()
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    ws = WsClient.connect(proxy.port, f"/api/v1/changes?token={_token(lab, proxy.port)}")
    try:
        ws.send_json({"type": "subscribe", "id": "s", "db": db, "since": "now", "include_docs": True})
        assert ws.receive()["type"] == "subscribed"
        delays = []
        for i in range(5):
            doc_id = f"doc{i}-{uuid.uuid4().hex[:6]}"
            start = time.monotonic()
            assert lab.couch("PUT", f"/{db}/{doc_id}", {"i": i}).status == 201
            change = ws.receive_until(lambda m, d=doc_id: m.get("type") == "change" and m["id"] == d, 5)
            delays.append(time.monotonic() - start)
            assert change["doc"]["i"] == i
        assert max(delays) < 1.0, delays
    finally:
        ws.close()


def test_large_download_streams_through_the_proxy(lab: Any) -> None:
    """A 64 MiB attachment streams through the proxy: a client that has read its first
    64 KiB and stops holds the gateway back (nothing buffers the whole body on the way),
    and then gets every byte once it reads on."""
    db = lab.database()
    a = lab.gateway("a")
    proxy = lab.haproxy(a)
    payload = bytes(range(256)) * (64 * 4096)
    assert lab.couch("PUT", f"/{db}/doc", {}).status == 201
    rev = lab.couch("GET", f"/{db}/doc").json["_rev"]
    couch_port = int(lab.backend.url.rsplit(":", 1)[1])
    assert request(couch_port, "PUT", f"/{db}/doc/big?rev={rev}", body=payload,
                   headers={**basic(*lab.admin), "Content-Type": "application/octet-stream"},
                   timeout=120).status == 201
    proxy.wait_up()  # pouchdb-server, busy storing 64 MiB, may have failed /ready checks
    path = f"/api/v1/db/{db}/docs/doc/attachments/big"

    def answered() -> bool:  # the gateway logs a download once its last byte is out
        return any('"type": "access"' in line and path in line
                   for line in a.output().splitlines())

    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("GET", path, headers=basic(*lab.admin))
        response = connection.getresponse()
        assert response.status == 200, (response.read()[:300], proxy.output()[-1500:], a.output()[-1500:])
        first = response.read(64 * 1024)
        time.sleep(1.0)  # the client reads nothing: socket buffers fill, not 64 MiB of them
        held_back = not answered()
        rest = response.read()
    finally:
        connection.close()
    assert first + rest == payload
    assert held_back, "the whole body left the gateway while the client read 64 KiB"
    for _ in range(100):
        if answered():
            break
        time.sleep(0.05)
    assert answered()


@pytest.mark.parametrize("ping_interval, survives", [("1.5", True), ("0", False)])
def test_gateway_pings_keep_an_idle_websocket_open_through_the_tunnel_timeout(
        lab: Any, ping_interval: str, survives: bool) -> None:
    """Scaled down: ``timeout tunnel`` 4 s instead of 1 h, pings every 1.5 s instead of 20 s
    (the shipped ratio is 180; here 2.7). Without pings (0: off) the proxy cuts the socket,
    which shows the test would notice."""
    db = lab.database()
    a = lab.gateway("a", WALLABY_WS_PING_INTERVAL=ping_interval)
    proxy = lab.haproxy(a, edits={"timeout tunnel 1h": "timeout tunnel 4s"})
    ws = WsClient.connect(proxy.port, f"/api/v1/changes?token={_token(lab, proxy.port)}")
    try:
        ws.send_json({"type": "subscribe", "id": "s", "db": db, "since": "now"})
        assert ws.receive()["type"] == "subscribed"
        end = time.monotonic() + 12
        cut = None
        while time.monotonic() < end:
            try:
                ws.receive(max(0.05, end - time.monotonic()))
            except TimeoutError:
                continue
            except (OSError, WebSocketClosed) as exc:
                cut = exc
                break
        if survives:
            assert cut is None, cut
            assert lab.couch("PUT", f"/{db}/after-idle", {}).status == 201
            change = ws.receive_until(lambda m: m.get("type") == "change", 5)
            assert change["id"] == "after-idle"
        else:
            assert cut is not None
    finally:
        ws.close()
