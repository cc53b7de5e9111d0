"""Subscription bookkeeping of the WebSocket server that mutation testing found untested:
one ``interrupted`` notice per outage, the invalid-message streak reset by a valid message,
a database still re-checked while another subscription follows it, catch-up buffers counted
against the send budget. Real pouchdb-server, real WebSocket server, real sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.couch import CouchServer, Database
from gateway.couch.transport import CouchTransport
from gateway.ws.protocol import CLOSE_SLOW_CONSUMER
from tests.conftest import CouchBackend
from tests.ws.conftest import (
    WsServer,
    server_behind_fault_proxy,
    sleep,
    ws_settings,
)


async def test_one_interrupted_notice_however_many_reconnections_fail(
    couch_backend: CouchBackend, admin: CouchServer, db: Database, make_user: Any, reactor: Any,
) -> None:
    """Kills hub.py ``_on_state`` without ``not feed.interrupted``: every failed
    reconnection attempt (``connecting`` → ``interrupted``) sent subscribers another
    ``feed_state interrupted`` (docs/websocket.md: ``interrupted`` then ``live``)."""
    async with server_behind_fault_proxy(reactor, couch_backend, admin,
                                         ws_settings(feed_heartbeat_ms=300)) as (server, proxy):
        client = await server.connect(await server.login(await make_user()))
        assert (await client.subscribe("s", db.name))["type"] == "subscribed"
        await db.save({"_id": "before"})
        assert (await client.next("change", timeout=10))["id"] == "before"
        await proxy.close()  # CouchDB unreachable: every reconnection is refused at once
        assert (await client.next("feed_state", timeout=10))["state"] == "interrupted"
        # Backoff 0.25-0.5 s, 0.5-1 s, 1-2 s: at least three more attempts fail in 4.5 s.
        await sleep(reactor, 4.5)
        states = [m["state"] for m in client.messages if m["type"] == "feed_state"]
        assert states == ["interrupted"], states


async def test_valid_messages_between_invalid_ones_reset_the_streak(
    ws_server: WsServer, make_user: Any
) -> None:
    """Kills server.py ``onMessage`` without ``self._invalid_streak = 0``: the connection
    is closed after 20 invalid messages *in a row*, not 20 over its life."""
    client = await ws_server.connect(await ws_server.login(await make_user()))
    for round_ in range(3):  # 45 invalid messages, never more than 15 in a row
        for _ in range(15):
            client.send(b"garbage")
        client.send({"type": "ping", "data": round_})
        assert (await client.next("pong", timeout=10)).get("data") == round_
    assert not client.protocol.closed.called
    assert [m for m in client.messages if m["type"] == "closing"] == []


async def test_unsubscribing_one_of_two_subscriptions_keeps_the_other_rechecked(
    make_server: Any, db: Database, make_user: Any, reactor: Any,
) -> None:
    """Kills server.py ``_drop`` unwatching the database while another subscription of
    the same connection still follows it: that one never heard ``access_revoked``
    (docs/websocket.md: within ``WALLABY_WS_AUTH_RECHECK`` seconds)."""
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    client = await server.connect(await server.login(user))
    assert (await client.subscribe("a", db.name))["type"] == "subscribed"
    assert (await client.subscribe("b", db.name, include_docs=True))["type"] == "subscribed"
    client.send({"type": "unsubscribe", "id": "a"})
    assert (await client.next("unsubscribed"))["id"] == "a"
    await db.set_security({"members": {"names": ["someone_else"], "roles": []}})
    revoked = await client.next("error", timeout=5)
    assert revoked["error"] == "access_revoked" and revoked["id"] == "b"


async def test_live_changes_buffered_during_a_catch_up_count_against_the_budget(
    make_server: Any, make_user: Any, db: Database, reactor: Any, monkeypatch: Any,
) -> None:
    """Kills server.py ``_check_budget`` without the joins' buffered bytes: a subscriber
    whose catch-up is slow buffered every live change meanwhile, unbounded by
    ``ws_queue_bytes`` (docs: a connection over its send budget is closed, 4008)."""
    budget = 64 * 1024
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=budget))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    await db.save({"_id": "old"})
    held: Deferred[None] = Deferred()
    original = CouchTransport.request

    async def slow_catch_up(self: CouchTransport, method: str, segments: Any, *args: Any,
                            **kwargs: Any) -> Any:
        params = kwargs.get("params") or {}
        if list(segments)[-1:] == ["_changes"] and params.get("since") == 0:
            await held  # the catch-up's first page takes its time
        return await original(self, method, segments, *args, **kwargs)

    monkeypatch.setattr(CouchTransport, "request", slow_catch_up)
    try:
        client = await server.connect(await server.login(user))
        client.send({"type": "subscribe", "id": "s", "db": db.name, "since": 0,
                     "include_docs": True})
        await sleep(reactor, 0.5)
        for i in range(8):  # 8 x 20 kB live changes buffered behind the held catch-up
            await db.save({"_id": f"live{i}", "blob": "z" * 20_000})
        for _ in range(250):
            if server.service.metrics.slow_closed:
                break
            await sleep(reactor, 0.02)
        assert server.service.metrics.slow_closed == 1
        closing = await client.next("closing", timeout=5)
        assert closing["code"] == CLOSE_SLOW_CONSUMER
    finally:
        if not held.called:
            held.callback(None)
