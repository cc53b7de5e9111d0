"""Broadcasts whose send loop is split between threads reach every subscriber, in order."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.couch import Database
from gateway.send_threads import SendThreads
from tests.ws.conftest import WsServer, stop_server


def helper_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("wallaby-send-")}


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
