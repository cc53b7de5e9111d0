"""Resume with writes racing the join, and every filter kind."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from gateway.couch import Database
from tests.conftest import CouchBackend
from tests.ws.conftest import WsServer, sleep


async def _writer(db: Database, prefix: str, count: int, reactor: Any) -> list[str]:
    ids = []
    for i in range(count):
        await db.save({"_id": f"{prefix}{i:04d}", "n": i})
        ids.append(f"{prefix}{i:04d}")
        if i % 5 == 0:
            await sleep(reactor, 0.001)
    return ids


async def test_resume_from_seq_while_writes_race_the_join(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    user = await make_user()
    token = await ws_server.login(user)
    # A live subscriber keeps the shared feed open (the join happens on a running feed).
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)
    first = await ws_server.connect(token)
    await first.subscribe("s", db.name)
    await db.bulk_save([{"_id": f"a{i:04d}"} for i in range(30)])
    got = await first.collect_changes(30)
    resume_from = got[14]["seq"]
    expected_after = [c["id"] for c in got[15:]]
    await first.close()

    for round_ in range(3):
        writing = Deferred.fromCoroutine(_writer(db, f"r{round_}-", 60, reactor))
        await sleep(reactor, 0.02)
        client = await ws_server.connect(token)
        answer = await client.subscribe("s", db.name, since=resume_from)
        assert answer["type"] == "subscribed" and answer["since"] == resume_from
        written = await writing
        wanted = expected_after + written
        changes = await client.collect_changes(len(wanted))
        ids = [c["id"] for c in changes]
        assert ids == wanted, f"gap or duplicate at the join (round {round_})"
        # nothing more (no duplicate arrives late)
        await db.save({"_id": f"end{round_}"})
        assert (await client.next("change"))["id"] == f"end{round_}"
        expected_after = [*wanted, f"end{round_}"]
        await client.close()
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
    assert [c["id"] for c in await client.collect_changes(2)] == ["b", "d"]


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
