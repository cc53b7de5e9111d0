"""Resume with writes racing the join, and every filter kind."""

from __future__ import annotations

from typing import Any

import pytest

import gateway.ws.resume as resume_module
from gateway.couch import Database
from tests.conftest import CouchBackend
from tests.ws.conftest import WsServer, replicate_in, sleep
from tests.ws.resume_support import resume_point, resume_while_writing


async def test_resume_from_seq_while_writes_race_the_join(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    token = await ws_server.login(await make_user())
    resume_from, expected_after = await resume_point(ws_server, db, token)
    await resume_while_writing(ws_server, db, token, reactor, resume_from, expected_after)
    assert ws_server.feeds() == 1


async def test_resume_from_zero_with_include_docs(ws_server: WsServer, db: Database, make_user: Any) -> None:
    await db.bulk_save([{"_id": f"d{i}", "v": i} for i in range(5)])
    doc = await db.get("d2")
    doc["v"] = 99
    await db.save(doc)
    client = await ws_server.connect(await ws_server.login(await make_user()))
    await client.subscribe("s", db.name, since=0, include_docs=True)
    changes = await client.collect_changes(5)
    assert sorted(c["id"] for c in changes) == [f"d{i}" for i in range(5)]
    assert next(c for c in changes if c["id"] == "d2")["doc"]["v"] == 99
    await db.delete(await db.get("d0"))
    deleted = await client.next("change")
    assert deleted["id"] == "d0" and deleted["deleted"] is True


async def test_doc_ids_filter(ws_server: WsServer, db: Database, make_user: Any) -> None:
    client = await ws_server.connect(await ws_server.login(await make_user()))
    answer = await client.subscribe("s", db.name, filter="_doc_ids", doc_ids=["b", "d"])
    assert answer["type"] == "subscribed", answer
    for doc_id in "abcde":
        await db.save({"_id": doc_id})
    assert sorted(c["id"] for c in await client.collect_changes(2)) == ["b", "d"]


async def test_view_filter(ws_server: WsServer, db: Database, make_user: Any) -> None:
    await db.save({"_id": "_design/app", "views": {
        "todo": {"map": "function (doc) { if (doc.kind === 'todo') { emit(doc._id); } }"}}})
    client = await ws_server.connect(await ws_server.login(await make_user()))
    answer = await client.subscribe("s", db.name, filter="_view", view="app/todo")
    assert answer["type"] == "subscribed", answer
    await db.save({"_id": "n1", "kind": "note"})
    await db.save({"_id": "t1", "kind": "todo"})
    assert (await client.next("change"))["id"] == "t1"
    missing = await client.subscribe("m", db.name, filter="_view", view="app/nope")
    assert missing["type"] == "error" and missing["error"] == "not_found" and missing["id"] == "m"


async def test_design_filter_with_query(ws_server: WsServer, db: Database, make_user: Any) -> None:
    await db.save({"_id": "_design/app", "filters": {
        "by_owner": "function (doc, req) { return doc.owner === req.query.owner; }"}})
    client = await ws_server.connect(await ws_server.login(await make_user()))
    answer = await client.subscribe("s", db.name, filter="app/by_owner", query={"owner": "ann"})
    assert answer["type"] == "subscribed", answer
    other = await client.subscribe("o", db.name, filter="app/by_owner", query={"owner": "bob"})
    assert other["feed"] != answer["feed"]
    await db.save({"_id": "x1", "owner": "bob"})
    await db.save({"_id": "x2", "owner": "ann"})
    changes = await client.collect_changes(2)
    by_feed = {c["feed"]: c["id"] for c in changes}
    assert by_feed == {answer["feed"]: "x2", other["feed"]: "x1"}
    missing = await client.subscribe("m", db.name, filter="app/nope")
    assert missing["type"] == "error" and missing["error"] == "not_found"


async def test_selector_filter(ws_server: WsServer, db: Database, make_user: Any,
                               couch_backend: CouchBackend) -> None:
    if couch_backend.is_pouchdb:
        pytest.skip("pouchdb-server has no _selector changes filter (it crashes on one)")
    client = await ws_server.connect(await ws_server.login(await make_user()))
    answer = await client.subscribe("s", db.name, filter="_selector", selector={"kind": "todo"})
    assert answer["type"] == "subscribed", answer
    await db.save({"_id": "n1", "kind": "note"})
    await db.save({"_id": "t1", "kind": "todo"})
    assert (await client.next("change"))["id"] == "t1"


async def test_an_older_branch_that_wins_during_the_join_is_delivered(
    ws_server: WsServer, db: Database, make_user: Any
) -> None:
    """Deleting the winner while an older conflicting branch lives on makes that branch
    the winner: a change of a *lower* revision generation than the catch-up sent. The
    join must not take it for a stale row of a lagging feed."""
    doc: dict[str, Any] = {"_id": "contested"}
    for _ in range(3):
        await db.save(doc)  # 1-, 2-, 3- of the main branch
    winner = doc["_rev"]
    branch = "2-" + "0" * 32  # a shorter conflicting branch: it loses while 3- lives
    await db.bulk_save([{"_id": "contested", "_rev": branch, "side": True}], new_edits=False)
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)  # the shared feed runs before the resume
    client = await ws_server.connect(token)
    await client.subscribe("s", db.name, since=0)
    caught_up = await client.collect_changes(1)
    assert caught_up[0]["changes"][0]["rev"] == winner
    await db.delete({"_id": "contested", "_rev": winner})  # the branch wins now
    demoted = await client.next("change", timeout=10)
    assert demoted["id"] == "contested" and demoted["changes"][0]["rev"] == branch
    assert not demoted.get("deleted")
    await db.save({"_id": "after"})
    assert (await client.next("change", timeout=10))["id"] == "after"  # nothing else first
    client.check()


_AAA, _BBB, _CCC = ("2-" + c * 32 for c in "abc")


async def test_a_stale_conflicting_row_never_follows_the_winner_of_a_resume(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any
) -> None:
    """A conflicting branch replicated in while a subscriber resumes: the live feed brings
    W@2-aaa, then W@2-bbb (the new winner); the catch-up, read after both, sends 2-bbb.
    The buffered 2-aaa is stale: it must not go out after the winner."""
    await db.save({"_id": "other"})
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)  # the shared feed runs
    original, raced = resume_module.fetch_changes, []

    async def racing_fetch(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            await replicate_in(db, watcher, "W", _AAA, _BBB)
            await sleep(reactor, 0.1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(resume_module, "fetch_changes", racing_fetch)
    client = await ws_server.connect(token)
    await client.subscribe("s", db.name, since=0)
    await sleep(reactor, 0.5)
    await db.save({"_id": "zz-after"})
    got = []
    while not got or got[-1][0] != "zz-after":
        change = await client.next("change", timeout=10)
        got.append((change["id"], change["changes"][0]["rev"]))
    assert raced, "the patched fetch_changes never ran: the race was not staged"
    assert (await db.get("W"))["_rev"] == _BBB
    assert [rev for doc, rev in got if doc == "W"] == [_BBB], got
    client.check()


async def test_a_winner_that_returns_to_the_revision_a_resume_sent_is_delivered(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any
) -> None:
    """The catch-up sends c@2-bbb; a conflicting 2-ccc wins during the join and goes out;
    then 2-ccc is deleted and 2-bbb wins again: that change is real and must go out."""
    await db.bulk_save([{"_id": "c", "_rev": _BBB, "v": "b"}], new_edits=False)
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)  # the shared feed runs
    original, raced = resume_module.fetch_changes, []

    async def slow_fetch(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if not raced:
            raced.append(True)
            await db.bulk_save([{"_id": "c", "_rev": _CCC, "v": "c"}], new_edits=False)
            assert (await watcher.next("change"))["changes"][0]["rev"] == _CCC
            await sleep(reactor, 0.2)
        return result

    monkeypatch.setattr(resume_module, "fetch_changes", slow_fetch)
    client = await ws_server.connect(token)
    await client.subscribe("s", db.name, since=0)
    first, second = await client.collect_changes(2)
    assert (first["id"], first["changes"][0]["rev"]) == ("c", _BBB)  # the catch-up
    assert (second["id"], second["changes"][0]["rev"]) == ("c", _CCC)  # live: it won
    await db.delete({"_id": "c", "_rev": _CCC})  # 2-bbb is the winner again
    back = await watcher.next("change")
    assert back["changes"][0]["rev"] == _BBB and not back.get("deleted")
    await db.save({"_id": "after"})
    following = await client.next("change", timeout=10)
    assert (following["id"], following["changes"][0]["rev"]) == ("c", _BBB), following
    assert (await client.next("change", timeout=10))["id"] == "after"
    assert raced, "the patched fetch_changes never ran: the race was not staged"
    client.check()


async def test_resumes_while_the_same_documents_change_fast_never_go_back_in_time(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    """Three documents edited over and over while subscribers resume from 0 (a catch-up
    read upstream, joined with a shared feed that lags behind it). A subscriber may skip
    intermediate revisions (a catch-up shows each document once), but must never see a
    document go back to an older revision, never see one twice, and must end at the
    last revision of each."""
    from twisted.internet.defer import Deferred

    docs: dict[str, dict[str, Any]] = {name: {"_id": name} for name in ("x", "y", "z")}
    for doc in docs.values():
        await db.save(doc)
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)  # the shared feed runs before the resumes

    async def edit(rounds: int) -> None:
        for _ in range(rounds):
            for doc in docs.values():
                await db.save(doc)

    editing = Deferred.fromCoroutine(edit(20))
    clients = []
    for i in range(4):
        client = await ws_server.connect(token)
        await client.subscribe(f"s{i}", db.name, since=0)
        clients.append(client)
    await editing
    final = {name: doc["_rev"] for name, doc in docs.items()}
    await db.save({"_id": "end"})
    for client in clients:
        seen: dict[str, list[str]] = {}
        while True:
            change = await client.next("change", timeout=20)
            if change["id"] == "end":
                break
            seen.setdefault(change["id"], []).append(change["changes"][0]["rev"])
        for name, revs in seen.items():
            generations = [int(rev.split("-")[0]) for rev in revs]
            assert generations == sorted(set(generations)), (name, revs)  # forward, once
            assert revs[-1] == final[name], (name, revs, final[name])
        assert set(seen) == set(final)
        client.check()
