"""A lost connection holds its user's slot for a feed only while that
feed lingers for it (hub.py ``release``: ``on_linger_end`` is called at once when the feed
does not linger, e.g. because other subscribers still follow it). Real pouchdb-server,
real sockets."""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from tests.ws.conftest import WsServer, sleep, ws_settings


async def test_a_lost_socket_on_a_shared_feed_frees_its_users_slot_at_once(
    make_server: Any, make_user: Any, db: Database,
) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=1))
    alice = await server.login(await make_user())
    bob = await server.login(await make_user())
    other = await server.connect(bob)  # keeps the shared feed followed
    assert (await other.subscribe("k", db.name))["type"] == "subscribed"
    lost = await server.connect(alice)
    assert (await lost.subscribe("s", db.name))["type"] == "subscribed"
    lost.protocol.dropConnection(abort=True)  # a TCP reset: the subscriber is *lost*
    await lost.protocol.closed
    await sleep(server.reactor, 0.3)  # the server has seen the connection go
    # The feed did not linger (Bob still follows it): Alice's one slot is free again.
    again = await server.connect(alice)
    answer = await again.subscribe("t", db.name, filter="_doc_ids", doc_ids=["x"])
    assert answer["type"] == "subscribed", answer
