"""The hub's roster of direct sockets: subscribers it sends a broadcast to without asking.

A subscriber whose socket took a whole broadcast frame stays on its feed's roster
(``SharedFeed.direct``) and is not asked for its socket again; anything that could put
bytes before the hub's next frame, or end its right to a direct write, takes it off.
These tests drive real WebSocket connections against the real server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from gateway.couch import Database
from gateway.eager_write import nothing_queued
from gateway.ws.hub import SharedFeed
from gateway.ws.server import ChangesServerProtocol
from tests.ws.conftest import Client, StopsReading, WsServer, sleep


def _count_asks(monkeypatch: Any) -> list[Any]:
    """The connections the hub asks for a socket (``direct_socket``), call by call."""
    asked: list[Any] = []
    original = ChangesServerProtocol.direct_socket

    def counting(self: ChangesServerProtocol, feed: SharedFeed) -> Any:
        asked.append(self)
        return original(self, feed)

    monkeypatch.setattr(ChangesServerProtocol, "direct_socket", counting)
    return asked


def _only_feed(server: WsServer) -> SharedFeed:
    (feed,) = server.service.hub.feeds.values()
    return feed


def _server_side(server: WsServer, index: int = 0) -> ChangesServerProtocol:
    connections: list[ChangesServerProtocol] = sorted(
        server.service.factory.connections, key=lambda c: c.transport.getPeer().port)
    return connections[index]


async def _subscribed(server: WsServer, make_user: Any, db: Database, count: int) -> list[Client]:
    token = await server.login(await make_user())
    clients = []
    for n in range(count):
        client = await server.connect(token)
        assert (await client.subscribe(f"s{n}", db.name))["type"] == "subscribed"
        clients.append(client)
    return clients


async def test_a_subscriber_whose_socket_took_the_whole_frame_is_not_asked_again(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    asked = _count_asks(monkeypatch)
    clients = await _subscribed(ws_server, make_user, db, 3)
    feed = _only_feed(ws_server)
    assert feed.direct == {}
    await db.save({"_id": "a"})
    for client in clients:
        assert (await client.next("change"))["id"] == "a"
    assert len(asked) == 3
    assert set(feed.direct) == set(ws_server.service.factory.connections)
    assert all(sock is conn.transport.socket for conn, sock in feed.direct.items())
    for doc_id in ("b", "c"):
        await db.save({"_id": doc_id})
        for client in clients:
            assert (await client.next("change"))["id"] == doc_id
    assert len(asked) == 3, "subscribers on the roster were asked again"
    seqs = {sub.last_seq for conn in ws_server.service.factory.connections
            for sub in conn.subs.values()}
    assert len(seqs) == 1 and seqs != {None}


async def _client_pings(client: Client, server_side: ChangesServerProtocol) -> None:
    client.send({"type": "ping", "data": 7})
    assert (await client.next("pong"))["data"] == 7


async def _server_pings(client: Client, server_side: ChangesServerProtocol) -> None:
    ponged: Deferred[None] = Deferred()
    server_side.onPong = lambda payload: ponged.called or ponged.callback(None)
    server_side.sendPing()
    await ponged  # the client's answer, which arrives after the ping left


async def _socket_backs_up(client: Client, server_side: ChangesServerProtocol) -> None:
    server_side.pauseProducing()
    server_side.resumeProducing()


async def _other_feed_writes(client: Client, server_side: ChangesServerProtocol) -> None:
    server_side._write_frame(server_side.factory.prepareMessage(b'{"type":"pong"}').payloadHybi)
    assert (await client.next("pong"))["type"] == "pong"


@pytest.mark.parametrize("event", [_client_pings, _server_pings, _socket_backs_up,
                                   _other_feed_writes])
async def test_a_write_a_message_or_flow_control_takes_a_subscriber_off_until_asked_again(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any,
    event: Callable[[Client, ChangesServerProtocol], Awaitable[None]],
) -> None:
    asked = _count_asks(monkeypatch)
    (client,) = await _subscribed(ws_server, make_user, db, 1)
    server_side = _server_side(ws_server)
    feed = _only_feed(ws_server)
    await db.save({"_id": "first"})
    assert (await client.next("change"))["id"] == "first"
    assert server_side in feed.direct and len(asked) == 1
    await event(client, server_side)
    assert server_side not in feed.direct
    await db.save({"_id": "second"})
    assert (await client.next("change"))["id"] == "second"
    assert len(asked) == 2, "a subscriber taken off the roster must be asked again"
    assert server_side in feed.direct
    client.check()


async def test_unsubscribing_or_closing_takes_a_subscriber_off(
    ws_server: WsServer, db: Database, make_user: Any
) -> None:
    leaving, closing, staying = await _subscribed(ws_server, make_user, db, 3)
    feed = _only_feed(ws_server)
    await db.save({"_id": "first"})
    for client in (leaving, closing, staying):
        assert (await client.next("change"))["id"] == "first"
    assert len(feed.direct) == 3
    leaving.send({"type": "unsubscribe", "id": "s0"})
    assert (await leaving.next("unsubscribed"))["id"] == "s0"
    await closing.close()
    for _ in range(100):
        if len(feed.subscribers) == 1:
            break
        await sleep(ws_server.reactor, 0.01)
    assert list(feed.direct) == list(feed.subscribers)
    await db.save({"_id": "second"})
    assert (await staying.next("change"))["id"] == "second"
    assert [m["id"] for m in leaving.messages if m["type"] == "change"] == ["first"]


async def test_the_roster_only_ever_holds_sockets_a_direct_write_may_go_to(
    make_server: Any, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """Under mixed traffic (client messages, server pings, a reader that stops and
    resumes, unsubscribing and subscribing again, small socket buffers) every socket the
    hub writes to directly is one its connection would have offered at that moment,
    and every client gets every change, whole and in order."""
    server: WsServer = await make_server(socket_send_buffer=16 * 1024)
    violations: list[str] = []
    direct_sends = 0
    original = server.service.hub.send_each
    may_write = ChangesServerProtocol.direct_socket  # not the counting one below

    def checked(sockets: Any, frame: bytes) -> list[int]:
        nonlocal direct_sends
        owners = {conn.transport.socket: conn for conn in server.service.factory.connections
                  if conn.transport is not None}
        for sock in sockets:
            conn = owners.get(sock)
            feeds = [feed for feed in conn.by_feed] if conn is not None else []
            if conn is None or not any(feed.direct.get(conn) is sock or
                                       may_write(conn, feed) is sock
                                       for feed in feeds):
                violations.append(f"no direct write allowed on {sock}")
            elif not nothing_queued(conn.transport) or conn._paused or conn._ending:
                violations.append(f"bytes queued or paused on {sock}")
        direct_sends += len(sockets)
        return original(sockets, frame)

    monkeypatch.setattr(server.service.hub, "send_each", checked)
    asked = _count_asks(monkeypatch)
    token = await server.login(await make_user())
    healthy = await server.connect(token)
    pinging = await server.connect(token)
    pinged = await server.connect(token)
    churning = await server.connect(token)
    slow = await server.connect(token, protocol=StopsReading)
    for n, client in enumerate((healthy, pinging, pinged, churning)):
        assert (await client.subscribe(f"s{n}", db.name, include_docs=True))["type"] == "subscribed"
    slow.send({"type": "subscribe", "id": "slow", "db": db.name, "include_docs": True})
    pinged_side = next(conn for conn in server.service.factory.connections
                       if conn.transport.getPeer().port == pinged.protocol.transport.getHost().port)
    blob = "y" * 6000
    resubscribed_after = ""
    for batch in range(10):
        await db.bulk_save([{"_id": f"b{batch}-{i}", "blob": blob} for i in range(4)])
        pinging.send({"type": "ping", "data": batch})
        pinged_side.sendPing()
        if batch == 3:
            churning.send({"type": "unsubscribe", "id": "s3"})
        if batch == 6:
            resubscribed_after = (await churning.next("unsubscribed"))["id"]
            assert (await churning.subscribe("again", db.name))["type"] == "subscribed"
        await healthy.collect_changes(4)
    assert resubscribed_after == "s3"
    slow.protocol.transport.resumeProducing()
    expected = [m["id"] for m in healthy.messages if m["type"] == "change"]
    assert len(expected) == 40
    for client in (pinging, pinged, slow):
        got = await client.collect_changes(40)
        assert [c["id"] for c in got] == expected
        assert all(c["doc"]["blob"] == blob for c in got)
        client.check()
    for _ in range(500):  # the last pong may follow the last change
        pongs = [m["data"] for m in pinging.messages if m["type"] == "pong"]
        if len(pongs) == 10:
            break
        await sleep(server.reactor, 0.01)
    assert pongs == list(range(10))
    assert violations == []
    assert direct_sends > len(asked), "the roster was never used"
