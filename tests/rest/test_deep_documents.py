"""Documents nested deeper than Python's recursion limit (gateway/deep_json.py).

CouchDB 3 (jiffy decodes with an explicit stack) and pouchdb-server store a document
nested 1,200 levels deep without complaint; such documents arrive by replication or
from any other CouchDB client. The gateway relays answers as CouchDB wrote them, but
first decodes them with ``json.loads`` (``gateway/couch/transport.py`` ``_decode_json``),
which raises ``RecursionError`` past about 950 levels: that is not the ``ValueError``
it catches, so the read becomes a 500 ``internal_error`` with a critical traceback in
the log, on every route whose answer holds the document (one such document breaks
``all_docs?include_docs=true`` of its whole database).
"""

from __future__ import annotations

from typing import Any

import pytest
import treq

from gateway import deep_json
from tests.conftest import CouchBackend
from tests.rest.conftest import Scenario, basic

DEPTH = 1200


def _deep_body(depth: int = DEPTH) -> bytes:
    return b'{"v":' + b"[" * depth + b"]" * depth + b"}"


async def _store_directly(couch_backend: CouchBackend, db: str, doc_id: str, reactor: Any) -> Any:
    """Store the document as any CouchDB client would (not through the gateway)."""
    auth = basic(couch_backend.admin_username, couch_backend.admin_password)
    put = await treq.put(f"{couch_backend.url}/{db}/{doc_id}", data=_deep_body(),
                         headers={"Content-Type": "application/json", **auth}, reactor=reactor)
    assert put.code == 201, await treq.content(put)
    got = await treq.get(f"{couch_backend.url}/{db}/{doc_id}",
                         headers={"Accept": "application/json", **auth}, reactor=reactor)
    return await treq.content(got)


@pytest.mark.parametrize("route", [
    "docs/deep", "all_docs?include_docs=true", "views", "bulk_get", "find",
])
async def test_a_deeply_nested_stored_document_reads_as_couchdb_wrote_it(
    scenario: Scenario, couch_backend: CouchBackend, reactor: Any, route: str,
) -> None:
    db = scenario.db.name
    stored = await _store_directly(couch_backend, db, "deep", reactor)
    expected_doc = stored.strip()
    client = scenario.admin
    base = f"/api/v1/db/{db}"
    if route == "views":
        ddoc = {"views": {"all": {"map": "function (doc) { emit(doc._id, null); }"}}}
        assert (await client.put(f"{base}/docs/_design%2Fd", json_body=ddoc)).status == 201
        reply = await client.get(f"{base}/views/d/all?include_docs=true&key=%22deep%22")
    elif route == "bulk_get":
        reply = await client.post(f"{base}/bulk_get", json_body={"docs": [{"id": "deep"}]})
    elif route == "find":
        reply = await client.post(f"{base}/find", json_body={"selector": {"_id": "deep"}})
    else:
        reply = await client.get(f"{base}/{route}")
    assert reply.status == 200, (route, reply.status, reply.body[:200])
    # The document's bytes are inside the answer as CouchDB wrote them.
    assert deep_json.loads(expected_doc)["_id"] == "deep"
    assert b"[" * DEPTH in reply.body and b"]" * DEPTH in reply.body


async def test_a_deeply_nested_document_couchdb_accepts_is_accepted(
    scenario: Scenario, couch_backend: CouchBackend, reactor: Any,
) -> None:
    """CouchDB 3 stores it; the gateway answers 400 "the request body is not valid JSON:
    maximum recursion depth exceeded" (it is valid JSON) from about 950 levels on, a
    limit documented nowhere and that moves with the stack depth of the caller."""
    db = scenario.db.name
    reply = await scenario.admin.put(f"/api/v1/db/{db}/docs/deep", data=_deep_body(),
                                     headers={"Content-Type": "application/json"})
    assert reply.status == 201, reply.body[:200]


async def test_a_document_nested_past_the_limit_is_refused_naming_it(scenario: Scenario) -> None:
    """Past gateway/deep_json.py's MAX_DEPTH the gateway refuses, and says why."""
    from gateway.deep_json import MAX_DEPTH

    reply = await scenario.admin.put(
        f"/api/v1/db/{scenario.db.name}/docs/deeper", data=_deep_body(MAX_DEPTH + 1),
        headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.body[:200]
    assert f"nested deeper than {MAX_DEPTH} levels" in reply.json["reason"]
