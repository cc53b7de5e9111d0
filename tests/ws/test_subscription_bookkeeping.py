"""Subscription bookkeeping of the WebSocket server that mutation testing found untested:
one ``interrupted`` notice per outage, the invalid-message streak reset by a valid message,
a database still re-checked while another subscription follows it, catch-up buffers counted
against the send budget; the 20th invalid message in a row closing with 1008, a revocation
ending only the refused database's subscriptions, an unsubscribe while the subscribe is
being authorized or its feed starts leaving nothing behind, a feed failing for good ending
its subscription by id, the feed cap counting every session of a user, the send queue
never holding more than its budget. Real pouchdb-server, real WebSocket server, real
sockets."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from gateway.couch import CouchServer, Database
from gateway.couch.transport import CouchTransport
from gateway.errors import NotFound
from gateway.ws.protocol import CLOSE_POLICY_VIOLATION, CLOSE_SLOW_CONSUMER
from tests.conftest import OPEN_SECURITY, CouchBackend, unique_name
from tests.ws.conftest import (
    StopsReading,
    WsServer,
    server_behind_fault_proxy,
    sleep,
    wait_until,
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


async def test_the_twentieth_invalid_message_in_a_row_closes_with_1008(
    ws_server: WsServer, make_user: Any, reactor: Any
) -> None:
    """docs/websocket.md: 1008 after 20 invalid messages in a row — not 21."""
    client = await ws_server.connect(await ws_server.login(await make_user()))
    for _ in range(19):
        client.send(b"garbage")
        await client.next("error")
    await sleep(reactor, 0.2)
    assert not client.protocol.closed.called
    client.send(b"garbage")
    await wait_until(reactor, lambda: client.protocol.closed.called, 3.0)
    _clean, code, _reason = client.protocol.closed.result
    assert code == CLOSE_POLICY_VIOLATION
    assert [m["type"] for m in client.messages].count("error") == 20


async def test_a_revocation_on_one_database_keeps_the_subscriptions_of_another(
    make_server: Any, admin: CouchServer, db: Database, make_user: Any, reactor: Any
) -> None:
    """access_revoked ends the subscriptions of the database refused, only those."""
    other_db = admin.database(unique_name())
    await other_db.create()
    try:
        await other_db.set_security(OPEN_SECURITY)
        server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
        user = await make_user()
        await db.set_security({"members": {"names": [user.name], "roles": []}})
        client = await server.connect(await server.login(user))
        assert (await client.subscribe("lost", db.name))["type"] == "subscribed"
        assert (await client.subscribe("kept", other_db.name))["type"] == "subscribed"
        await db.set_security({"members": {"names": ["someone_else"], "roles": []}})
        revoked = await client.next("error", timeout=5)
        assert revoked["error"] == "access_revoked" and revoked["id"] == "lost"
        await sleep(reactor, 0.8)  # two more re-check intervals
        (conn,) = list(server.service.factory.connections)
        assert list(conn.subs) == ["kept"]
        await other_db.save({"_id": "still-here"})
        change = await client.next("change")
        assert change["id"] == "still-here"
        assert not [m for m in client.messages if m["type"] == "error" and m.get("id") == "kept"]
    finally:
        await other_db.close()


async def _unsubscribe_while_held(server: WsServer, db: Database, user: Any, reactor: Any,
                                  owner: Any, name: str) -> Any:
    """Subscribe while ``owner.name`` (an awaited step of the subscribe) is held, unsubscribe
    meanwhile, then let the step finish; returns the client."""
    holding, release = [], []
    original = getattr(owner, name)

    async def held(*args: Any, **kwargs: Any) -> Any:
        from twisted.internet.defer import Deferred
        gate: Deferred[None] = Deferred()
        holding.append(True)
        release.append(gate)
        await gate
        return await original(*args, **kwargs)

    setattr(owner, name, held)
    client = await server.connect(await server.login(user))
    client.send({"type": "subscribe", "id": "s", "db": db.name})
    await wait_until(reactor, lambda: bool(holding))
    client.send({"type": "unsubscribe", "id": "s"})
    assert (await client.next("unsubscribed"))["id"] == "s"
    setattr(owner, name, original)
    release[0].callback(None)
    await sleep(reactor, 0.5)
    return client


@pytest.mark.parametrize("owner, step", [("authorizations", "authorize"), ("hub", "ready")])
async def test_a_subscription_unsubscribed_while_it_starts_opens_nothing(
    make_server: Any, db: Database, make_user: Any, reactor: Any, owner: str, step: str,
) -> None:
    """Unsubscribed while it is authorized, or while its feed starts: not confirmed, and
    no feed, re-check pair or per-user feed count is left behind."""
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
    factory = server.service.factory
    client = await _unsubscribe_while_held(server, db, await make_user(), reactor,
                                           getattr(factory, owner), step)
    await db.save({"_id": "after"})
    await sleep(reactor, 0.5)
    assert [m["type"] for m in client.messages] == ["unsubscribed"]
    await wait_until(reactor, lambda: server.feeds() == 0)
    assert factory.rechecks.pairs == 0
    assert factory.user_feeds == {}
    (conn,) = list(factory.connections)
    assert not conn.by_feed and not conn.subs


async def test_a_feed_that_fails_for_good_ends_its_subscription_by_id(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """docs/websocket.md: a permanent error of the upstream feed (a 4xx answer, the
    database deleted) ends every subscription on it with an ``error``. pouchdb-server
    never ends a feed that way, so the hub is told as its feed would tell it."""
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
    factory = server.service.factory
    client = await server.connect(await server.login(await make_user()))
    assert (await client.subscribe("a", db.name))["type"] == "subscribed"
    assert (await client.subscribe("b", db.name, include_docs=True))["type"] == "subscribed"
    (conn,) = list(factory.connections)
    feed_a = conn.subs["a"].feed
    server.service.hub._on_error(feed_a, NotFound("Database does not exist."))
    error = await client.next("error")
    assert error["id"] == "a" and error["status"] == 404, error
    await wait_until(reactor, lambda: list(conn.subs) == ["b"] and server.feeds() == 1)
    assert feed_a not in conn.by_feed
    await db.save({"_id": "later"})
    change = await client.next("change")
    assert change["id"] == "later" and "doc" in change
    await sleep(reactor, 0.3)
    assert [m for m in client.messages if m["type"] == "change"] == [change]
    owner = conn._owner()
    assert sum(factory.user_feeds[owner].values()) == 1


async def test_the_feed_cap_counts_every_session_of_one_user(
    make_server: Any, make_user: Any, db: Database, reactor: Any
) -> None:
    """``ws_max_user_feeds`` is per user on all connections: a second login (another
    session cookie, another credential key) must not bring a second allowance."""
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=2))
    user = await make_user()
    first_token = await server.login(user)
    # pouchdb-server's session cookie carries its issue time in whole seconds: a second
    # login within the same second gets the same cookie (the same credential key).
    await sleep(reactor, 1.1)
    second_token = await server.login(user)
    assert first_token != second_token
    first = await server.connect(first_token)
    second = await server.connect(second_token)
    for sub_id in ("a", "b"):
        answer = await first.subscribe(sub_id, db.name, filter="_doc_ids", doc_ids=[sub_id])
        assert answer["type"] == "subscribed", answer
    refused = await second.subscribe("c", db.name, filter="_doc_ids", doc_ids=["c"])
    assert refused["type"] == "error" and refused["error"] == "too_many_feeds", refused
    assert server.feeds() == 2


async def test_the_send_queue_never_holds_more_than_its_budget(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """docs/websocket.md, close 4008: "more than ``WALLABY_WS_QUEUE_BYTES`` queued" —
    the connection is closed as soon as its queue passes the budget, not later."""
    budget = 256 * 1024
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=budget),
                                         socket_send_buffer=16 * 1024)
    client = await server.connect(await server.login(await make_user()), protocol=StopsReading)
    client.send({"type": "subscribe", "id": "s", "db": db.name, "include_docs": True})
    await wait_until(reactor, lambda: server.feeds() == 1 and server.service.metrics.subscriptions == 1)
    await sleep(reactor, 0.2)
    (conn,) = list(server.service.factory.connections)
    blob = "z" * 8000
    most = 0
    for batch in range(200):
        if conn._ending:
            break
        await db.bulk_save([{"_id": f"q{batch}-{i}", "blob": blob} for i in range(4)])
        await sleep(reactor, 0.03)
        if not conn._ending:
            most = max(most, conn.outbox.bytes)
    assert conn._ending and server.service.metrics.slow_closed == 1
    assert most <= budget, f"{most} bytes queued on a {budget}-byte budget"
