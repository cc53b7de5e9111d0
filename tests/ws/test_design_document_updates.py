"""A design filter's (or ``_view`` filter's) code, as a subscriber gets it after the
design document changes.

CouchDB (and pouchdb-server) read a design filter's code once, when a ``_changes``
request starts: a client that opens its feed after the design document was updated gets
the new code. The shared feed of a design filter used to be keyed without the design
document's revision, so a subscriber that joined (or resumed on) a feed opened before the
update got the old code, for as long as the feed had any subscriber (on a busy
application: for ever), while its catch-up reads, and ``_changes`` asked directly, used
the new one. Feeds are now keyed by the revision each subscriber was authorised against.
"""

from __future__ import annotations

from typing import Any

from gateway.couch import CouchServer, Database
from gateway.ws.protocol import FeedParams
from tests.ws.conftest import WsServer, sleep, ws_settings

OLD = "function (doc, req) { return doc.kind === 'a'; }"
NEW = "function (doc, req) { return doc.kind === 'b'; }"


async def _upstream_ids(admin: CouchServer, db: Database, since: Any = 0, **params: Any) -> list[str]:
    """What ``_changes`` (normal feed) says now, asked directly as the admin."""
    answer = await admin.transport.request(
        "GET", [db.name, "_changes"], params={"since": since, **params})
    return [row["id"] for row in answer["results"]]


async def _ids_within(client: Any, reactor: Any, seconds: float) -> list[str]:
    await sleep(reactor, seconds)
    return [m["id"] for m in client.messages if m["type"] == "change"]


async def test_a_subscriber_joining_after_a_filter_update_gets_the_new_filter(
    ws_server: WsServer, db: Database, admin: CouchServer, make_user: Any, reactor: Any
) -> None:
    await db.save({"_id": "_design/app", "filters": {"f": OLD}})
    token = await ws_server.login(await make_user())
    early = await ws_server.connect(token)
    assert (await early.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"

    ddoc = await db.get("_design/app")
    ddoc["filters"]["f"] = NEW
    await db.save(ddoc)

    late = await ws_server.connect(token)
    answer = await late.subscribe("s", db.name, filter="app/f")
    assert answer["type"] == "subscribed", answer
    await db.save({"_id": "x-a", "kind": "a"})
    await db.save({"_id": "x-b", "kind": "b"})

    # CouchDB's own answer for the filter as it is now: only the 'b' document.
    assert await _upstream_ids(admin, db, filter="app/f") == ["x-b"]
    got = await _ids_within(late, reactor, 2.0)
    assert got == ["x-b"], (
        f"subscribed after the filter was changed, but got {got} (the old filter's "
        f"choice) on shared feed {answer['feed']}")


async def test_a_resume_after_a_filter_update_agrees_with_changes_since(
    ws_server: WsServer, db: Database, admin: CouchServer, make_user: Any, reactor: Any
) -> None:
    """The brief's 'does the catch-up agree with the live path': a subscriber resumes
    from a seq it was given; what it receives after that seq must be what
    ``_changes?since=<seq>&filter=...`` says."""
    await db.save({"_id": "_design/app", "filters": {"f": OLD}})
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)  # keeps the shared feed open
    assert (await watcher.subscribe("w", db.name, filter="app/f"))["type"] == "subscribed"
    client = await ws_server.connect(token)
    assert (await client.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"
    await db.save({"_id": "p1", "kind": "a"})
    since = (await client.next("change"))["seq"]
    await client.close()

    ddoc = await db.get("_design/app")
    ddoc["filters"]["f"] = NEW
    await db.save(ddoc)

    resumed = await ws_server.connect(token)
    answer = await resumed.subscribe("s", db.name, filter="app/f", since=since)
    assert answer["type"] == "subscribed", answer
    await db.save({"_id": "x-a", "kind": "a"})
    await db.save({"_id": "x-b", "kind": "b"})

    expected = await _upstream_ids(admin, db, since=since, filter="app/f")
    assert expected == ["x-b"]
    got = await _ids_within(resumed, reactor, 2.0)
    assert got == expected, (
        f"resumed from {since!r}: got {got}, _changes?since={since!r}&filter=app/f "
        f"says {expected}")


async def test_a_view_filter_joined_after_the_map_changed_uses_the_new_map(
    ws_server: WsServer, db: Database, admin: CouchServer, make_user: Any, reactor: Any
) -> None:
    await db.save({"_id": "_design/app", "views": {"v": {
        "map": "function (doc) { if (doc.kind === 'a') { emit(doc._id); } }"}}})
    token = await ws_server.login(await make_user())
    early = await ws_server.connect(token)
    assert (await early.subscribe("s", db.name, filter="_view", view="app/v"))["type"] == "subscribed"

    ddoc = await db.get("_design/app")
    ddoc["views"]["v"]["map"] = "function (doc) { if (doc.kind === 'b') { emit(doc._id); } }"
    await db.save(ddoc)

    late = await ws_server.connect(token)
    assert (await late.subscribe("s", db.name, filter="_view", view="app/v"))["type"] == "subscribed"
    await db.save({"_id": "x-a", "kind": "a"})
    await db.save({"_id": "x-b", "kind": "b"})

    assert await _upstream_ids(admin, db, filter="_view", view="app/v") == ["x-b"]
    got = await _ids_within(late, reactor, 2.0)
    assert got == ["x-b"], f"subscribed after the map was changed, but got {got}"


async def _update_filter(db: Database, code: str) -> None:
    ddoc = await db.get("_design/app")
    ddoc["filters"]["f"] = code
    await db.save(ddoc)


async def test_the_old_feed_keeps_its_subscribers_and_closes_after_the_last(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    """The changeover: subscribers of the old revision stay on their feed (as an open
    CouchDB feed keeps its code), those of the new one share another, and the old feed
    is gone, with its user's count, once its last subscriber leaves."""
    await db.save({"_id": "_design/app", "filters": {"f": OLD}})
    user = await make_user()
    token = await ws_server.login(user)
    early = await ws_server.connect(token)
    old_feed = (await early.subscribe("s", db.name, filter="app/f"))["feed"]
    await _update_filter(db, NEW)
    late = await ws_server.connect(token)
    later = await ws_server.connect(token)
    new_feed = (await late.subscribe("s", db.name, filter="app/f"))["feed"]
    assert (await later.subscribe("s", db.name, filter="app/f"))["feed"] == new_feed
    assert new_feed != old_feed and ws_server.feeds() == 2
    factory = ws_server.service.factory
    assert sorted(factory.user_feeds[f"user:{user.name}"].values()) == [1, 2]

    await db.save({"_id": "x-a", "kind": "a"})
    await db.save({"_id": "x-b", "kind": "b"})
    assert await _ids_within(early, reactor, 1.0) == ["x-a"]
    assert await _ids_within(later, reactor, 0.0) == ["x-b"]

    early.send({"type": "unsubscribe", "id": "s"})
    await early.next("unsubscribed")
    await sleep(reactor, 0.2)
    feeds = ws_server.service.hub.feeds
    assert [feed.id for feed in feeds.values()] == [new_feed]
    assert [params.design_rev for _db, params in feeds] == [(await db.get("_design/app"))["_rev"]]
    assert list(factory.user_feeds[f"user:{user.name}"].values()) == [2]
    await late.close()
    await later.close()
    await sleep(reactor, 0.2)
    assert not ws_server.service.hub.feeds and not factory.user_feeds


async def test_a_changeover_counts_two_feeds_for_the_user(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """Two revisions of one filter are two upstream feeds, and count so toward
    ``ws_max_user_feeds``: a user at the cap joins the new revision once the
    subscriptions of the old one have left."""
    server: WsServer = await make_server(ws_settings(ws_max_user_feeds=1))
    await db.save({"_id": "_design/app", "filters": {"f": OLD}})
    token = await server.login(await make_user())
    early = await server.connect(token)
    assert (await early.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"
    same = await server.connect(token)  # the same revision shares the user's one feed
    assert (await same.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"
    await _update_filter(db, NEW)
    late = await server.connect(token)
    refused = await late.subscribe("s", db.name, filter="app/f")
    assert refused["type"] == "error" and refused["error"] == "too_many_feeds", refused
    assert "per user" in refused["reason"] and refused["status"] == 429
    assert server.feeds() == 1
    await early.close()
    await same.close()
    await sleep(reactor, 0.2)
    assert server.feeds() == 0
    answer = await late.subscribe("s", db.name, filter="app/f")
    assert answer["type"] == "subscribed", answer
    await db.save({"_id": "x-a", "kind": "a"})
    await db.save({"_id": "x-b", "kind": "b"})
    assert await _ids_within(late, reactor, 1.0) == ["x-b"]


async def test_subscriptions_without_a_design_document_share_across_updates(
    ws_server: WsServer, db: Database, make_user: Any
) -> None:
    """No design document, no revision: ``_doc_ids``, ``_selector`` (where the server
    has it) and unfiltered subscriptions keep sharing their feeds whatever happens to
    design documents."""
    await db.save({"_id": "_design/app", "filters": {"f": OLD}})
    token = await ws_server.login(await make_user())
    options: list[dict[str, Any]] = [{}, {"filter": "_doc_ids", "doc_ids": ["x-a"]}]
    first = await ws_server.connect(token)
    before = [(await first.subscribe(f"s{i}", db.name, **o))["feed"] for i, o in enumerate(options)]
    await _update_filter(db, NEW)
    second = await ws_server.connect(token)
    after = [(await second.subscribe(f"s{i}", db.name, **o))["feed"] for i, o in enumerate(options)]
    assert after == before and ws_server.feeds() == 2
    assert all(params.design_rev is None for _db, params in ws_server.service.hub.feeds)


def test_feed_params_of_two_revisions_are_two_keys() -> None:
    params = FeedParams.build(filter="app/f", query={"k": "v"})
    assert params.design_rev is None
    one, two = params.at_revision("1-a"), params.at_revision("2-b")
    assert one != two and one == params.at_revision("1-a")
    assert hash(one) == hash(params.at_revision("1-a"))
    assert one.at_revision(None) == params
    assert one.changes_params() == params.changes_params() == {"filter": "app/f", "k": "v"}
