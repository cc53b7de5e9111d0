"""The ``ETag`` of an attachment deletion is the new revision, as on every write.

docs/rest-api.md: "A document's ``ETag`` is CouchDB's, its revision (``"<rev>"``, also on
writes; the gateway sets it when the server behind hashes the body instead, as
pouchdb-server does), so it is what ``If-Match`` takes". The attachment DELETE route
relayed the upstream tag as it was: behind pouchdb-server, the embedded default, that
is Express's hash of the answer (``W/"40-…"``), which names no revision: sent back as
``If-Match`` it is a revision ``40-…`` that does not exist. CouchDB itself sends no
``ETag`` there; the gateway tags the answer with the new revision, as its other writes.
"""

from __future__ import annotations

from tests.rest.conftest import Scenario


async def test_an_attachment_deletion_tags_its_answer_with_the_new_revision_or_not_at_all(
    scenario: Scenario,
) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}/docs/d"
    put = await client.put(f"{base}/attachments/a.txt", data=b"hello",
                           headers={"Content-Type": "text/plain"})
    assert put.status == 201
    assert put.header("ETag") == f'"{put.json["rev"]}"'  # the upload's, likewise
    deleted = await client.delete(f"{base}/attachments/a.txt?rev={put.json['rev']}")
    assert deleted.status == 200
    etag = deleted.header("ETag")
    assert etag in (None, f'"{deleted.json["rev"]}"'), etag
    if etag is not None:  # what the tag is for: the next write names the revision by it
        again = await client.put(base, json_body={"n": 1}, headers={"If-Match": etag})
        assert again.status == 201, again.json
