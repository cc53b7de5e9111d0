"""Views (GET and POST keys, reduce/group, include_docs, paging) and Mango."""

from __future__ import annotations

from tests.conftest import CouchBackend
from tests.rest.conftest import Scenario

DDOC = {
    "views": {
        "by_kind": {
            "map": "function(doc) { if (doc.kind) { emit(doc.kind, doc.n); } }",
            "reduce": "_sum",
        }
    }
}


async def _seed(scenario: Scenario) -> str:
    db = scenario.db.name
    await scenario.admin.put(f"/api/v1/db/{db}/docs/_design%2Fstats", json_body=DDOC)
    docs = [{"_id": f"d{i}", "kind": "odd" if i % 2 else "even", "n": i} for i in range(10)]
    await scenario.member_client.post(f"/api/v1/db/{db}/bulk_docs", json_body={"docs": docs})
    return f"/api/v1/db/{db}/views/stats/by_kind"


async def test_view_reduce_group_and_map_parameters(scenario: Scenario) -> None:
    view, client = await _seed(scenario), scenario.member_client
    total = await client.get(view)
    assert total.status == 200 and total.json["rows"][0]["value"] == 45
    grouped = await client.get(f"{view}?group=true")
    assert {r["key"]: r["value"] for r in grouped.json["rows"]} == {"even": 20, "odd": 25}
    level = await client.get(f"{view}?group_level=1")
    assert len(level.json["rows"]) == 2
    mapped = await client.get(f"{view}?reduce=false&key=%22odd%22&include_docs=true&limit=2")
    rows = mapped.json["rows"]
    assert len(rows) == 2 and all(r["doc"]["kind"] == "odd" for r in rows)
    page = await client.get(
        f"{view}?reduce=false&startkey=%22odd%22&endkey=%22odd%22&skip=3&descending=false"
    )
    assert [r["value"] for r in page.json["rows"]] == [7, 9]
    inclusive = await client.get(
        f"{view}?reduce=false&start_key=%22even%22&end_key=%22odd%22&inclusive_end=false"
    )
    assert {r["key"] for r in inclusive.json["rows"]} == {"even"}
    keys = await client.post(f"{view}?reduce=false", json_body={"keys": ["even"]})
    assert len(keys.json["rows"]) == 5
    missing = await client.get(f"/api/v1/db/{scenario.db.name}/views/stats/nope")
    assert missing.status == 404
    bad = await client.get(f"{view}?group_level=-2")
    assert bad.status == 400
    bad_keys = await client.post(view, json_body={"keys": "even"})
    assert bad_keys.status == 400


async def test_mango_find_and_index_management(scenario: Scenario) -> None:
    await _seed(scenario)
    db, client = scenario.db.name, scenario.member_client
    found = await client.post(f"/api/v1/db/{db}/find", json_body={
        "selector": {"kind": "odd", "n": {"$gt": 4}}, "fields": ["_id", "n"], "limit": 10,
    })
    assert found.status == 200
    assert sorted(d["n"] for d in found.json["docs"]) == [5, 7, 9]
    invalid = await client.post(f"/api/v1/db/{db}/find", json_body={"selector": 3})
    assert invalid.status == 400 and "selector" in invalid.json["reason"]
    unknown = await client.post(f"/api/v1/db/{db}/find", json_body={"selector": {}, "x": 1})
    assert unknown.status == 400
    stale = await client.post(f"/api/v1/db/{db}/find", json_body={
        "selector": {"kind": "odd", "n": {"$gt": 4}}, "fields": ["n"], "stale": "ok"})
    assert stale.status == 200 and sorted(d["n"] for d in stale.json["docs"]) == [5, 7, 9]

    made = await scenario.admin.post(f"/api/v1/db/{db}/indexes", json_body={
        "index": {"fields": ["n"]}, "name": "by-n", "ddoc": "idx", "type": "json",
    })
    assert made.status == 200 and made.json["result"] in ("created", "exists")
    listed = await client.get(f"/api/v1/db/{db}/indexes")
    assert any(i.get("name") == "by-n" for i in listed.json["indexes"])
    sorted_find = await client.post(f"/api/v1/db/{db}/find", json_body={
        "selector": {"n": {"$gte": 7}}, "sort": [{"n": "asc"}], "use_index": "idx",
    })
    assert [d["n"] for d in sorted_find.json["docs"]] == [7, 8, 9]
    removed = await scenario.admin.delete(f"/api/v1/db/{db}/indexes/idx/by-n")
    assert removed.status == 200
    # CouchDB takes the design document with or without its prefix: the same place.
    prefixed = await scenario.admin.post(f"/api/v1/db/{db}/indexes", json_body={
        "index": {"fields": ["kind"]}, "name": "by-kind", "ddoc": "_design/grp"})
    assert prefixed.status == 200 and prefixed.json["id"] == "_design/grp"
    listed = await client.get(f"/api/v1/db/{db}/indexes")
    assert [i["ddoc"] for i in listed.json["indexes"] if i["name"] == "by-kind"] == ["_design/grp"]
    assert (await scenario.admin.delete(f"/api/v1/db/{db}/indexes/grp/by-kind")).status == 200


async def test_null_keys_select_the_null_key_and_bad_json_is_400(
    scenario: Scenario, couch_backend: CouchBackend
) -> None:
    """``key=null`` is JSON's null, a key like any other: not "no key"."""
    db, client = scenario.db.name, scenario.member_client
    await scenario.admin.put(f"/api/v1/db/{db}/docs/_design%2Fk", json_body={
        "views": {"by_k": {"map": "function(doc) { emit(doc.k === undefined ? null : doc.k); }"}}})
    await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={
        "docs": [{"_id": "none"}, {"_id": "one", "k": 1}, {"_id": "two", "k": 2}]})
    view = f"/api/v1/db/{db}/views/k/by_k"
    null_key = await client.get(f"{view}?key=null")
    assert null_key.status == 200 and [r["id"] for r in null_key.json["rows"]] == ["none"]
    up_to_null = await client.get(f"{view}?endkey=null")
    assert [r["id"] for r in up_to_null.json["rows"]] == ["none"]
    from_null = await client.get(f"{view}?startkey=null&limit=1")
    assert [r["id"] for r in from_null.json["rows"]] == ["none"]
    no_doc = await client.get(f"/api/v1/db/{db}/all_docs?key=null")
    assert no_doc.status == 200
    if not couch_backend.is_pouchdb:  # PouchDB's allDocs reads key: null as no key at all
        assert no_doc.json["rows"] == []
    # Deeper than Python's recursion limit is read and sent on (gateway/deep_json.py) ...
    deep = await client.get(f"{view}?key={'%5B' * 2000}{'%5D' * 2000}")
    assert deep.status == 200 and deep.json["rows"] == []
    # ... to its own limit, which is named.
    too_deep = await client.post(view, data=b'{"keys": [' + b"[" * 10_001 + b"]" * 10_001 + b"]}",
                                 headers={"Content-Type": "application/json"})
    assert too_deep.status == 400 and too_deep.json["error"] == "bad_request"
    assert "nested deeper than 10000 levels" in too_deep.json["reason"]
    # Python's JSON extensions are not JSON: refused here, never sent on.
    for word in ("NaN", "Infinity", "-Infinity", "%5BNaN%5D"):
        not_json = await client.get(f"{view}?key={word}")
        assert not_json.status == 400 and "must be JSON" in not_json.json["reason"], word
    body = await client.post(view, data=b'{"keys": [NaN]}',
                             headers={"Content-Type": "application/json"})
    assert body.status == 400 and "not valid JSON" in body.json["reason"]
