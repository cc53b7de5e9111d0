"""Broadcasts whose send loop is split between threads (``WALLABY_WS_SEND_THREADS``):
every subscriber gets every change once and in order, also when the service stops
mid-stream, and the threads start and stop with the live-changes service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from gateway.couch import Database
from gateway.send_threads import SendThreads
from tests.test_send_threads import helper_threads
from tests.ws.conftest import WsServer, sleep, stop_server, ws_settings


async def test_split_send_loops_deliver_every_change_once_in_order(
    make_server: Callable[..., Awaitable[WsServer]], db: Database, make_user: Any,
) -> None:
    before = helper_threads()
    threads = SendThreads(3, min_slice=1)
    server = await make_server(send_threads=threads)
    assert len(helper_threads() - before) == 2
    token = await server.login(await make_user())
    clients = [await server.connect(token) for _ in range(9)]
    for number, client in enumerate(clients):
        assert (await client.subscribe(f"s{number}", db.name))["type"] == "subscribed"
    for batch in range(6):
        await db.bulk_save([{"_id": f"d{batch}-{i}"} for i in range(5)])
    orders = [[c["id"] for c in await client.collect_changes(30)] for client in clients]
    assert sorted(orders[0]) == sorted(f"d{b}-{i}" for b in range(6) for i in range(5))
    assert all(order == orders[0] for order in orders)
    assert threads.split_loops > 0
    # Every socket took its frames from the split loop itself: none fell back to its
    # transport's queue, which would have taken it off the roster of direct sockets.
    (feed,) = server.service.hub.feeds.values()
    assert set(feed.direct) == set(server.service.factory.connections)
    assert len(feed.direct) == 9
    await db.save({"_id": "last"})
    for client in clients:
        assert (await client.next("change"))["id"] == "last"
    await stop_server(server)
    assert helper_threads() == before  # stopped with the live-changes service


async def test_stop_while_split_broadcasts_stream(
    reactor: Any, make_server: Callable[..., Awaitable[WsServer]], db: Database, make_user: Any,
) -> None:
    before = helper_threads()
    threads = SendThreads(2)  # the real min_slice: 600 sockets make two slices of 300
    server = await make_server(send_threads=threads)
    token = await server.login(await make_user())
    clients = []
    for number in range(600):
        client = await server.connect(token)
        client.send({"type": "subscribe", "id": f"s{number}", "db": db.name})
        clients.append(client)
    for client in clients:
        await client.next("subscribed")
    writing = True

    async def write() -> None:
        n = 0
        while writing:
            await db.save({"_id": f"w{n:05d}"})
            n += 1

    writer = defer.ensureDeferred(write())
    for _ in range(1200):
        if threads.split_loops >= 3:
            break
        await sleep(reactor, 0.05)
    assert threads.split_loops >= 3
    await server.service.stopService()  # as SIGTERM's shutdown does, mid-stream
    writing = False
    await writer
    assert helper_threads() == before
    for client in clients:
        await client.protocol.closed
        kinds = [m["type"] for m in client.messages]
        ids = [m["id"] for m in client.messages if m["type"] == "change"]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), ids  # in order, once
        assert "closing" in kinds, kinds[-5:]
    # every subscriber saw the same changes up to its closing message
    first = [m["id"] for m in clients[0].messages if m["type"] == "change"]
    assert len(first) >= 3
    for client in clients[1:]:
        ids = [m["id"] for m in client.messages if m["type"] == "change"]
        assert ids == first[: len(ids)] or first == ids[: len(first)]


async def test_the_service_starts_as_many_helpers_as_the_setting_says(
    make_server: Callable[..., Awaitable[WsServer]],
) -> None:
    before = helper_threads()
    server = await make_server(ws_settings(ws_send_threads=3))
    assert server.service.send_threads.threads == 3
    assert len(helper_threads() - before) == 2
    one = await make_server(ws_settings(ws_send_threads=1))
    assert one.service.send_threads.threads == 1
    assert len(helper_threads() - before) == 2  # 1: the reactor thread alone
