"""``Location`` of what a write created or updated, as CouchDB names it.

CouchDB 3 answers ``POST /{db}`` and ``PUT /{db}/{docid}`` with ``Location`` naming the
document, and an attachment ``PUT`` with one naming the attachment (``chttpd_db.erl``);
not a ``batch=ok`` write (nothing written yet), nor a ``DELETE``. The gateway drops
every upstream header (CouchDB's would name CouchDB's own URL) and names its own,
relative: without one, by RFC 9110 15.3.2 a ``POST /api/v1/db/{db}/docs`` answered 201
would say it created ``…/docs`` itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.rest.conftest import Scenario, StartGateway


async def test_post_docs_names_the_created_document_with_a_url_the_gateway_serves(
    scenario: Scenario,
) -> None:
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.member_client.post(f"{base}/docs", json_body={"title": "x/y é"})
    assert made.status == 201
    location = made.header("Location")
    assert location, "201 Created without Location"
    path = urlsplit(location).path
    read = await scenario.member_client.get(path)
    assert read.status == 200 and read.json["_id"] == made.json["id"]


async def test_an_id_with_a_slash_and_non_ascii_is_one_encoded_segment(
    scenario: Scenario,
) -> None:
    base = f"/api/v1/db/{scenario.db.name}"
    made = await scenario.member_client.post(f"{base}/docs", json_body={"_id": "a/b é?#"})
    assert made.status == 201
    assert made.header("Location") == f"{base}/docs/a%2Fb%20%C3%A9%3F%23"
    read = await scenario.member_client.get(made.header("Location") or "")
    assert read.status == 200 and read.json["_id"] == "a/b é?#"


async def test_put_document_and_attachment_name_what_they_wrote(scenario: Scenario) -> None:
    client, admin = scenario.member_client, scenario.admin
    base = f"/api/v1/db/{scenario.db.name}/docs"
    made = await admin.put(f"{base}/_design%2Fapp", json_body={"views": {}})
    assert made.status == 201 and made.header("Location") == f"{base}/_design%2Fapp"
    updated = await admin.put(f"{base}/_design%2Fapp?rev={made.json['rev']}",
                               json_body={"views": {}})
    assert updated.status == 201 and updated.header("Location") == f"{base}/_design%2Fapp"
    attached = await client.put(f"{base}/d/attachments/dir%2Fa.txt", data=b"hello",
                                headers={"Content-Type": "text/plain"})
    assert attached.status == 201
    location = attached.header("Location")
    assert location == f"{base}/d/attachments/dir%2Fa.txt"
    assert (await client.get(location)).body == b"hello"


async def test_no_location_on_a_delete_nor_an_error(scenario: Scenario) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}/docs"
    made = await client.put(f"{base}/d", json_body={"n": 1})
    conflict = await client.put(f"{base}/d", json_body={"n": 2})
    assert conflict.status == 409 and conflict.header("Location") is None
    attached = await client.put(f"{base}/d/attachments/a.txt?rev={made.json['rev']}",
                                data=b"x", headers={"Content-Type": "text/plain"})
    gone = await client.delete(f"{base}/d/attachments/a.txt?rev={attached.json['rev']}")
    assert gone.status == 200 and gone.header("Location") is None
    deleted = await client.delete(f"{base}/d?rev={gone.json['rev']}")
    assert deleted.status == 200 and deleted.header("Location") is None


async def test_a_batch_write_names_nothing_until_it_is_written(scenario: Scenario) -> None:
    made = await scenario.member_client.post(
        f"/api/v1/db/{scenario.db.name}/docs?batch=ok", json_body={"n": 1})
    assert made.status in (201, 202)
    if "rev" not in made.json:  # CouchDB's batch answer: accepted, not yet written
        assert made.header("Location") is None
    else:  # pouchdb-server writes at once and says so
        assert made.header("Location") == (
            f"/api/v1/db/{scenario.db.name}/docs/{made.json['id']}")


async def test_a_browser_on_another_origin_may_read_it(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(cors_origins=("https://app.example",))
    reply = await gateway.client.get("/health", headers={"Origin": "https://app.example"})
    exposed = (reply.header("Access-Control-Expose-Headers") or "").split(", ")
    assert "Location" in exposed
