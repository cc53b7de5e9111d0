"""Authentication, authorisation, origins, malformed/oversize messages, limits."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.couch import CouchServer, Database
from gateway.ws.protocol import CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION
from tests.ws.conftest import (
    StopsReading,
    WsServer,
    gateway_with_changes,
    open_client,
    sleep,
    ws_settings,
)


async def test_handshake_requires_valid_credentials(ws_server: WsServer) -> None:
    with pytest.raises(ConnectionError, match="handshake failed"):
        await ws_server.connect()
    with pytest.raises(ConnectionError, match="handshake failed"):
        await ws_server.connect("forged-token")
    assert ws_server.service.metrics.rejected_handshakes == 2


async def test_token_in_query_and_cookie(ws_server: WsServer, make_user: Any, db: Database) -> None:
    token = await ws_server.login(await make_user())
    by_query = await ws_server.connect(token, query=True)
    assert (await by_query.subscribe("s", db.name))["type"] == "subscribed"
    by_cookie = await ws_server.connect(headers={"Cookie": f"wallaby_session={token}"})
    assert (await by_cookie.subscribe("s", db.name))["type"] == "subscribed"


async def test_origin_is_checked(make_server: Any, make_user: Any) -> None:
    server: WsServer = await make_server(ws_settings(cors_origins=("http://app.example",)))
    token = await server.login(await make_user())
    with pytest.raises(ConnectionError, match="handshake failed"):
        await server.connect(token, headers={"Origin": "http://evil.example"})
    await server.connect(token, headers={"Origin": "http://app.example"})
    own = f"http://127.0.0.1:{server.port.getHost().port}"
    await server.connect(token, headers={"Origin": own})


@pytest.mark.parametrize("secure", [{"cookie_secure": True}, {"cookie_samesite": "None"}],
                         ids=["cookie_secure", "samesite_none"])
async def test_behind_tls_an_http_page_of_the_gateways_host_is_not_its_own(
    make_server: Any, make_user: Any, db: Database, secure: dict[str, Any]
) -> None:
    """A ``Secure`` cookie also goes with a handshake from ``http://`` pages of the same
    host, which anyone on the network path can write; such a page must not act as the
    user. The handshake names the host a browser would (``Host: gw.example:<port>``) and
    still goes to 127.0.0.1."""
    server: WsServer = await make_server(ws_settings(**secure))
    token = await server.login(await make_user())
    port = server.port.getHost().port
    named = server.url.replace("127.0.0.1", "gw.example")
    cookie = {"Cookie": f"wallaby_session={token}"}
    with pytest.raises(ConnectionError, match="handshake failed"):
        await open_client(server.reactor, named,
                          headers={**cookie, "Origin": f"http://gw.example:{port}"})
    secure = await open_client(server.reactor, named,
                               headers={**cookie, "Origin": f"https://gw.example:{port}"})
    assert (await secure.subscribe("s", db.name))["type"] == "subscribed"
    local = await server.connect(headers={**cookie, "Origin": f"http://127.0.0.1:{port}"})
    assert (await local.subscribe("s", db.name))["type"] == "subscribed"
    for client in (secure, local):
        client.protocol.dropConnection(abort=True)


async def test_without_tls_the_own_origin_is_its_host_over_http(
    make_server: Any, make_user: Any, db: Database
) -> None:
    server: WsServer = await make_server(ws_settings())
    token = await server.login(await make_user())
    port = server.port.getHost().port
    plain = await open_client(server.reactor, server.url.replace("127.0.0.1", "gw.example"),
                              headers={"Cookie": f"wallaby_session={token}",
                                       "Origin": f"http://gw.example:{port}"})
    assert (await plain.subscribe("s", db.name))["type"] == "subscribed"
    plain.protocol.dropConnection(abort=True)


async def test_an_origin_let_in_by_star_must_bring_its_own_credentials(
    make_server: Any, make_user: Any, db: Database
) -> None:
    """With ``*``, a foreign page's handshake carries the visitor's cookie (SameSite=None)
    or cached Basic credentials by itself: they must not count (cross-site WebSocket
    hijacking). A token the page passes explicitly (``?token=``) does."""
    server: WsServer = await make_server(ws_settings(cors_origins=("http://app.example", "*")))
    token = await server.login(await make_user())
    foreign = {"Origin": "http://evil.example"}
    with pytest.raises(ConnectionError, match="handshake failed"):
        await server.connect(headers={**foreign, "Cookie": f"wallaby_session={token}"})
    with pytest.raises(ConnectionError, match="handshake failed"):
        await server.connect(token, headers=foreign)  # an Authorization header
    explicit = await server.connect(token, query=True, headers=foreign)
    assert (await explicit.subscribe("s", db.name))["type"] == "subscribed"
    listed = await server.connect(headers={"Origin": "http://app.example",
                                           "Cookie": f"wallaby_session={token}"})
    assert (await listed.subscribe("s", db.name))["type"] == "subscribed"


async def test_unauthorised_subscribe_is_refused(
    ws_server: WsServer, db: Database, make_user: Any
) -> None:
    owner, stranger = await make_user(), await make_user()
    await db.set_security({"members": {"names": [owner.name], "roles": []}})
    client = await ws_server.connect(await ws_server.login(stranger))
    answer = await client.subscribe("s", db.name)
    assert answer["type"] == "error" and answer["id"] == "s"
    assert answer["status"] in (401, 403)
    assert ws_server.feeds() == 0
    missing = await client.subscribe("m", "no_such_db_here")
    assert missing["type"] == "error" and missing["error"] == "not_found"
    # the connection carries on
    client.send({"type": "ping"})
    await client.next("pong")


async def test_lost_access_stops_changes_within_recheck_interval(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    server: WsServer = await make_server(ws_settings(ws_auth_recheck=0.3))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    client = await server.connect(await server.login(user))
    assert (await client.subscribe("s", db.name))["type"] == "subscribed"
    await db.save({"_id": "before"})
    assert (await client.next("change"))["id"] == "before"
    await db.set_security({"members": {"names": ["someone_else"], "roles": []}})
    revoked = await client.next("error", timeout=5)
    assert revoked["error"] == "access_revoked" and revoked["id"] == "s"
    await db.save({"_id": "after"})
    await sleep(reactor, 0.5)
    assert not [m for m in client.messages if m.get("id") == "after"]
    assert server.feeds() == 0


async def test_changes_queued_for_a_revoked_subscriber_are_not_sent(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """A backed-up socket holds documents read while the user could read them: once the
    re-check finds access revoked, none of them may follow (docs/websocket.md)."""
    server: WsServer = await make_server(
        ws_settings(ws_auth_recheck=0.5, ws_queue_bytes=64 * 1024 * 1024),
        socket_send_buffer=16 * 1024)
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    stuck = await server.connect(await server.login(user), protocol=StopsReading)
    stuck.send({"type": "subscribe", "id": "s", "db": db.name, "include_docs": True})
    for _ in range(300):
        if server.service.metrics.subscriptions == 1 and server.feeds() == 1:
            break
        await sleep(reactor, 0.01)
    await sleep(reactor, 0.2)
    (conn,) = list(server.service.factory.connections)
    blob = "x" * 16000
    batch = 0
    while not (conn._paused and conn.outbox.bytes > 256 * 1024):  # the kernel's buffers are full
        await db.bulk_save([{"_id": f"pre{batch}-{i}", "blob": blob} for i in range(50)])
        batch += 1
        await sleep(reactor, 0.05)
        assert batch < 400
    await db.set_security({"members": {"names": ["someone_else"], "roles": []}})
    await db.save({"_id": "secret", "card": "4111 1111 1111 1111"})
    for _ in range(500):  # the re-check refused: the subscription is gone
        if not conn.subs:
            break
        await sleep(reactor, 0.01)
    assert not conn.subs
    sent_at_revocation = server.service.metrics.messages_sent
    await sleep(reactor, 1.0)
    stuck.protocol.transport.resumeProducing()  # the client reads again
    await stuck.next("error", where=lambda m: m.get("error") == "access_revoked", timeout=30)
    written_after = server.service.metrics.messages_sent - sent_at_revocation
    assert written_after == 1  # the error, and nothing queued before it
    assert not [m for m in stuck.messages if m.get("id") == "secret"]
    assert conn.outbox.bytes == 0


async def test_ping_frames_from_a_client_that_reads_nothing_hold_one_pong(
    make_server: Any, make_user: Any, reactor: Any
) -> None:
    """Autobahn wrote a pong for every ping frame, outside the send queue's budget: a
    client pinging and reading nothing grew the gateway by what it uploaded (200 MiB in a
    live run). While the socket is backed up only the latest ping is answered, later."""
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=256 * 1024),
                                         socket_send_buffer=16 * 1024)
    client = await server.connect(await server.login(await make_user()), protocol=StopsReading)
    (conn,) = list(server.service.factory.connections)
    for round_ in range(200):  # 100,000 pings: 12.5 MB of pongs if each were answered
        for _ in range(500):
            client.protocol.sendPing(b"p" * 124 + bytes([round_ % 256]))
        await sleep(reactor, 0.01)
    await sleep(reactor, 0.5)
    transport: Any = conn.transport
    held = len(transport.dataBuffer) + sum(len(chunk) for chunk in transport._tempDataBuffer)
    assert conn._paused and held < 256 * 1024, held
    assert conn._pong_due == b"p" * 124 + bytes([199])  # the latest, owed
    assert conn.state == conn.STATE_OPEN  # not a slow consumer: it owes nothing else
    client.protocol.transport.resumeProducing()  # the client reads again: the pong goes
    for _ in range(500):
        if conn._pong_due is None:
            break
        await sleep(reactor, 0.01)
    assert conn._pong_due is None


async def test_a_catch_up_of_large_documents_reads_pages_the_budget_can_hold(
    make_server: Any, make_user: Any, db: Database, reactor: Any
) -> None:
    """A catch-up read 500 rows a page, held whole (parsed and encoded) before the
    connection's budget could act: with large documents one slow subscriber cost the
    gateway hundreds of MiB (24 MiB here against a 256 KiB budget)."""
    import tracemalloc

    budget = 256 * 1024
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=budget))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    for batch in range(4):  # 100 documents of 50 kB
        await db.bulk_save([{"_id": f"d{batch}-{i}", "blob": "z" * 50_000} for i in range(25)])
    client = await server.connect(await server.login(user), protocol=StopsReading)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        client.send({"type": "subscribe", "id": "s", "db": db.name, "since": 0,
                     "include_docs": True})
        for _ in range(1000):
            if server.service.metrics.slow_closed or client.protocol.closed.called:
                break
            await sleep(reactor, 0.02)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert server.service.metrics.slow_closed == 1  # it reads nothing: closed, 4008
    assert peak < 8 * budget, f"{peak / 2**20:.1f} MiB for one slow subscriber"


async def test_a_catch_up_still_delivers_every_change_in_pages_of_any_size(
    make_server: Any, make_user: Any, db: Database
) -> None:
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=64 * 1024))
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    sizes = [10, 30_000, 10, 5_000, 20_000] * 6  # pages shrink and grow as sizes change
    await db.bulk_save([{"_id": f"d{i:02d}", "blob": "z" * size} for i, size in enumerate(sizes)])
    client = await server.connect(await server.login(user))
    assert (await client.subscribe("s", db.name, since=0, include_docs=True))["type"] == \
        "subscribed"
    got = [(await client.next("change"))["id"] for _ in sizes]
    # In CouchDB's order (pouchdb-server's bulk_docs may give a later document of a
    # batch an earlier seq), each once.
    feed = await db.transport.request("GET", [db.name, "_changes"], params={"since": 0})
    assert got == [row["id"] for row in feed["results"]]
    assert sorted(got) == [f"d{i:02d}" for i in range(len(sizes))]


async def test_a_service_identity_couchdb_refuses_is_named_as_the_culprit(
    reactor: Any, pool: Any, admin: CouchServer, db: Database, make_user: Any
) -> None:
    """Shared feeds read as the gateway's own identity. Without one (no COUCHDB_USER), a
    member's subscription was refused 'unauthorized: You are not authorized', as if the
    member were at fault; it is a gateway misconfiguration, and the error says so."""
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    anonymous_service = CouchServer(admin.url, reactor=reactor, pool=pool, timeout=30)
    basic = "Basic " + base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    async with gateway_with_changes(reactor, anonymous_service, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        client = await open_client(reactor, f"ws://127.0.0.1:{gateway.port}/api/v1/changes",
                                   headers={"Authorization": basic})
        try:
            answer = await client.subscribe("s1", db.name, since=0)
        finally:
            await client.close()
    assert answer["type"] == "error" and answer["error"] == "service_refused", answer
    assert answer["status"] == 502 and "COUCHDB_USER" in answer["reason"], answer


async def test_malformed_and_unknown_messages_get_errors(
    ws_server: WsServer, make_user: Any, db: Database
) -> None:
    client = await ws_server.connect(await ws_server.login(await make_user()))
    other = await ws_server.connect(await ws_server.login(await make_user()))
    await other.subscribe("s", db.name)
    cases: list[Any] = [
        b"{not json",
        b"[1, 2]",
        {"type": "launch_missiles"},
        {"type": "subscribe", "id": "x"},
        {"type": "subscribe", "id": "x", "db": "Bad Name"},
        {"type": "subscribe", "id": "x", "db": "ok", "filter": "_doc_ids"},
        {"type": "subscribe", "id": "x", "db": "ok", "doc_ids": ["a"]},
        {"type": "subscribe", "id": "x", "db": "ok", "since": {"no": 1}},
        {"type": "unsubscribe"},
        {"type": "ping", "extra": True},
    ]
    for case in cases:
        client.send(case)
        error = await client.next("error")
        assert error["error"] in ("bad_message", "unknown_type"), error
    client.protocol.sendMessage(b"\x00\x01", isBinary=True)
    assert (await client.next("error"))["error"] == "bad_message"
    client.send({"type": "ping", "data": 1})
    assert (await client.next("pong"))["data"] == 1
    await db.save({"_id": "still-live"})
    assert (await other.next("change"))["id"] == "still-live"
    assert ws_server.service.metrics.invalid_messages == len(cases) + 1


async def test_too_many_subscriptions(make_server: Any, make_user: Any, db: Database) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_subscriptions=3))
    client = await server.connect(await server.login(await make_user()))
    for i in range(3):
        answer = await client.subscribe(f"s{i}", db.name, filter="_doc_ids", doc_ids=[f"d{i}"])
        assert answer["type"] == "subscribed"
    refused = await client.subscribe("s3", db.name)
    assert refused["error"] == "too_many_subscriptions" and refused["id"] == "s3"


async def test_a_bad_message_naming_a_live_subscription_does_not_end_it(
    ws_server: WsServer, make_user: Any, db: Database
) -> None:
    """Errors with an id end that subscription (docs/websocket.md): so an error about a
    message that only names a live subscription carries no id, and the subscription goes on."""
    client = await ws_server.connect(await ws_server.login(await make_user()))
    assert (await client.subscribe("x", db.name))["type"] == "subscribed"
    for bad in ({"type": "subscribe", "id": "x", "db": db.name},
                {"type": "subscribe", "id": "x", "db": "BAD NAME"},
                {"type": "bogus", "id": "x"}):
        client.send(bad)
        error = await client.next("error")
        assert "id" not in error, error
    await db.save({"_id": "still-x"})
    assert (await client.next("change"))["id"] == "still-x"
    client.send({"type": "subscribe", "id": "fresh", "db": "BAD NAME"})
    assert (await client.next("error"))["id"] == "fresh"  # not a live one: the id stays


async def test_one_user_cannot_spread_feeds_over_connections(
    make_server: Any, make_user: Any, db: Database
) -> None:
    """The per-connection limit alone let one user open thousands of upstream feeds
    (100 connections with 32 distinct filters each). Distinct feeds are capped per user;
    any number of that user's subscriptions may share a feed (a kiosk account on many
    screens), and other users are not affected."""
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=3))
    user = await make_user()
    first = await server.connect(await server.login(user))
    second = await server.connect(await server.login(user))
    for client, sub_id in ((first, "a"), (first, "b"), (second, "c")):
        answer = await client.subscribe(sub_id, db.name, filter="_doc_ids", doc_ids=[sub_id])
        assert answer["type"] == "subscribed", answer
    refused = await second.subscribe("d", db.name, filter="_doc_ids", doc_ids=["d"])
    assert refused["error"] == "too_many_feeds" and "per user" in refused["reason"]
    assert refused["status"] == 429  # the user's doing
    assert server.feeds() == 3
    screens = [await server.connect(await server.login(user)) for _ in range(5)]
    for screen in screens:  # the same feeds again: no new upstream feed, not refused
        shared = await screen.subscribe("a", db.name, filter="_doc_ids", doc_ids=["a"])
        assert shared["type"] == "subscribed", shared
    someone_else = await server.connect(await server.login(await make_user()))
    assert (await someone_else.subscribe("x", db.name))["type"] == "subscribed"
    second.send({"type": "unsubscribe", "id": "c"})
    assert (await second.next("unsubscribed"))["id"] == "c"
    again = await second.subscribe("d", db.name, filter="_doc_ids", doc_ids=["d"])
    assert again["type"] == "subscribed"
    await first.close()  # "b" was only there: a closed connection gives its feeds back
    await sleep(server.reactor, 0.2)
    assert (await second.subscribe("e", db.name, filter="_doc_ids",
                                   doc_ids=["e"]))["type"] == "subscribed"


async def _subscribe_and_drop(client: Any, subs: list[str], db: Database) -> list[dict[str, Any]]:
    answers = [await client.subscribe(sub, db.name, filter="_doc_ids", doc_ids=[sub])
               for sub in subs]
    client.protocol.dropConnection(abort=True)  # a TCP reset: no close handshake
    await client.protocol.closed
    return answers


def _upstream_feeds(server: WsServer) -> int:
    return sum(1 for feed in server.service.hub.feeds.values() if feed.service is not None)


async def test_dropped_connections_cannot_pile_up_lingering_feeds(
    make_server: Any, make_user: Any, db: Database,
) -> None:
    """A lost connection's feeds stay open upstream for the linger, to serve its resume.
    They counted toward neither cap, so one user dropping sockets in a loop held any
    number of upstream feeds (384 against a cap of 64 in ten seconds)."""
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=2, ws_max_feeds=4))
    token = await server.login(await make_user())
    first = await _subscribe_and_drop(await server.connect(token), ["a", "b"], db)
    assert [answer["type"] for answer in first] == ["subscribed", "subscribed"]
    # Still this user's feeds while they linger: two new ones are two too many ...
    again = await server.connect(token)
    refused = await again.subscribe("c", db.name, filter="_doc_ids", doc_ids=["c"])
    assert refused["error"] == "too_many_feeds" and "per user" in refused["reason"]
    # ... but the same ones are a resume, served by the lingering feeds.
    resumed = await again.subscribe("a", db.name, filter="_doc_ids", doc_ids=["a"])
    assert resumed["type"] == "subscribed"
    assert _upstream_feeds(server) == 2

    # Many users, each dropping: the global cap holds, lingering feeds give way.
    for round_ in range(4):
        client = await server.connect(await server.login(await make_user()))
        answers = await _subscribe_and_drop(client, [f"u{round_}x", f"u{round_}y"], db)
        assert [answer["type"] for answer in answers] == ["subscribed", "subscribed"], answers
        assert _upstream_feeds(server) <= 4
    await sleep(server.reactor, 0.3)
    assert _upstream_feeds(server) <= 4


async def test_a_lingering_feed_counts_only_while_it_lingers(
    make_server: Any, make_user: Any, db: Database,
) -> None:
    """The first fix kept a lost connection's count for 10 s whatever became of its feed:
    resumed and then unsubscribed, the user's slot stayed taken, and the next new feed was
    refused (a browser page switching lists after a network blip lost it with a 429)."""
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=1))
    token = await server.login(await make_user())
    await _subscribe_and_drop(await server.connect(token), ["a"], db)
    again = await server.connect(token)  # the resume, within the linger
    assert (await again.subscribe("a", db.name, filter="_doc_ids", doc_ids=["a"]))["type"] \
        == "subscribed"
    again.send({"type": "unsubscribe", "id": "a"})
    await again.next("unsubscribed")
    await sleep(server.reactor, 0.2)
    assert not server.service.hub.feeds
    answer = await again.subscribe("b", db.name, filter="_doc_ids", doc_ids=["b"])
    assert answer["type"] == "subscribed", answer
    assert server.service.factory.user_feeds  # b counts
    again.send({"type": "unsubscribe", "id": "b"})
    await again.next("unsubscribed")
    assert not server.service.factory.user_feeds  # nothing left behind


async def test_the_longest_lingering_feed_gives_way_and_its_resume_loses_nothing(
    make_server: Any, make_user: Any, db: Database,
) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_feeds=2))
    user, second, third = await make_user(), await make_user(), await make_user()
    await db.set_security({"members": {"names": [user.name, second.name, third.name],
                                       "roles": []}})
    token = await server.login(user)
    one = await server.connect(token)
    assert (await one.subscribe("s", db.name, since=0, include_docs=True))["type"] == "subscribed"
    await db.bulk_save([{"_id": f"d{i}"} for i in range(3)])
    last = [await one.next("change") for _ in range(3)][-1]["seq"]
    lingering = await _subscribe_and_drop(await server.connect(await server.login(second)),
                                          ["b"], db)  # b lingers first ...
    assert lingering[0]["type"] == "subscribed"
    await sleep(server.reactor, 0.5)
    one.protocol.dropConnection(abort=True)  # ... the full feed half a second later
    await one.protocol.closed
    await db.bulk_save([{"_id": f"e{i}"} for i in range(3)])  # while both linger
    three = await server.connect(await server.login(third))
    assert (await three.subscribe("c", db.name, filter="_doc_ids", doc_ids=["c"]))["type"] \
        == "subscribed"
    kept = {params.doc_ids for (_db, params) in server.service.hub.feeds}
    assert kept == {(), ("c",)}, kept  # b, lingering longest, gave way
    back = await server.connect(token)
    assert (await back.subscribe("s", db.name, since=last, include_docs=True))["type"] \
        == "subscribed"
    resumed = [(await back.next("change"))["id"] for _ in range(3)]
    feed = await db.transport.request("GET", [db.name, "_changes"], params={"since": last})
    assert resumed == [row["id"] for row in feed["results"]]  # CouchDB's order, each once
    assert sorted(resumed) == ["e0", "e1", "e2"]


async def test_upstream_feeds_are_capped_but_shared_ones_still_join(
    make_server: Any, make_user: Any, db: Database
) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_feeds=2))
    client = await server.connect(await server.login(await make_user()))
    for sub_id in ("a", "b"):
        answer = await client.subscribe(sub_id, db.name, filter="_doc_ids", doc_ids=[sub_id])
        assert answer["type"] == "subscribed"
    refused = await client.subscribe("c", db.name, filter="_doc_ids", doc_ids=["c"])
    assert refused["error"] == "too_many_feeds" and refused["id"] == "c"
    assert refused["status"] == 503  # the gateway's capacity
    assert server.feeds() == 2
    other = await server.connect(await server.login(await make_user()))
    shared = await other.subscribe("a2", db.name, filter="_doc_ids", doc_ids=["a"])
    assert shared["type"] == "subscribed"  # the same feed: no new upstream connection
    client.send({"type": "unsubscribe", "id": "b"})
    await client.next("unsubscribed")
    await sleep(server.reactor, 0.1)
    assert (await client.subscribe("c", db.name, filter="_doc_ids",
                                   doc_ids=["c"]))["type"] == "subscribed"
    await db.save({"_id": "c"})
    assert (await client.next("change"))["id"] == "c"


async def test_oversize_message_closes_with_1009(make_server: Any, make_user: Any, db: Database) -> None:
    server: WsServer = await make_server(ws_settings(ws_max_message_bytes=1024))
    client = await server.connect(await server.login(await make_user()))
    bystander = await server.connect(await server.login(await make_user()))
    await bystander.subscribe("s", db.name)
    client.send({"type": "subscribe", "id": "x", "db": "a", "filter": "_doc_ids",
                 "doc_ids": ["y" * 900, "z" * 900]})
    _clean, code, _reason = await client.protocol.closed
    assert code == CLOSE_MESSAGE_TOO_BIG
    await db.save({"_id": "fine"})
    assert (await bystander.next("change"))["id"] == "fine"


async def test_flood_of_invalid_messages_closes_with_1008(ws_server: WsServer, make_user: Any) -> None:
    client = await ws_server.connect(await ws_server.login(await make_user()))
    for _ in range(25):
        client.send(b"garbage")
    _clean, code, _reason = await client.protocol.closed
    assert code == CLOSE_POLICY_VIOLATION
    closing = [m for m in client.messages if m["type"] == "closing"]
    assert closing and closing[0]["code"] == CLOSE_POLICY_VIOLATION
    assert json.dumps(closing[0])
