"""CouchDB decides: every upstream call carries the caller's identity; paths cannot escape."""

from __future__ import annotations

import pytest

from gateway.couch import CouchServer
from tests.conftest import CouchBackend, unique_name
from tests.rest.conftest import RunningGateway, Scenario, basic

# CouchDB answers an authenticated non-member 403; pouchdb-server answers 401.
DENIED = (401, 403)


async def test_non_member_cannot_read_or_write(
    scenario: Scenario, couch_backend: CouchBackend
) -> None:
    db = scenario.db.name
    await scenario.member_client.put(f"/api/v1/db/{db}/docs/secret", json_body={"v": 1})
    outsider = scenario.outsider_client
    expected = 401 if couch_backend.is_pouchdb else 403
    for method, path, body in (
        ("GET", f"/api/v1/db/{db}", None),
        ("GET", f"/api/v1/db/{db}/docs/secret", None),
        ("PUT", f"/api/v1/db/{db}/docs/mine", {"v": 2}),
        ("POST", f"/api/v1/db/{db}/docs", {"v": 3}),
        ("GET", f"/api/v1/db/{db}/all_docs", None),
        ("POST", f"/api/v1/db/{db}/find", {"selector": {}}),
        ("POST", f"/api/v1/db/{db}/bulk_docs", {"docs": [{"v": 4}]}),
    ):
        if couch_backend.is_pouchdb and path.endswith("/find"):
            # pouchdb-server's security plugin does not guard _find (a pouchdb-server bug:
            # CouchDB 3 checks membership for every database endpoint); not asserted there.
            continue
        reply = await outsider.request(method, path, json_body=body)
        if couch_backend.is_pouchdb and path.endswith("/bulk_docs") and reply.status == 201:
            # pouchdb-server refuses each document instead of the whole request.
            assert all(r["error"] == "unauthorized" for r in reply.json)
            continue
        assert reply.status == expected, (method, path, reply.body)
        assert b'"v":1' not in reply.body
    # Anonymous callers are stopped by the gateway itself.
    anonymous = await scenario.member_client.with_headers({"Authorization": ""}).get(
        f"/api/v1/db/{db}/docs/secret"
    )
    assert anonymous.status == 401


async def test_non_admin_cannot_write_a_design_document(scenario: Scenario) -> None:
    db = scenario.db.name
    reply = await scenario.member_client.put(
        f"/api/v1/db/{db}/docs/_design%2Fevil", json_body={"views": {}}
    )
    assert reply.status in DENIED
    assert reply.json["error"] in ("unauthorized", "forbidden")
    admin = await scenario.admin.put(f"/api/v1/db/{db}/docs/_design%2Fgood", json_body={"views": {}})
    assert admin.status == 201


async def test_validate_doc_update_applies_to_the_caller(
    scenario: Scenario, couch_backend: CouchBackend
) -> None:
    db = scenario.db.name
    check = ("function(newDoc, oldDoc, userCtx) { if (newDoc.owner !== userCtx.name) "
             "{ throw({forbidden: 'owner must be ' + userCtx.name}); } }")
    ddoc = await scenario.admin.put(f"/api/v1/db/{db}/docs/_design%2Frules",
                                    json_body={"validate_doc_update": check})
    assert ddoc.status == 201
    own = await scenario.member_client.put(f"/api/v1/db/{db}/docs/a",
                                           json_body={"owner": scenario.member.name})
    assert own.status == 201
    other = await scenario.member_client.put(f"/api/v1/db/{db}/docs/b",
                                             json_body={"owner": "someone-else"})
    assert other.status == 403 and other.json["error"] == "forbidden"
    assert scenario.member.name in other.json["reason"]


TRAVERSALS = [
    "/api/v1/db/_users",
    "/api/v1/db/%5Fusers",
    "/api/v1/db/_users/docs/org.couchdb.user%3Aadmin",
    "/api/v1/db/_replicator",
    "/api/v1/db/%2F_users",
    "/api/v1/db/%2F_users/all_docs",
    "/api/v1/db/_config",
    "/api/v1/db/_node",
    "/api/v1/db/_all_dbs",
    "/api/v1/db/DBNAME/../../_users",
    "/api/v1/db/DBNAME/docs/..",
    "/api/v1/db/DBNAME/docs/%2e%2e",
    "/api/v1/db/DBNAME/docs/%2E%2E%2F_users",
    "/api/v1/db/DBNAME/docs/.%2e/attachments/x",
    "/api/v1/db/DBNAME//_users",
    "//api/v1/db/_users",
    "/api/v1/db/DBNAME/docs/_all_docs",
    "/api/v1/db/DBNAME/docs/_design%2F..%2F..%2F_users",
    "/api/v1/db/DBNAME/docs/x/attachments/..%2F..%2F_users",
    "/api/v1/db/DBNAME/docs/x/attachments/%2e%2e",
    "/api/v1/db/DBNAME/docs/a%0d%0aX-Injected:%201",
    "/api/v1/db/DBNAME/docs/a%00",
    "/api/v1/db/DBNAME/views/..%2F..%2F_users/x",
    "/api/v1/db/DBNAME/views/a%2Fb/c",
    "/_users",
    "/_config",
    "/_node/_local/_config",
    "/_all_dbs",
    "/_session",
    "/_utils",
    "/api/v1/_all_dbs",
    "/api/v1/db/DBNAME/_security",
    "/api/v1/db/DBNAME/_changes",
    "/api/v1/db/DBNAME/docs/%2F_users",
]


@pytest.mark.parametrize("template", TRAVERSALS)
async def test_traversal_attempts_fail_without_upstream_leak(
    gateway: RunningGateway, scenario: Scenario, couch_backend: CouchBackend, template: str
) -> None:
    path = template.replace("DBNAME", scenario.db.name)
    admin = gateway.client.with_headers(basic(couch_backend.admin_username,
                                              couch_backend.admin_password))
    reply = await admin.get(path)
    # "%2F_users" as a document id is just an (absent) document of this database.
    assert reply.status in (400, 403, 404), (path, reply.status, reply.body)
    body = reply.body.decode("utf-8", "replace")
    assert set(reply.json) == {"error", "reason", "status"}
    for leak in ("org.couchdb.user", "couchdb", "_users\":", "vendor", "httpd", "userCtx",
                 "db_name", "X-Injected"):
        assert leak not in body, (path, body)
    assert reply.header("X-Injected") is None


async def test_only_server_admins_create_or_delete_databases(
    scenario: Scenario, admin: CouchServer
) -> None:
    """The gateway refuses a non-admin itself (CouchDB 3 would too; pouchdb-server crashed on
    it, taking every database down with it), so the upstream never sees the request."""
    victim = scenario.db.name
    fresh = unique_name("mine")
    for client in (scenario.member_client, scenario.outsider_client):
        created = await client.put(f"/api/v1/db/{fresh}")
        assert created.status == 403, created.body
        assert created.json["error"] == "forbidden"
        deleted = await client.delete(f"/api/v1/db/{victim}")
        assert deleted.status == 403, deleted.body
    assert not await admin.database(fresh).exists()
    # The upstream is alive and the victim intact: the member still reads it.
    assert (await scenario.member_client.get(f"/api/v1/db/{victim}")).status == 200
    assert (await scenario.admin.put(f"/api/v1/db/{fresh}")).status == 201
    assert (await scenario.admin.delete(f"/api/v1/db/{fresh}")).status == 200
