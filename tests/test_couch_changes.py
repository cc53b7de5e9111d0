"""Changes feeds against the real server: live delivery, filters, sharing, restarts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from gateway.couch import CouchServer, Database
from gateway.couch.changes.backoff import Backoff
from gateway.couch.changes.feed import ChangesFeed
from gateway.couch.changes.subscriptions import ChangeSubscriptions
from tests.conftest import CouchBackend
from tests.support.faultproxy import FaultProxy

FILTER_DDOC = {
    "_id": "_design/app",
    "filters": {"by_kind": "function(doc, req) { return doc.kind === req.query.kind; }"},
    "views": {"blue": {"map": "function(doc) { if (doc.color === 'blue') emit(doc._id); }"}},
}


async def wait_until(reactor: Any, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await deferLater(reactor, 0.05, lambda: None)


async def pause(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class Collector:
    """A Wallaby-style changes callback that records what it gets."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.view_ids: list[str | None] = []

    def __call__(self, changes: list[dict[str, Any]], viewID: str | None = None) -> None:  # noqa: N803
        self.rows.extend(changes)
        self.view_ids.append(viewID)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    def revs(self) -> Counter[tuple[str, str]]:
        return Counter((row["id"], row["changes"][0]["rev"]) for row in self.rows)


def subscriptions(db: Database, **kwargs: Any) -> ChangeSubscriptions:
    kwargs.setdefault("heartbeat", 1.0)
    kwargs.setdefault("backoff", lambda: Backoff(initial=0.2, factor=2, cap=1.0))
    return ChangeSubscriptions(db.transport, db.name, **kwargs)


async def save(db: Database, doc_id: str, **fields: Any) -> tuple[str, str]:
    result = await db.save({"_id": doc_id, **fields})
    return doc_id, result["rev"]


async def test_changes_callback_receives_a_write_live(db: Database, reactor: Any) -> None:
    got = Collector()
    await db.changes(got)
    await save(db, "live-1", title="milk")
    await wait_until(reactor, lambda: "live-1" in got.ids)
    assert got.view_ids[0] is None
    assert got.rows[0]["changes"][0]["rev"].startswith("1-") and "doc" not in got.rows[0]
    await db.unchanges()


async def test_since_now_skips_history_and_since_zero_replays_it(
    db: Database, reactor: Any
) -> None:
    await save(db, "old")
    subs = subscriptions(db)
    try:
        now, zero = Collector(), Collector()
        await subs.subscribe(now, since="now")
        await subs.subscribe(zero, since=0)
        await save(db, "new")
        await wait_until(reactor, lambda: "new" in now.ids and {"old", "new"} <= set(zero.ids))
        # (history from a sharded database comes in no particular order across documents)
        assert now.ids == ["new"] and sorted(zero.ids) == ["new", "old"]
    finally:
        await subs.close()


async def test_filter_function_delivers_only_matching_docs(db: Database, reactor: Any) -> None:
    await db.save(dict(FILTER_DDOC))
    got = Collector()
    await db.changes(got, filter="app/by_kind", kind="keep")
    await save(db, "k1", kind="keep")
    await save(db, "d1", kind="drop")
    await save(db, "d2")
    await save(db, "k2", kind="keep")
    await wait_until(reactor, lambda: {"k1", "k2"} <= set(got.ids))
    await pause(reactor, 0.3)  # room for a row that should not pass
    assert sorted(got.ids) == ["k1", "k2"]
    await db.unchanges(filter="app/by_kind", kind="keep")


async def test_doc_ids_filter(db: Database, reactor: Any) -> None:
    got = Collector()
    await db.changes(got, doc_ids=["c", "a"])
    for doc_id in ("a", "b", "c"):
        await save(db, doc_id)
    await wait_until(reactor, lambda: {"a", "c"} <= set(got.ids))
    await pause(reactor, 0.3)  # room for a row that should not pass
    assert sorted(got.ids) == ["a", "c"]
    await db.unchanges(filter="_doc_ids", doc_ids=["a", "c", "a"])  # the same, normalised
    assert db._subscriptions is not None and db._subscriptions.feed_count == 0


async def test_selector_filter(db: Database, reactor: Any, couch_backend: CouchBackend) -> None:
    if couch_backend.is_pouchdb:
        pytest.skip(
            "pouchdb-server 4.2.0 ignores the selector in a POST _changes body (it answers "
            "404 'missing'); CouchDB documents filter=_selector with the selector in the body"
        )
    got = Collector()
    await db.changes(got, filter="_selector", selector={"color": "red"})
    await save(db, "r1", color="red")
    await save(db, "b1", color="blue")
    await save(db, "r2", color="red")
    await wait_until(reactor, lambda: {"r1", "r2"} <= set(got.ids))
    await pause(reactor, 0.3)  # room for a row that should not pass
    assert sorted(got.ids) == ["r1", "r2"]


async def test_view_filter_passes_the_view_id(db: Database, reactor: Any) -> None:
    await db.save(dict(FILTER_DDOC))
    got = Collector()
    await db.changes(got, filter="_view", view="app/blue")
    await save(db, "b1", color="blue")
    await save(db, "r1", color="red")
    await save(db, "b2", color="blue")
    await wait_until(reactor, lambda: {"b1", "b2"} <= set(got.ids))
    await pause(reactor, 0.3)  # room for a row that should not pass
    assert sorted(got.ids) == ["b1", "b2"]
    assert set(got.view_ids) == {"app/blue"}


async def test_include_docs_delivers_docs(db: Database, reactor: Any) -> None:
    got = Collector()
    await db.changes(got, include_docs=True)
    doc_id, rev = await save(db, "with-doc", title="bread", n=3)
    await wait_until(reactor, lambda: len(got.rows) == 1)
    # (waiting: a feed shows only a document's latest state, so a delete made before
    # the row was read would replace it)
    await db.delete({"_id": doc_id, "_rev": rev})
    await wait_until(reactor, lambda: len(got.rows) == 2)
    first, second = got.rows
    assert first["doc"] == {"_id": "with-doc", "_rev": rev, "title": "bread", "n": 3}
    assert second["deleted"] is True and second["doc"]["_deleted"] is True


async def test_seq_interval_takes_a_number(db: Database, reactor: Any) -> None:
    """CouchDB: seq_interval=N computes the seq of every Nth row only (the others: null)."""
    got = Collector()
    await db.changes(got, since=0, seq_interval=3)
    for name in ("a", "b", "c", "d"):
        await save(db, name)
    await wait_until(reactor, lambda: got.ids == ["a", "b", "c", "d"])
    assert await db.unchanges(got, since=0, seq_interval="3") is True


async def test_unchanges_stops_delivery(db: Database, reactor: Any) -> None:
    got = Collector()
    await db.changes(got, since=0, include_docs=True)
    await save(db, "before")
    await wait_until(reactor, lambda: "before" in got.ids)
    await db.unchanges(since=0, include_docs=True)
    assert db._subscriptions is not None and db._subscriptions.feed_count == 0
    await save(db, "after")
    await pause(reactor, 1.0)
    assert got.ids == ["before"]


async def test_same_options_share_one_connection(db: Database, reactor: Any) -> None:
    subs = subscriptions(db)
    try:
        one, two, other = Collector(), Collector(), Collector()
        await subs.subscribe(one, include_docs=True)
        await subs.subscribe(two, include_docs="true", style="main_only", conflicts=False)
        assert subs.feed_count == 1 and subs.registration_count == 1
        assert subs.callback_count == 2
        await subs.subscribe(other, include_docs=False)
        assert subs.feed_count == 2
        await save(db, "shared")
        await wait_until(
            reactor, lambda: all("shared" in c.ids for c in (one, two, other))
        )
        assert one.ids == two.ids == ["shared"] and "doc" in one.rows[0]
        assert [f.connections for f in subs.feeds] == [1, 1]
        # removing one callback keeps the shared feed for the other
        await subs.unsubscribe(cb=one, include_docs=True)
        assert subs.feed_count == 2
        await save(db, "after")
        await wait_until(reactor, lambda: "after" in two.ids)
        assert "after" not in one.ids
        await subs.unsubscribe(include_docs=True)
        await subs.unsubscribe(include_docs=False)
        assert subs.feed_count == 0 and subs.registration_count == 0
    finally:
        await subs.close()


async def test_unchanges_removes_every_callback_of_the_registration(
    db: Database, reactor: Any
) -> None:
    a, b = Collector(), Collector()
    await db.changes(a, doc_ids=["x"])
    await db.changes(b, filter="_doc_ids", doc_ids=["x", "x"])
    subs = db._subscriptions
    assert subs is not None and subs.feed_count == 1 and subs.callback_count == 2
    await save(db, "x")
    await wait_until(reactor, lambda: "x" in a.ids and "x" in b.ids)
    await db.unchanges(doc_ids=["x"])
    assert subs.feed_count == 0 and subs.callback_count == 0


async def test_explicit_since_joiner_gets_history_once_on_its_own_feed(
    db: Database, reactor: Any
) -> None:
    subs = subscriptions(db)
    try:
        live, history, late = Collector(), Collector(), Collector()
        await subs.subscribe(live)
        first = await save(db, "d1")
        await wait_until(reactor, lambda: "d1" in live.ids)
        await subs.subscribe(history, since=0)
        assert subs.feed_count == 2
        await wait_until(reactor, lambda: "d1" in history.ids)
        history_too = Collector()
        await subs.subscribe(history_too, since=0)  # that feed has moved on: a third
        assert subs.feed_count == 3
        await subs.subscribe(late, since="now")  # joins a running feed
        assert subs.feed_count == 3
        second = await save(db, "d2")
        await wait_until(
            reactor,
            lambda: all("d2" in c.ids for c in (live, history, history_too, late)),
        )
        await pause(reactor, 0.3)
        assert history.revs() == Counter([first, second])
        assert history_too.revs() == Counter([first, second])
        assert live.revs() == Counter([first, second])
        assert late.revs() == Counter([second])
        await subs.unsubscribe(since=0)  # both since=0 feeds go
        assert subs.feed_count == 1
    finally:
        await subs.close()


async def test_a_raising_callback_does_not_kill_the_feed(db: Database, reactor: Any) -> None:
    calls: list[str] = []

    def flaky(changes: list[dict[str, Any]], viewID: str | None = None) -> None:  # noqa: N803
        calls.extend(row["id"] for row in changes)
        raise RuntimeError("callback bug")

    good = Collector()
    subs = subscriptions(db)
    try:
        await subs.subscribe(flaky)
        await subs.subscribe(good, since=0, include_docs=True)
        await save(db, "one")
        await save(db, "two")
        await wait_until(reactor, lambda: "two" in calls and "two" in good.ids)
        assert subs.feeds[0].state == "live"
    finally:
        await subs.close()


async def test_missing_database_fails_the_subscription(db: Database) -> None:
    subs = ChangeSubscriptions(db.transport, db.name + "_missing")
    from gateway.couch import NotFound

    with pytest.raises(NotFound):
        await subs.subscribe(Collector())
    assert subs.feed_count == 0 and subs.registration_count == 0
    await subs.close()


async def test_feed_survives_a_server_restart_exactly_once(
    db: Database, reactor: Any, couch_backend: CouchBackend
) -> None:
    server = couch_backend.require_killable()
    states: list[tuple[str, str | None]] = []
    got = Collector()
    feed = ChangesFeed(
        db.transport,
        db.name,
        {"include_docs": True},
        since="now",
        on_changes=lambda rows, _seq: got(rows),
        on_state=lambda state, detail: states.append((state, detail)),
        heartbeat=1.0,
        backoff=Backoff(initial=0.2, factor=2, cap=1.0),
    )
    feed.startService()
    expected: list[tuple[str, str]] = []
    try:
        await feed.ready()
        for i in range(3):
            expected.append(await save(db, f"before-{i}"))
        await wait_until(reactor, lambda: len(got.rows) == 3)
        server.kill()
        await wait_until(reactor, lambda: feed.state != "live")
        await deferToThread(server.restart)
        for i in range(3):
            expected.append(await save(db, f"after-{i}"))
        updated = await db.save({"_id": "before-0", "_rev": expected[0][1], "v": 2})
        expected.append(("before-0", updated["rev"]))
        await wait_until(reactor, lambda: len(got.rows) >= len(expected), timeout=30)
        await pause(reactor, 1.5)  # room for a duplicate to show up
        assert got.revs() == Counter(expected)
        assert feed.connections >= 2 and feed.duplicates_dropped == 0
        names = [state for state, _ in states]
        assert names[:2] == ["connecting", "live"] and "interrupted" in names
        assert names[-1] == "live"
    finally:
        await feed.stopService()
        if server.process is None or server.process.poll() is not None:
            await deferToThread(server.restart)
    assert states[-1] == ("stopped", None)


async def test_conflict_changes_that_keep_the_winner_are_delivered(
    db: Database, reactor: Any
) -> None:
    """Adding and deleting a losing revision are changes of their own, as CouchDB lists them."""
    got = Collector()
    await db.changes(got)
    doc_id, winner = await save(db, "contested")
    await wait_until(reactor, lambda: got.ids == [doc_id])
    loser = "1-" + "0" * 32  # sorts below any random revision id: it loses
    await db.bulk_save([{"_id": doc_id, "_rev": loser}], new_edits=False)
    await wait_until(reactor, lambda: len(got.rows) == 2)
    await db.delete({"_id": doc_id, "_rev": loser})
    await wait_until(reactor, lambda: len(got.rows) == 3)
    assert got.ids == [doc_id] * 3
    assert [row["changes"][0]["rev"] for row in got.rows] == [winner] * 3
    await db.unchanges()


async def test_a_change_that_keeps_the_winner_after_a_reconnect_is_delivered(
    db: Database, reactor: Any, couch_backend: CouchBackend, pool: Any
) -> None:
    """A resumed connection's repeats are dropped only while it may replay (until its
    first heartbeat): a losing revision deleted later is news, as on the first one."""
    proxy = FaultProxy(reactor, int(couch_backend.url.rsplit(":", 1)[1]))
    proxy.listen()
    through = CouchServer(proxy.url, reactor=reactor, pool=pool, auth=db.transport.auth)
    got = Collector()
    feed = ChangesFeed(through.transport, db.name, {}, since="now",
                       on_changes=lambda rows, _seq: got(rows), heartbeat=0.3,
                       backoff=Backoff(initial=0.1, factor=2, cap=0.5))
    feed.startService()
    try:
        await feed.ready()
        doc_id, _winner = await save(db, "contested")
        await wait_until(reactor, lambda: got.ids == [doc_id])
        loser = "1-" + "0" * 32  # sorts below any random revision id: it loses
        await db.bulk_save([{"_id": doc_id, "_rev": loser}], new_edits=False)
        await wait_until(reactor, lambda: len(got.rows) == 2)
        proxy.reset_all()  # the connection drops; the feed resumes from its last seq
        await wait_until(reactor, lambda: feed.connections >= 2 and feed.state == "live")
        await wait_until(reactor, lambda: not feed._replaying)  # its first heartbeat
        await db.delete({"_id": doc_id, "_rev": loser})  # a change of its own (a new seq)
        await db.save({"_id": "marker"})
        await wait_until(reactor, lambda: "marker" in got.ids)
        assert got.ids == [doc_id, doc_id, doc_id, "marker"]
        assert feed.duplicates_dropped == 0
    finally:
        await feed.stopService()
        await proxy.close()


async def test_now_joiner_never_gets_history_from_a_replaying_feed(
    db: Database, reactor: Any
) -> None:
    """A ``since="now"`` callback does not join a ``since=0`` feed still replaying history."""
    await db.bulk_save([{"_id": f"old{i:03d}"} for i in range(60)])
    subs = subscriptions(db)
    slow_rows: list[str] = []

    def slow(changes: list[dict[str, Any]], viewID: str | None = None) -> Any:  # noqa: N803
        slow_rows.extend(row["id"] for row in changes)
        return deferLater(reactor, 0.05, lambda: None)  # holds its feed back

    try:
        await subs.subscribe(slow, since=0)
        now = Collector()
        await subs.subscribe(now, since="now")
        assert subs.feed_count == 2
        await db.save({"_id": "new"})
        await wait_until(reactor, lambda: "new" in now.ids and "new" in slow_rows)
        assert now.ids == ["new"]
    finally:
        await subs.close()


async def test_cancelling_a_registration_leaves_nothing_registered(
    db: Database, reactor: Any
) -> None:
    subs = subscriptions(db)
    got = Collector()
    try:
        pending = subs.subscribe(got, since="now", include_docs=True)
        pending.cancel()
        with pytest.raises(CancelledError):
            await pending
        await wait_until(reactor, lambda: subs.feed_count == 0)
        assert subs.callback_count == 0
        await db.save({"_id": "after"})
        await pause(reactor, 0.5)
        assert got.rows == []
    finally:
        await subs.close()


async def test_unchanges_takes_the_callback_first_and_says_whether_it_removed(
    db: Database, reactor: Any
) -> None:
    """The original Wallaby's ``unchanges(cb, filter=…)`` form; a miss answers ``False``."""
    one, two = Collector(), Collector()
    await db.changes(one, since="now", doc_ids=["x"])
    await db.changes(two, since="now", doc_ids=["x"])
    assert await db.unchanges(one, doc_ids=["x"]) is True
    assert await db.unchanges(one, doc_ids=["x"]) is False  # already gone
    assert await db.unchanges(two, doc_ids=["y"]) is False  # other options
    await db.save({"_id": "x"})
    await wait_until(reactor, lambda: two.ids == ["x"])
    assert one.rows == []
    assert await db.unchanges(since="now", doc_ids=["x"]) is True
    assert db._feeds().feed_count == 0


async def test_stopping_a_feed_at_once_logs_no_unhandled_error(
    db: Database, reactor: Any
) -> None:
    import gc

    from twisted.logger import globalLogPublisher

    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or "Unhandled" in str(event.get("log_format")):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(5):
            got = Collector()
            registering = db.changes(got, since=0)
            await db.unchanges(since=0)
            await registering
        gc.collect()
        await pause(reactor, 0.1)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
