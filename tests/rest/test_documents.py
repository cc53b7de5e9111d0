"""Databases, documents, bulk routes and all_docs through the gateway."""

from __future__ import annotations

from typing import Any

from tests.conftest import CouchBackend, unique_name
from tests.rest.conftest import Scenario


async def test_database_info_create_delete(scenario: Scenario, couch_backend: CouchBackend) -> None:
    db = scenario.db.name
    info = await scenario.member_client.get(f"/api/v1/db/{db}")
    assert info.status == 200 and info.json["db_name"] == db
    name = unique_name("created")
    created = await scenario.admin.put(f"/api/v1/db/{name}")
    assert created.status == 201 and created.json == {"ok": True}
    again = await scenario.admin.put(f"/api/v1/db/{name}")
    assert again.status == 412 and again.json["error"] == "file_exists"
    deleted = await scenario.admin.delete(f"/api/v1/db/{name}")
    assert deleted.status == 200
    missing = await scenario.admin.get(f"/api/v1/db/{name}")
    assert missing.status == 404 and missing.json["error"] == "not_found"
    bad = await scenario.admin.put("/api/v1/db/Bad-Name")
    assert bad.status == 400
    # CouchDB 3 takes the cluster's shards and replicas at creation.
    sharded = unique_name("sharded")
    made = await scenario.admin.put(f"/api/v1/db/{sharded}?q=2&n=1")
    assert made.status in (201, 202), made.json
    assert (await scenario.admin.delete(f"/api/v1/db/{sharded}")).status in (200, 202)
    no_shards = await scenario.admin.put(f"/api/v1/db/{unique_name('zero')}?q=0")
    assert no_shards.status == 400


async def test_non_admin_cannot_create_or_delete_databases(scenario: Scenario) -> None:
    # The gateway refuses it itself (pouchdb-server crashed on it; CouchDB answers 401/403).
    deleted = await scenario.member_client.delete(f"/api/v1/db/{scenario.db.name}")
    assert deleted.status == 403
    created = await scenario.member_client.put(f"/api/v1/db/{unique_name('nope')}")
    assert created.status == 403


async def test_if_match_takes_the_weak_etag_of_a_compressed_answer(scenario: Scenario) -> None:
    """A browser asks for gzip, so a large document's ETag comes back weak (``W/"<rev>"``);
    sending it back as ``If-Match`` must name the same revision."""
    db, client = scenario.db.name, scenario.member_client
    created = await client.put(f"/api/v1/db/{db}/docs/big", json_body={"text": "x" * 5000})
    rev = created.json["rev"]
    weak = f'W/"{rev}"'
    updated = await client.put(f"/api/v1/db/{db}/docs/big", json_body={"text": "y"},
                               headers={"If-Match": weak})
    assert updated.status == 201, updated.body
    gone = await client.delete(f"/api/v1/db/{db}/docs/big",
                               headers={"If-Match": f'W/"{updated.json["rev"]}"'})
    assert gone.status == 200, gone.body


async def test_delete_without_a_revision_is_a_conflict(scenario: Scenario) -> None:
    """CouchDB answers 409 (pouchdb-server deleted whatever revision was current)."""
    db, client = scenario.db.name, scenario.member_client
    await client.put(f"/api/v1/db/{db}/docs/keep", json_body={"v": 1})
    refused = await client.delete(f"/api/v1/db/{db}/docs/keep")
    assert refused.status == 409 and refused.json["error"] == "conflict"
    assert (await client.get(f"/api/v1/db/{db}/docs/keep")).status == 200


async def test_couchdb_parameters_the_contract_takes(scenario: Scenario) -> None:
    db, client = scenario.db.name, scenario.member_client
    made = await client.put(f"/api/v1/db/{db}/docs/p", json_body={
        "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGk="}}})
    rev = made.json["rev"]
    since = await client.get(
        f"/api/v1/db/{db}/docs/p?attachments=true&atts_since=%5B%22{rev}%22%5D")
    assert since.status == 200, since.body
    found = await client.post(f"/api/v1/db/{db}/find",
                              json_body={"selector": {}, "allow_fallback": True})
    assert found.status == 200, found.body


async def test_open_revs_all_as_couchdb_spells_it(scenario: Scenario) -> None:
    """CouchDB takes ``open_revs=all`` as a plain word as well as a JSON array."""
    db = scenario.db.name
    created = await scenario.member_client.put(f"/api/v1/db/{db}/docs/revs", json_body={"v": 1})
    rev = created.json["rev"]
    for query in ("open_revs=all", "open_revs=%22all%22", f"open_revs=%5B%22{rev}%22%5D"):
        reply = await scenario.member_client.get(f"/api/v1/db/{db}/docs/revs?{query}")
        assert reply.status == 200, (query, reply.body)
        assert [leaf["ok"]["_rev"] for leaf in reply.json] == [rev]


async def test_document_lifecycle_with_rev_and_if_match(scenario: Scenario) -> None:
    client, base = scenario.member_client, f"/api/v1/db/{scenario.db.name}/docs"
    made = await client.post(base, json_body={"title": "milk"})
    assert made.status == 201 and made.json["ok"] is True
    doc_id, rev1 = made.json["id"], made.json["rev"]
    got = await client.get(f"{base}/{doc_id}")
    assert got.status == 200 and got.json["title"] == "milk" and got.json["_rev"] == rev1
    put = await client.put(f"{base}/{doc_id}", json_body={"title": "eggs"},
                           headers={"If-Match": rev1})
    assert put.status == 201
    rev2 = put.json["rev"]
    stale = await client.put(f"{base}/{doc_id}", json_body={"title": "x", "_rev": rev1})
    assert stale.status == 409 and stale.json["error"] == "conflict"
    by_rev = await client.put(f"{base}/{doc_id}?rev={rev2}", json_body={"title": "ham"})
    assert by_rev.status == 201
    rev3 = by_rev.json["rev"]
    mismatch = await client.put(f"{base}/{doc_id}?rev={rev3}", json_body={},
                                headers={"If-Match": rev2})
    assert mismatch.status == 400
    old = await client.get(f"{base}/{doc_id}?rev={rev1}")
    assert old.status == 200 and old.json["title"] == "milk"
    revs = await client.get(f"{base}/{doc_id}?revs=true&revs_info=true&conflicts=true")
    assert revs.json["_revisions"]["start"] == 3 and len(revs.json["_revs_info"]) == 3
    gone = await client.delete(f"{base}/{doc_id}", headers={"If-Match": rev3})
    assert gone.status == 200 and gone.json["ok"] is True
    missing = await client.get(f"{base}/{doc_id}")
    assert missing.status == 404
    other_id = await client.put(f"{base}/a", json_body={"_id": "b"})
    assert other_id.status == 400


async def test_ids_needing_encoding_design_and_local_documents(scenario: Scenario) -> None:
    admin, base = scenario.admin, f"/api/v1/db/{scenario.db.name}/docs"
    odd = await admin.put(f"{base}/a%2Fb%3Fc%23d%25e%20f", json_body={"v": 1})
    assert odd.status == 201 and odd.json["id"] == "a/b?c#d%e f"
    assert (await admin.get(f"{base}/a%2Fb%3Fc%23d%25e%20f")).json["v"] == 1
    design = await admin.put(f"{base}/_design%2Fapp", json_body={"views": {}})
    assert design.status == 201 and design.json["id"] == "_design/app"
    assert (await admin.get(f"{base}/_design%2Fapp")).json["_id"] == "_design/app"
    local = await scenario.member_client.put(f"{base}/_local%2Fcheckpoint", json_body={"s": 1})
    assert local.status == 201
    assert (await scenario.member_client.get(f"{base}/_local%2Fcheckpoint")).json["s"] == 1
    for reserved in ("_all_docs", "_bulk_docs", "_design", "_design%2F", "_local%2F",
                     "_changes", "_security"):
        reply = await admin.get(f"{base}/{reserved}")
        assert reply.status == 400, reserved


async def test_all_docs_paging_and_keys(scenario: Scenario) -> None:
    client, db = scenario.member_client, scenario.db.name
    docs = [{"_id": f"doc{i:02d}", "n": i} for i in range(12)]
    bulk = await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={"docs": docs})
    assert bulk.status == 201 and all(r["ok"] for r in bulk.json)
    page1 = await client.get(f"/api/v1/db/{db}/all_docs?limit=5")
    assert [r["id"] for r in page1.json["rows"]] == [f"doc{i:02d}" for i in range(5)]
    last = page1.json["rows"][-1]["id"]
    page2 = await client.get(f'/api/v1/db/{db}/all_docs?limit=5&skip=1&start_key=%22{last}%22')
    assert [r["id"] for r in page2.json["rows"]] == [f"doc{i:02d}" for i in range(5, 10)]
    with_docs = await client.get(
        f'/api/v1/db/{db}/all_docs?include_docs=true&keys=%5B%22doc03%22%5D'
    )
    assert with_docs.json["rows"][0]["doc"]["n"] == 3
    desc = await client.get(f"/api/v1/db/{db}/all_docs?descending=true&limit=1")
    assert desc.json["rows"][0]["id"] == "doc11"
    by_keys = await client.post(f"/api/v1/db/{db}/all_docs?include_docs=true",
                                json_body={"keys": ["doc01", "doc07", "nope"]})
    rows = by_keys.json["rows"]
    assert rows[0]["doc"]["n"] == 1 and rows[1]["doc"]["n"] == 7
    assert rows[2].get("error") == "not_found"
    for bad in ("limit=-1", "limit=x", "descending=maybe", "start_key=%7Bnot-json",
                "unknown=1", "limit=1&limit=2"):
        reply = await client.get(f"/api/v1/db/{db}/all_docs?{bad}")
        assert reply.status == 400, bad
        assert "parameter" in reply.json["reason"]


async def test_bulk_docs_results_come_in_the_order_of_the_documents(scenario: Scenario) -> None:
    # CouchDB answers in request order; pouchdb-server (the embedded default) does not
    # always, and a browser pairing results by position then took one document's rev
    # for another's. The gateway answers in request order from any server, for every
    # document with an _id (it does not change requests, so unnamed documents keep the
    # server's order among themselves).
    client, base = scenario.member_client, f"/api/v1/db/{scenario.db.name}"
    docs: list[dict[str, Any]] = [{"_id": f"o{n:03d}", "n": n} for n in range(60)]
    unnamed: list[dict[str, Any]] = [{"n": n} for n in range(60, 80)]
    for _ in range(3):
        bulk = await client.post(f"{base}/bulk_docs", json_body={"docs": docs + unnamed})
        assert bulk.status == 201 and len(bulk.json) == len(docs) + len(unnamed)
        stored = await client.post(f"{base}/bulk_get",
                                   json_body={"docs": [{"id": r["id"]} for r in bulk.json]})
        fetched = [result["docs"][0]["ok"] for result in stored.json["results"]]
        for doc, result, body in zip(docs, bulk.json, fetched, strict=False):
            assert body == {**doc, "_id": result["id"], "_rev": result["rev"]}
            doc.update(_rev=result["rev"], n=doc["n"] + 1000)
        assert sorted(body["n"] for body in fetched[len(docs):]) == list(range(60, 80))


async def test_bulk_docs_conflicts_and_bulk_get(scenario: Scenario) -> None:
    client, db = scenario.member_client, scenario.db.name
    first = await client.post(f"/api/v1/db/{db}/bulk_docs",
                              json_body={"docs": [{"_id": "x", "v": 1}, {"_id": "y"}]})
    assert first.status == 201
    second = await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={"docs": [{"_id": "x"}]})
    assert second.json[0]["error"] == "conflict"
    got = await client.post(f"/api/v1/db/{db}/bulk_get?revs=true",
                            json_body={"docs": [{"id": "x"}, {"id": "missing"}]})
    assert got.status == 200
    results: list[Any] = got.json["results"]
    assert results[0]["docs"][0]["ok"]["v"] == 1
    assert "ok" not in results[1]["docs"][0]  # CouchDB: {"error": …}; pouchdb-server: {}
    invalid = await client.post(f"/api/v1/db/{db}/bulk_docs", json_body={"documents": []})
    assert invalid.status == 400 and "docs" in invalid.json["reason"]


async def test_inline_attachments_need_data_or_a_stub_as_couchdb_requires(
    scenario: Scenario, admin: Any
) -> None:
    """An entry of ``_attachments`` with neither is refused with 400 before CouchDB (it
    crashed the embedded pouchdb-server); inline data and stubs go through."""
    client, base = scenario.member_client, f"/api/v1/db/{scenario.db.name}/docs"
    inline = {"_attachments": {"note.txt": {"content_type": "text/plain", "data": "aGk="}}}
    made = await client.put(f"{base}/with-att", json_body=inline)
    assert made.status == 201
    stored = (await client.get(f"{base}/with-att")).json  # its attachment as a stub
    assert stored["_attachments"]["note.txt"]["stub"] is True
    kept = await client.put(f"{base}/with-att", json_body={**stored, "v": 2})
    assert kept.status == 201
    body = await client.get(f"{base}/with-att/attachments/note.txt")
    assert body.status == 200 and body.body == b"hi"
    broken = [
        {"content_type": "text/plain"},
        {"content_type": "text/plain", "stub": False},
        {"stub": "yes"},
        "aGk=",
        {"content_type": "text/plain", "data": "not base64!"},  # pouchdb-server: 500
        {"content_type": "text/plain", "data": "aGk"},  # padding missing
    ]
    for entry in broken:
        refused = await client.put(f"{base}/bad", json_body={"_attachments": {"a b": entry}})
        assert refused.status == 400, (entry, refused.body)
        assert refused.json["error"] in ("bad_request", "invalid_request"), refused.json
        created = await client.post(base, json_body={"_id": "bad2", "_attachments": {"x": entry}})
        assert created.status == 400, (entry, created.body)
    bulk = await client.post(f"/api/v1/db/{scenario.db.name}/bulk_docs", json_body={"docs": [
        {"_id": "fine"}, {"_id": "bad3", "_attachments": {"x": {"content_type": "a/b"}}}]})
    assert bulk.status == 400 and "'x'" in bulk.json["reason"], bulk.json
    for doc_id in ("bad", "bad2", "bad3", "fine"):
        assert (await client.get(f"{base}/{doc_id}")).status == 404
    assert (await client.get(f"{base}/with-att")).json["v"] == 2  # the server still answers


async def test_client_mistakes_are_400_whatever_the_server_behind(scenario: Scenario) -> None:
    """CouchDB refuses these with 400; pouchdb-server crashed (500, shown as 502) or hung."""
    db, client = scenario.db.name, scenario.member_client
    special = await client.put(f"/api/v1/db/{db}/docs/u1", json_body={"_foo": 1})
    assert special.status == 400 and special.json["error"] == "doc_validation"
    assert "_foo" in special.json["reason"]
    bulk = await client.post(f"/api/v1/db/{db}/bulk_docs",
                             json_body={"docs": [{"_id": "ok"}, {"_id": "bad", "_bar": 2}]})
    assert bulk.status == 400 and bulk.json["error"] == "doc_validation"
    assert (await client.get(f"/api/v1/db/{db}/docs/ok")).status == 404  # nothing half-done
    # An id no URL can name (a lone surrogate escape) would be stored for good.
    for path, body in ((f"/api/v1/db/{db}/docs", b'{"_id": "\\ud800x"}'),
                       (f"/api/v1/db/{db}/bulk_docs", b'{"docs": [{"_id": "\\udfffy"}]}')):
        lone = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert lone.status == 400 and "not valid Unicode" in lone.json["reason"], lone.json
    paired = await client.post(f"/api/v1/db/{db}/docs", data=b'{"_id": "\\ud83d\\ude00"}',
                               headers={"Content-Type": "application/json"})
    assert paired.status == 201 and paired.json["id"] == "\U0001f600"
    kept = await client.put(f"/api/v1/db/{db}/docs/u2", json_body={
        "_id": "u2", "_deleted": False, "plain": {"_nested": "members are data"}})
    assert kept.status == 201, kept.body
    odd = await client.get(f"/api/v1/db/{db}/docs/u2?open_revs=%22x%22")
    assert odd.status == 400 and "open_revs" in odd.json["reason"]
    assert (await client.get(f"/api/v1/db/{db}/docs/u2?open_revs=all")).status == 200
    empty = await client.post(f"/api/v1/db/{db}/bulk_get", json_body={"docs": []})
    assert empty.status == 200 and empty.json == {"results": []}
