"""Route handlers at their edges: ids refused before anything is stored, bulk results in
request order, If-Match on attachment uploads, index definitions for readers only.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.rest.conftest import Scenario


@pytest.mark.parametrize("doc_id", ["a\u0001b", "tab\there", "_reserved"])
async def test_post_docs_refuses_a_body_id_no_route_takes(scenario: Scenario, doc_id: str) -> None:
    """Guards against: create_document no longer calls paths.body_document_id on the body's _id.

    docs/rest-api.md: ids with control characters are refused; ids starting with '_'
    other than _design/x and _local/x are refused (400). Nothing may be stored.
    """
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.admin.post(f"{base}/docs", json_body={"_id": doc_id, "n": 1})
    assert made.status == 400, made.json
    assert made.json["error"] == "bad_request", made.json
    listed = await scenario.admin.get(f"{base}/all_docs")
    assert doc_id not in [row["id"] for row in listed.json["rows"]], listed.json


async def test_post_docs_takes_a_percent_in_the_body_id(scenario: Scenario) -> None:
    """A '%' in a body _id is a plain character, not an escape (body_document_id)."""
    base = f"/api/v1/db/{scenario.db.name}"
    for doc_id in ("100%", "a%2Fb", "%00x"):
        made = await scenario.admin.post(f"{base}/docs", json_body={"_id": doc_id})
        assert made.status == 201, (doc_id, made.json)
        read = await scenario.admin.get(f"{base}/docs/{quote(doc_id, safe='')}")
        assert read.status == 200 and read.json["_id"] == doc_id, (doc_id, read.json)


async def test_bulk_docs_results_follow_the_request_order(scenario: Scenario) -> None:
    """Guards against: bulk_docs drops ``amend=in_request_order``.

    CouchDB answers _bulk_docs in the order of the documents (docs/rest-api.md, the
    contract); pouchdb-server swaps results now and then, mostly on updates of a batch.
    Several rounds of a batch that creates, updates and conflicts, each checked by id.
    """
    base = f"/api/v1/db/{scenario.db.name}"
    docs: list[dict] = [{"_id": f"r{n:03d}", "n": n} for n in range(80)]
    for round_ in range(8):
        batch = [*docs, {"_id": "r000"}] if round_ else docs  # a conflicting repeat
        made = await scenario.admin.post(f"{base}/bulk_docs", json_body={"docs": batch})
        assert made.status == 201, made.json
        ids = [r.get("id") for r in made.json]
        assert ids == [d["_id"] for d in batch], (round_, [
            (i, a, d["_id"]) for i, (a, d) in enumerate(zip(ids, batch, strict=True)) if a != d["_id"]])
        for doc, result in zip(docs, made.json, strict=False):  # the repeat is last
            assert "rev" in result, (round_, result)
            doc.update(_rev=result["rev"], n=doc["n"] + 1000)


async def test_put_attachment_takes_the_revision_from_if_match(scenario: Scenario) -> None:
    """Guards against: put_attachment no longer calls if_match_revision (If-Match ignored).

    docs/rest-api.md: writes take the revision as ``rev`` or ``If-Match``.
    """
    base = f"/api/v1/db/{scenario.db.name}/docs/holder"
    made = await scenario.admin.put(base, json_body={"n": 1})
    assert made.status == 201, made.json
    etag = made.header("ETag")
    assert etag, made.headers
    up = await scenario.admin.put(f"{base}/attachments/a.txt", data=b"hello",
                                  headers={"Content-Type": "text/plain", "If-Match": etag})
    assert up.status == 201, up.json
    assert up.json["rev"].startswith("2-"), up.json
    stale = await scenario.admin.put(f"{base}/attachments/b.txt", data=b"x",
                                     headers={"Content-Type": "text/plain", "If-Match": etag})
    assert stale.status == 409, stale.json


async def test_an_outsider_cannot_list_the_indexes_of_a_database_it_may_not_read(
    scenario: Scenario,
) -> None:
    """Guards against: list_indexes no longer calls require_reader.

    pouchdb-server (the embedded default) leaves ``GET /db/_index`` open to any user
    (gateway/http/guards.py); CouchDB 3 answers 403 to a non-member. The index
    definitions name the fields a database is queried by.
    """
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.admin.post(f"{base}/indexes", json_body={
        "index": {"fields": ["secret_field_name"]}, "name": "by-secret"})
    assert made.status in (200, 201), made.json
    member = await scenario.member_client.get(f"{base}/indexes")
    assert member.status == 200 and "secret_field_name" in member.body.decode(), member.json
    outsider = await scenario.outsider_client.get(f"{base}/indexes")
    assert outsider.status in (401, 403), (outsider.status, outsider.json)
    assert b"secret_field_name" not in outsider.body


async def test_post_docs_refuses_an_empty_body_id(scenario: Scenario) -> None:
    """``{"_id": ""}``: CouchDB 3 answers 400 ("Document id must not be empty")."""
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.admin.post(f"{base}/docs", json_body={"_id": "", "n": 1})
    assert made.status == 400, made.json
    listed = await scenario.admin.get(f"{base}/all_docs")
    assert listed.json["rows"] == [], listed.json


async def test_attachment_names_starting_with_underscore_are_refused(scenario: Scenario) -> None:
    """CouchDB 3: "Attachment name can't start with '_'" (400). Guards against: the gateway's
    check dropped; pouchdb-server stores such an attachment."""
    base = f"/api/v1/db/{scenario.db.name}/docs/owner"
    made = await scenario.admin.put(base, json_body={"n": 1})
    rev = made.json["rev"]
    up = await scenario.admin.put(f"{base}/attachments/_hidden.txt?rev={rev}", data=b"x",
                                  headers={"Content-Type": "text/plain"})
    assert up.status == 400, up.json
    doc = await scenario.admin.get(base)
    assert doc.json["_rev"] == rev and "_attachments" not in doc.json, doc.json


@pytest.mark.parametrize("bad", ["limit=1.5", "limit=1e3", "skip=0.0"])
async def test_integer_query_parameters_take_integers_only(scenario: Scenario, bad: str) -> None:
    """Guards against: contract._coerce reads integers as ``int(float(raw))`` (1.5 -> 1).

    The contract declares ``limit``/``skip`` as integers; a fraction is a 400, not a
    silently truncated page."""
    reply = await scenario.member_client.get(f"/api/v1/db/{scenario.db.name}/all_docs?{bad}")
    assert reply.status == 400, (bad, reply.status, reply.json)
    assert "integer" in reply.json["reason"], reply.json
