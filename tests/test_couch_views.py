"""Views, _all_docs and Mango against the real server."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.couch import BadRequest, CouchError, Database, NotFound


@pytest.fixture
def design() -> dict[str, Any]:
    return {
        "_id": "_design/d",
        "views": {
            "by_tag": {
                "map": "function (doc) { if (doc.tag) { emit([doc.tag, doc.n], doc.n); } }",
                "reduce": "_sum",
            },
            "by_n": {"map": "function (doc) { if (doc.n !== undefined) { emit(doc.n, null); } }"},
        },
    }


async def _populate(db: Database, design: dict[str, Any]) -> None:
    await db.save(design)
    docs: list[dict[str, Any]] = [
        {"_id": f"doc{n:02d}", "tag": "odd" if n % 2 else "even", "n": n} for n in range(10)
    ]
    await db.bulk_save(docs)


async def test_view_rows_and_metadata(db: Database, design: dict[str, Any]) -> None:
    await _populate(db, design)
    rows = await db.view("_design/d/_view/by_n")
    assert isinstance(rows, list)
    assert [r["key"] for r in rows] == list(range(10))
    assert rows.total_rows == 10
    assert rows.offset == 0
    short = await db.view("d/by_n", limit=3, skip=2)
    assert [r["key"] for r in short] == [2, 3, 4]
    assert short.offset == 2


async def test_count_is_an_alias_of_limit(db: Database, design: dict[str, Any]) -> None:
    await _populate(db, design)
    assert len(await db.view("d/by_n", count=4)) == 4


async def test_json_encoded_keys_and_ranges(db: Database, design: dict[str, Any]) -> None:
    await _populate(db, design)
    exact = await db.view("d/by_tag", key=["odd", 3], reduce=False)
    assert [r["id"] for r in exact] == ["doc03"]
    ranged = await db.view(
        "d/by_tag", startkey=["even", 2], endkey=["even", 6], reduce=False, inclusive_end=False
    )
    assert [r["key"] for r in ranged] == [["even", 2], ["even", 4]]
    new_names = await db.view("d/by_tag", start_key=["odd", 7], end_key=["odd", {}], reduce=False)
    assert [r["key"][1] for r in new_names] == [7, 9]
    descending = await db.view("d/by_n", descending=True, limit=2)
    assert [r["key"] for r in descending] == [9, 8]


async def test_keys_are_posted(db: Database, design: dict[str, Any]) -> None:
    await _populate(db, design)
    rows = await db.view("d/by_n", keys=[7, 1, 42], include_docs=True)
    assert [r["key"] for r in rows] == [7, 1]
    assert rows[0]["doc"]["_id"] == "doc07"


async def test_reduce_and_group(db: Database, design: dict[str, Any]) -> None:
    await _populate(db, design)
    total = await db.view("d/by_tag")
    assert total[0]["value"] == sum(range(10))
    grouped = await db.view("d/by_tag", group_level=1)
    assert {tuple(r["key"]): r["value"] for r in grouped} == {("even",): 20, ("odd",): 25}
    per_key = await db.view("d/by_tag", group=True, startkey=["odd"], endkey=["odd", {}])
    assert len(per_key) == 5


async def test_all_docs_paging(db: Database) -> None:
    await db.bulk_save([{"_id": f"k{i}"} for i in range(7)])
    page1 = await db.all_docs(limit=3)
    assert [r["id"] for r in page1] == ["k0", "k1", "k2"]
    page2 = await db.all_docs(startkey=page1[-1]["id"], skip=1, limit=3)
    assert [r["id"] for r in page2] == ["k3", "k4", "k5"]
    assert page2.total_rows == 7
    picked = await db.all_docs(keys=["k6", "missing"])
    assert picked[0]["id"] == "k6" and picked[1].get("error") == "not_found"


async def test_view_errors(db: Database, design: dict[str, Any], couch_backend: Any) -> None:
    await _populate(db, design)
    with pytest.raises(NotFound):
        await db.view("d/nope")
    with pytest.raises(ValueError, match="view name"):
        await db.view("not a view")
    if couch_backend.is_pouchdb:
        pytest.skip("pouchdb-server ignores invalid view parameters; CouchDB answers 400")
    with pytest.raises(CouchError) as bad:
        await db.view("d/by_n", group="maybe")
    assert bad.value.status == 400


async def test_find_with_index(db: Database) -> None:
    await db.bulk_save([{"_id": f"p{i}", "type": "person", "age": 20 + i} for i in range(6)])
    index = await db.create_index(["age"], name="by-age")
    assert index["result"] in ("created", "exists")
    found = await db.find({"type": "person", "age": {"$gte": 23}}, fields=["_id", "age"],
                          sort=[{"age": "asc"}], limit=2)
    assert [d["age"] for d in found["docs"]] == [23, 24]
    assert set(found["docs"][0]) == {"_id", "age"}
    with pytest.raises(BadRequest):
        await db.find({"age": {"$nonsense": 1}})


async def test_none_is_the_null_key(db: Database) -> None:
    """``key=None`` asks for the rows whose key is JSON ``null`` (a valid CouchDB key)."""
    await db.save({"_id": "_design/k",
                   "views": {"by_k": {"map": "function (doc) { emit(doc.k, null); }"}}})
    await db.bulk_save([{"_id": "a", "k": None}, {"_id": "b", "k": 1}, {"_id": "c", "k": None},
                        {"_id": "d", "k": "x"}])
    assert sorted(r["id"] for r in await db.view("k/by_k", key=None)) == ["a", "c"]
    assert [r["id"] for r in await db.view("k/by_k", startkey=None, endkey=None)] == ["a", "c"]
    assert len(await db.view("k/by_k")) == 4  # not passing a key still means all rows
