"""A closed connection is freed as soon as it is closed, not by the cycle collector.

CPython's cycle collector walks every tracked object in a full collection; a gateway
holding 10,000 connections pauses for a few hundred milliseconds each time
(BENCHMARKS.md). Connections that close must not need it: an object freed only by the
collector waits for the next full collection, and would leak forever once long-lived
objects are frozen out of the collector's sight (``gateway.gc_watch``). These tests
switch the collector off, close real connections every way they can close, and check
that nothing of them is left.
"""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import capturedLogs

from gateway.couch import Database
from gateway.http.request import GatewayRequest
from gateway.ws.server import ChangesServerProtocol
from tests.ws.conftest import (
    Client,
    WsServer,
    gateway_with_changes,
    open_client,
    sleep,
    ws_settings,
)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cycle collector switched off (after a collection of what came before)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _watch_built(server: WsServer) -> list[weakref.ref[Any]]:
    """Weak references to every server protocol (and its socket) the factory builds."""
    built: list[weakref.ref[Any]] = []
    factory = server.service.factory
    original = factory.buildProtocol

    def build(addr: Any) -> Any:
        protocol = original(addr)
        built.append(weakref.ref(protocol))
        return protocol

    factory.buildProtocol = build
    return built


def _server_side(server: WsServer, client: Client) -> ChangesServerProtocol:
    port = client.protocol.transport.getHost().port
    (connection,) = [c for c in server.service.factory.connections
                     if c.transport.getPeer().port == port]
    return connection


def _new(types: tuple[type, ...], before: set[int]) -> list[str]:
    """Names of the live objects of these types not in ``before`` (ids)."""
    return sorted(type(o).__name__ for o in gc.get_objects()
                  if isinstance(o, types) and id(o) not in before)


def _alive(refs: list[weakref.ref[Any]]) -> list[str]:
    return [f"{type(obj).__name__} in state {getattr(obj, 'state', '?')}"
            for obj in (ref() for ref in refs) if obj is not None]


async def test_connections_closed_every_way_are_freed_without_the_collector(
    make_server: Any, db: Database, make_user: Any, reactor: Any, collector_off: None
) -> None:
    server: WsServer = await make_server(ws_settings(ws_ping_interval=5.0, ws_auth_recheck=30.0))
    built = _watch_built(server)
    token = await server.login(await make_user())
    clients = [await server.connect(token) for _ in range(5)]
    for n, client in enumerate(clients):
        options = {"since": "0"} if n % 2 else {}
        assert (await client.subscribe(f"s{n}", db.name, **options))["type"] == "subscribed"
    await db.save({"_id": "a"})
    for client in clients:
        assert (await client.next("change", where=lambda m: m["id"] == "a"))["id"] == "a"
    clients[4].send({"type": "unsubscribe", "id": "s4"})
    await clients[4].next("unsubscribed")
    sockets = [weakref.ref(_server_side(server, c).transport) for c in clients]
    ended = _server_side(server, clients[2])
    dropped = _server_side(server, clients[3])
    waits = [c.when_closed() for c in server.service.factory.connections]

    await clients[0].close()                               # the client's close handshake
    clients[1].protocol.dropConnection(abort=True)         # the client's socket is lost
    ended.end(4000, "ended by the server")                 # the server's close handshake
    dropped.dropConnection(abort=True)                     # the server drops the socket
    clients[4].protocol.transport.loseConnection()         # TCP close without a close frame
    del ended, dropped
    with pytest.raises(ConnectionError):                   # a handshake refused
        await server.connect("not-a-session")
    for wait in waits:
        await wait
    del waits
    await server.service.factory.drain_tasks()
    await sleep(reactor, 0.1)

    assert len(built) == 6
    assert _alive(built) == [], "closed connections wait for the cycle collector"
    assert _alive(sockets) == [], "closed sockets wait for the cycle collector"


async def test_a_connection_closed_with_its_feed_still_running_is_freed(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, collector_off: None
) -> None:
    built = _watch_built(ws_server)
    token = await ws_server.login(await make_user())
    staying, leaving = await ws_server.connect(token), await ws_server.connect(token)
    for n, client in enumerate((staying, leaving)):
        assert (await client.subscribe(f"s{n}", db.name))["type"] == "subscribed"
    await db.save({"_id": "a"})
    await leaving.next("change")
    await leaving.close()
    await ws_server.service.factory.drain_tasks()
    await db.save({"_id": "b"})
    assert (await staying.next("change", where=lambda m: m["id"] == "b"))["id"] == "b"
    await sleep(reactor, 0.1)

    assert len(_alive(built)) == 1, "the closed connection waits for the cycle collector"
    assert ws_server.feeds() == 1


async def test_connections_through_the_gateway_leave_nothing_for_the_collector(
    reactor: Any, admin: Any, db: Database, make_user: Any, collector_off: None
) -> None:
    """Served through Twisted Web, the upgrade request is freed once the connection opens.

    It is written to the access log then, with status 101; a refused handshake with its
    status when its socket closes.
    """
    async with gateway_with_changes(reactor, admin, ws_ping_interval=5.0,
                                    ws_auth_recheck=30.0) as gateway:
        user = await make_user()
        token = await admin.login(user.name, user.password)
        url = f"ws://127.0.0.1:{gateway.port}/api/v1/changes"
        watched = (GatewayRequest, ChangesServerProtocol)
        gc.collect()
        before = {id(o) for o in gc.get_objects() if isinstance(o, watched)}
        with capturedLogs() as events:
            clients = [await open_client(reactor, f"{url}?token={token}") for _ in range(3)]
            for n, client in enumerate(clients):
                assert (await client.subscribe(f"s{n}", db.name))["type"] == "subscribed"
            await db.save({"_id": "a"})
            for client in clients:
                await client.next("change")
            assert _new(watched, before) == ["ChangesServerProtocol"] * 3, (
                "open connections hold their upgrade requests")
            waits = [c.when_closed() for c in gateway.changes.factory.connections]
            await sleep(reactor, 0.2)
            await clients[0].close()
            clients[1].protocol.dropConnection(abort=True)
            clients[2].protocol.transport.loseConnection()
            with pytest.raises(ConnectionError):
                await open_client(reactor, f"{url}?token=not-a-session")
            for wait in waits:
                await wait
            del waits
            await gateway.changes.factory.drain_tasks()
            await sleep(reactor, 0.1)
        assert _new(watched, before) == [], "closed connections wait for the cycle collector"
        lines = [e["access"] for e in events if e.get("log_namespace") == "gateway.access"]
        upgrades = sorted((line["status"], line["aborted"]) for line in lines)
        assert upgrades == [(101, False)] * 3 + [(401, False)], lines
        assert all(line["route"] == "mounted" and line["path"] == "/api/v1/changes"
                   and line["duration_ms"] >= 0 for line in lines)
        # Each line names its user, as a REST line does (they said None).
        assert sorted(str(line["user"]) for line in lines) == sorted([user.name] * 3 + ["None"])
        assert all(token not in json.dumps(line) for line in lines)

