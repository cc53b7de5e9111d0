"""Design and local document ids with a '/' after the prefix, and ids no route takes.

CouchDB 3 takes ``_design/a/b`` and ``_local/a/b`` as ids: ``PUT /db/_design/a%2Fb``
(its path is split on raw '/', then each part decoded) and ``_bulk_docs`` both store
them. The gateway's ``bulk_docs`` stored them too, but every document route refused the
id (``gateway/http/paths.py`` ``document_id``: "document ids starting with '_' are
reserved"), so such a document could be made but never read, updated or deleted by id
again; ``_local`` documents are not even in ``all_docs``. README: "Any id round-trips".
Found by a fidelity review (session 21); the routes now take them.
"""

from __future__ import annotations

import pytest

from tests.rest.conftest import Scenario


@pytest.mark.parametrize("doc_id, path", [
    ("_design/a/b", "_design%2Fa%2Fb"),
    ("_local/a/b", "_local%2Fa%2Fb"),
])
async def test_a_document_bulk_docs_stored_can_be_named_by_its_id(
    scenario: Scenario, doc_id: str, path: str,
) -> None:
    client = scenario.admin
    base = f"/api/v1/db/{scenario.db.name}"
    made = await client.post(f"{base}/bulk_docs", json_body={"docs": [{"_id": doc_id, "n": 1}]})
    assert made.status == 201 and made.json[0].get("ok") is True, made.json
    rev = made.json[0]["rev"]

    read = await client.get(f"{base}/docs/{path}")
    assert read.status == 200, read.json
    assert read.json["_id"] == doc_id and read.json["n"] == 1
    updated = await client.put(f"{base}/docs/{path}", json_body={"_rev": rev, "n": 2})
    assert updated.status == 201, updated.json
    deleted = await client.delete(f"{base}/docs/{path}?rev={updated.json['rev']}")
    assert deleted.status == 200, deleted.json


async def test_post_docs_takes_a_design_id_with_a_slash(scenario: Scenario) -> None:
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.admin.post(f"{base}/docs", json_body={"_id": "_design/a/b"})
    assert made.status == 201, made.json


@pytest.mark.parametrize("doc_id", ["tab\there", "a\u0001b", "a\u007fb"])
async def test_bulk_docs_stores_no_id_the_document_routes_refuse(
    scenario: Scenario, doc_id: str,
) -> None:
    """Ids with control characters: the document routes refuse them in a path (documented
    hardening: "control characters or %00 are refused"), POST /docs refuses them in a
    body, but bulk_docs stores them: a document no URL of the API can name again. Either
    refuse them in bulk_docs as POST /docs does (as session 18 did for lone surrogates),
    or let the routes name them."""
    from urllib.parse import quote

    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.admin.post(f"{base}/bulk_docs", json_body={"docs": [{"_id": doc_id}]})
    if made.status == 400:
        return
    assert made.status == 201 and made.json[0].get("ok") is True, made.json
    read = await scenario.admin.get(f"{base}/docs/{quote(doc_id, safe='')}")
    assert read.status == 200, (made.json, read.json)
