"""F4: resumes from a seq the shared feed remembers are served from memory."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.couch import Database
from gateway.ws import outbox as outbox_module
from gateway.ws import server as server_module
from gateway.ws.hub import PreparedChange, RecentChanges
from tests.ws.conftest import WsServer, sleep
from tests.ws.resume_support import resume_point, resume_while_writing, spy_on_catch_ups


def _change(seq: Any, doc_id: str = "d", size: int = 10) -> PreparedChange:
    return PreparedChange(doc_id, "1-a", seq, None, size, 0.0)


def _count_sends(monkeypatch: Any) -> list[int]:
    """The size of every frame write (``_write_frame``) from now on."""
    sends: list[int] = []
    original = server_module.ChangesServerProtocol._write_frame

    def counting(self: Any, data: bytes) -> None:
        sends.append(len(data))
        original(self, data)

    monkeypatch.setattr(server_module.ChangesServerProtocol, "_write_frame", counting)
    return sends


async def _beyond_the_feeds_memory(
    ws_server: WsServer, db: Database, token: str, prefix: str, count: int
) -> list[dict[str, Any]]:
    """Write ``count`` documents while a watcher's feed remembers only its last 5
    changes; returns the changes the watcher got, in order."""
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)
    (feed,) = ws_server.service.hub.feeds.values()
    feed.recent.max_changes = 5
    await db.bulk_save([{"_id": f"{prefix}{i:04d}"} for i in range(count)])
    return await watcher.collect_changes(count)


def test_recent_changes_equality_lookup_and_eviction() -> None:
    ring = RecentChanges(max_changes=3, max_bytes=1000)
    assert ring.after("0") is None  # not started
    ring.start("s0")
    assert ring.after("s0") == []
    changes = [_change(f"s{i}", f"d{i}") for i in range(1, 6)]
    for change in changes:
        ring.append(change)
    # s1, s2 dropped: s2 is the seq the ring follows now, s1 is unknown.
    assert ring.after("s1") is None and ring.after("s0") is None
    assert ring.after("s2") == changes[2:]
    assert ring.after("s3") == changes[3:]
    assert ring.after("s5") == []
    assert ring.after("s9") is None and ring.after({"not": "seen"}) is None
    assert ring.after(object()) is None  # not JSON: never served from memory
    # Seqs are never ordered, only looked up: a list seq (CouchDB 1.x style) works too.
    ring.append(_change([7, "x"]))
    assert ring.after([7, "x"]) == []


def test_recent_changes_bounded_by_bytes_and_ambiguous_seqs() -> None:
    ring = RecentChanges(max_changes=100, max_bytes=25)
    ring.start(0)
    for i in range(1, 4):
        ring.append(_change(i, size=10))
    assert len(ring) == 2 and ring.after(1) is not None and ring.after(0) is None
    ring.append(_change(3))  # the same seq twice: ambiguous, never served
    assert ring.after(3) is None


async def test_resume_from_memory_while_writes_race_the_join(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any,
) -> None:
    token = await ws_server.login(await make_user())
    resume_from, expected_after = await resume_point(ws_server, db, token)
    catch_ups = spy_on_catch_ups(monkeypatch, ws_server)
    await resume_while_writing(ws_server, db, token, reactor, resume_from, expected_after)
    assert catch_ups == []  # no upstream catch-up read at all
    assert ws_server.service.metrics.resumes_from_memory == 3


async def test_resume_older_than_the_ring_reads_changes_upstream(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any,
) -> None:
    token = await ws_server.login(await make_user())
    got = await _beyond_the_feeds_memory(ws_server, db, token, "a", 20)
    catch_ups = spy_on_catch_ups(monkeypatch, ws_server)
    old = await ws_server.connect(token)
    assert (await old.subscribe("s", db.name, since=got[2]["seq"]))["type"] == "subscribed"
    # read upstream: the same changes, each once (a sharded database's catch-up read may
    # interleave its shards otherwise than the live feed did)
    assert Counter(c["id"] for c in await old.collect_changes(17)) == Counter(
        c["id"] for c in got[3:])
    assert len(catch_ups) == 1
    recent = await ws_server.connect(token)
    assert (await recent.subscribe("s", db.name, since=got[16]["seq"]))["type"] == "subscribed"
    assert [c["id"] for c in await recent.collect_changes(3)] == [c["id"] for c in got[17:]]
    assert len(catch_ups) == 1  # served from memory
    await db.save({"_id": "live"})
    for client in (old, recent):
        assert (await client.next("change"))["id"] == "live"


async def test_resume_from_the_subscribed_seq_before_any_change(
    ws_server: WsServer, db: Database, make_user: Any,
) -> None:
    await db.save({"_id": "old"})
    token = await ws_server.login(await make_user())
    keeper = await ws_server.connect(token)
    await keeper.subscribe("k", db.name, filter="_doc_ids", doc_ids=["a", "b"])
    first = await ws_server.connect(token)
    answer = await first.subscribe("s", db.name, filter="_doc_ids", doc_ids=["a", "b"])
    start = answer.get("since")
    assert start is not None, answer
    await first.close()
    resumed = await ws_server.connect(token)
    again = await resumed.subscribe("s", db.name, filter="_doc_ids", doc_ids=["a", "b"], since=start)
    assert again["type"] == "subscribed"
    await db.bulk_save([{"_id": "c"}, {"_id": "b"}])
    assert (await resumed.next("change"))["id"] == "b"
    assert ws_server.service.metrics.resumes_from_memory == 1


async def test_sockets_lost_together_resume_from_memory_within_the_linger(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any,
) -> None:
    """Every subscriber of a feed drops at once (a network blip): the feed lingers and
    keeps following the database, the clients come back and resume from memory."""
    token = await ws_server.login(await make_user())
    hub = ws_server.service.hub
    clients = [await ws_server.connect(token) for _ in range(5)]
    for client in clients:
        await client.subscribe("s", db.name)
    await db.bulk_save([{"_id": f"a{i}"} for i in range(5)])
    last = [(await client.collect_changes(5))[-1]["seq"] for client in clients]
    opened = hub.feeds_opened
    for client in clients:
        client.protocol.dropConnection(abort=True)
    for client in clients:
        await client.protocol.closed
    await sleep(reactor, 0.1)
    assert ws_server.feeds() == 1  # lingering
    written = [f"gap{i}" for i in range(4)]
    for doc_id in written:
        await db.save({"_id": doc_id})
    await sleep(reactor, 0.2)

    catch_ups = spy_on_catch_ups(monkeypatch, ws_server)
    back = [await ws_server.connect(token) for _ in clients]
    for client, seq in zip(back, last, strict=True):
        assert (await client.subscribe("s", db.name, since=seq))["type"] == "subscribed"
    await db.save({"_id": "live"})
    for client in back:
        ids = [c["id"] for c in await client.collect_changes(5)]
        # each once, "live" last (CouchDB orders a feed per document only: a sharded
        # database may interleave the four written one by one)
        assert sorted(ids[:4]) == sorted(written) and ids[4] == "live"
    assert catch_ups == [] and hub.feeds_opened == opened
    assert ws_server.service.metrics.resumes_from_memory == len(clients)


async def test_a_lingering_feed_closes_when_nobody_comes_back(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any,
) -> None:
    ws_server.service.hub.linger = 0.3
    client = await ws_server.connect(await ws_server.login(await make_user()))
    await client.subscribe("s", db.name)
    client.protocol.dropConnection(abort=True)
    await client.protocol.closed
    await sleep(reactor, 0.1)
    assert ws_server.feeds() == 1
    for _ in range(100):
        if ws_server.feeds() == 0:
            break
        await sleep(reactor, 0.05)
    assert ws_server.feeds() == 0
    # An unsubscribe or a clean close does not linger.
    other = await ws_server.connect(await ws_server.login(await make_user()))
    await other.subscribe("s", db.name)
    await other.close()
    for _ in range(40):
        if ws_server.feeds() == 0:
            break
        await sleep(reactor, 0.01)
    assert ws_server.feeds() == 0


async def test_a_backlog_from_memory_goes_out_in_few_sends_whole_and_in_order(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any,
) -> None:
    """The frames of a resume's backlog are joined into sends of at most
    ``JOINED_WRITE_BYTES``; every change still arrives once, in feed order, and the
    resume seq is the last one's."""
    monkeypatch.setattr(outbox_module, "JOINED_WRITE_BYTES", 4096)
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)
    await db.bulk_save([{"_id": f"b{i:04d}"} for i in range(60)])
    got = await watcher.collect_changes(60)
    sends = _count_sends(monkeypatch)
    resumed = await ws_server.connect(token)
    assert (await resumed.subscribe("s", db.name, since=got[4]["seq"]))["type"] == "subscribed"
    backlog = await resumed.collect_changes(55)
    assert [c["id"] for c in backlog] == [c["id"] for c in got[5:]]
    assert [c["seq"] for c in backlog] == [c["seq"] for c in got[5:]]
    frames = sends[1:]  # after the "subscribed" answer
    # 55 frames of ~130 bytes: two sends of at most 4 KiB and one frame, not 55
    assert 2 <= len(frames) <= 4, sends
    assert all(size < 4096 + 400 for size in frames), frames
    (conn,) = [c for c in ws_server.service.factory.connections if "s" in c.subs]
    assert conn.subs["s"].last_seq == got[-1]["seq"]
    assert ws_server.service.metrics.resumes_from_memory == 1
    await db.save({"_id": "after"})
    assert (await resumed.next("change"))["id"] == "after"
    resumed.check()


async def test_a_catch_up_read_upstream_goes_out_in_few_sends_whole_and_in_order(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any,
) -> None:
    """A resume older than the feed's memory reads ``_changes`` upstream; each page's
    frames are joined too, and then live changes follow, each once."""
    monkeypatch.setattr(outbox_module, "JOINED_WRITE_BYTES", 4096)
    token = await ws_server.login(await make_user())
    got = await _beyond_the_feeds_memory(ws_server, db, token, "c", 60)
    catch_ups = spy_on_catch_ups(monkeypatch, ws_server)
    sends = _count_sends(monkeypatch)
    resumed = await ws_server.connect(token)
    assert (await resumed.subscribe("s", db.name, since=got[2]["seq"]))["type"] == "subscribed"
    caught_up = await resumed.collect_changes(57)
    assert Counter(c["id"] for c in caught_up) == Counter(c["id"] for c in got[3:])
    assert len(catch_ups) == 1
    assert 2 <= len(sends) - 1 <= 6, sends  # 57 frames of ~130 bytes: a few sends, not 57
    await db.save({"_id": "after"})
    assert (await resumed.next("change"))["id"] == "after"
    resumed.check()
    ids = [m["id"] for m in resumed.messages if m["type"] == "change"]
    assert len(ids) == len(set(ids)) == 58  # each change once


def test_recent_changes_forget_a_repeated_seq_once_it_has_left() -> None:
    """A seq the feed delivered twice (a replay after a reconnect) stays ambiguous while
    the ring holds or follows it, and takes no memory once it has left: its entry used to
    stay for the feed's whole life, one per repeated row."""
    ring = RecentChanges(max_changes=3, max_bytes=10_000)
    ring.start("s0")
    for seq in ("s1", "s2", "s1", "s3"):  # s1 twice
        ring.append(_change(seq))
    assert ring.after("s1") is None and ring.after("s3") == []
    ring.append(_change("s4"))  # the second s1 is the oldest now
    assert ring.after("s1") is None  # it is what the ring follows, and ambiguous
    ring.append(_change("s5"))  # ... now gone too
    assert ring.after("s1") is None and ring.after("s3") is not None
    for number in range(6, 1006):
        ring.append(_change(f"s{number}"))
        ring.append(_change(f"s{number}"))  # every seq repeated
    assert len(ring._index) <= 3 and len(ring._copies) <= 3  # the leak it had
    assert ring.after("s1005") is None  # ambiguous, though the latest
