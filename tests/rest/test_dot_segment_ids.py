"""A body ``_id`` of ``.`` or ``..`` is refused: no path of the API (nor the CouchDB
client's ``doc_path``) could reach the document again, since URL normalisation removes
such segments, and its ``Location`` would resolve to the database itself."""

from __future__ import annotations

import pytest

from tests.rest.conftest import Scenario


@pytest.mark.parametrize("doc_id", [".", ".."])
async def test_a_body_id_of_dot_segments_is_refused(scenario: Scenario, doc_id: str) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}"
    created = await client.post(f"{base}/docs", json_body={"_id": doc_id, "x": 1})
    if created.status < 300:
        # Written: can the gateway reach it again, at the Location it gave?
        location = created.header("Location")
        read = await client.get(f"{base}/docs/{doc_id.replace('.', '%2E')}")
        raise AssertionError(
            f"created {doc_id!r}: {created.status}, Location {location!r}; "
            f"reading it back: {read.status} {read.body[:120]!r}")
    assert created.status == 400 and "'.' or '..' path segment" in created.json["reason"]


@pytest.mark.parametrize("doc_id", [".", ".."])
async def test_bulk_docs_refuses_dot_segment_ids(scenario: Scenario, doc_id: str) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}"
    written = await client.post(f"{base}/bulk_docs", json_body={"docs": [{"_id": doc_id}]})
    assert written.status == 400, (written.status, written.body[:200])
    assert written.json["reason"].startswith("docs[0]._id is a '.' or '..' path segment")
    read = await client.get(f"{base}/all_docs")
    assert read.json["rows"] == []
