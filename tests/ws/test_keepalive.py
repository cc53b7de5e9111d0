"""Keep-alive: a client that completes the handshake, subscribes, and then goes dead (never
reads again, never answers a ping) is dropped within a bounded time; its subscription is
released and the shared upstream feed it alone used is closed. A live client is not
affected."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

from twisted.internet import protocol

from gateway.couch import Database
from tests.ws.conftest import StopsReading, WsServer, sleep, wait_until, ws_settings

PING_INTERVAL = 0.5
#: Ping interval + pong timeout (at least 1 s) + scheduling slack on a busy machine.
DETECTION_BOUND = 6.0


def masked_text_frame(payload: bytes) -> bytes:
    """One client → server text frame (clients must mask)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + body


class DeadClient(protocol.Protocol):
    """A raw TCP WebSocket client that never sends a pong (or anything after subscribing)."""

    def __init__(self, host: str, token: str) -> None:
        self.host = host
        self.token = token
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (f"GET /api/v1/changes HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
             f"Authorization: Bearer {self.token}\r\n\r\n").encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def go_dead(self) -> None:
        """Stop reading from the socket: pings pile up unanswered."""
        self.transport.pauseProducing()


async def wait_for(reactor: Any, condition: Any, timeout: float, what: str) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"
        await sleep(reactor, 0.02)


async def test_dead_client_is_dropped_and_its_feed_closed(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    server: WsServer = await make_server(ws_settings(ws_ping_interval=PING_INTERVAL))
    token = await server.login(await make_user())
    # A healthy client (Autobahn answers pings) on another feed of the same database.
    healthy = await server.connect(token)
    assert (await healthy.subscribe("h", db.name, include_docs=True))["type"] == "subscribed"

    port = server.port.getHost().port
    dead = DeadClient(f"127.0.0.1:{port}", token)
    factory = protocol.ClientFactory()
    factory.protocol = lambda: dead  # type: ignore[assignment]
    reactor.connectTCP("127.0.0.1", port, factory)
    await wait_for(reactor, lambda: b"\r\n\r\n" in dead.received, 10, "the handshake answer")
    assert dead.received.startswith(b"HTTP/1.1 101"), dead.received[:200]
    dead.transport.write(masked_text_frame(
        json.dumps({"type": "subscribe", "id": "d", "db": db.name}).encode()))
    await wait_for(reactor, lambda: b'"subscribed"' in dead.received, 10, "subscribed")
    assert server.feeds() == 2
    assert server.service.metrics.subscriptions == 2
    shared = next(f for f in server.service.hub.feeds.values() if not f.params.include_docs)
    upstream = shared.service
    assert upstream is not None and upstream.running

    dead.go_dead()
    went_dead = reactor.seconds()
    await wait_for(reactor, lambda: server.service.metrics.connections == 1, DETECTION_BOUND,
                   "the dead client to be dropped")
    await wait_for(reactor, lambda: server.feeds() == 1, 5, "its feed to be released")
    detected = reactor.seconds() - went_dead
    assert detected < DETECTION_BOUND, f"dead client dropped after {detected:.2f} s"
    assert server.service.metrics.subscriptions == 1
    assert shared.closed and shared.subscribers == {}
    await wait_for(reactor, lambda: upstream.state == "stopped", 5, "the upstream feed to stop")
    assert not upstream.running

    # pings kept the healthy client: it is still connected and gets changes
    await db.save({"_id": "after", "v": 1})
    change = await healthy.next("change")
    assert change["id"] == "after" and change["doc"]["v"] == 1
    assert not healthy.protocol.closed.called
    healthy.check()


class _StopsReadingCountsPongs(StopsReading):
    def __init__(self) -> None:
        super().__init__()
        self.pongs: list[bytes] = []

    def onPong(self, payload: bytes) -> None:  # Autobahn's name
        self.pongs.append(payload)


async def test_the_ping_held_while_backed_up_is_answered_once_the_socket_drains(
    make_server: Any, make_user: Any, reactor: Any
) -> None:
    """RFC 6455 5.5.2/5.5.3: a ping gets a pong (the latest one may stand for earlier
    ones). The one held while the socket is backed up must go out when it drains."""
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=256 * 1024),
                                         socket_send_buffer=16 * 1024)
    client = await server.connect(await server.login(await make_user()),
                                  protocol=_StopsReadingCountsPongs)
    (conn,) = list(server.service.factory.connections)
    for _round in range(200):
        if conn._paused:
            break
        for _ in range(500):
            client.protocol.sendPing(b"p" * 125)
        await sleep(reactor, 0.01)
    assert conn._paused
    client.protocol.sendPing(b"the-last-one")
    await wait_until(reactor, lambda: conn._pong_due == b"the-last-one")
    client.protocol.transport.resumeProducing()
    await wait_until(reactor, lambda: b"the-last-one" in client.protocol.pongs, 10.0)
    assert conn.state == conn.STATE_OPEN
