"""gateway/http/guards.py ``require_db_admin`` end to end.

pouchdb-server (the embedded default) leaves ``_index`` open to anyone who may read the
database; the gateway's own check is all that stands between a member and the database's
design documents. The suite only ever managed indexes as the server admin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.conftest import TestUser
from tests.rest.conftest import RunningGateway, Scenario, basic

MakeUser = Callable[..., Awaitable[TestUser]]


async def test_only_database_admins_manage_indexes(
    scenario: Scenario, gateway: RunningGateway, make_user: MakeUser,
) -> None:
    db = scenario.db.name
    by_name, by_role = await make_user(), await make_user(["librarian"])
    await scenario.db.set_security({
        "admins": {"names": [by_name.name], "roles": ["librarian"]},
        "members": {"names": [scenario.member.name], "roles": []},
    })
    index = {"index": {"fields": ["n"]}, "name": "by-n", "ddoc": "idx", "type": "json"}

    made = await scenario.member_client.post(f"/api/v1/db/{db}/indexes", json_body=index)
    assert made.status == 403 and made.json["error"] == "forbidden", made.body
    listed = await scenario.admin.get(f"/api/v1/db/{db}/indexes")
    assert not [i for i in listed.json["indexes"] if i.get("name") == "by-n"]

    for user in (by_name, by_role):  # a database admin by name, then by role
        client = gateway.client.with_headers(basic(user.name, user.password))
        made = await client.post(f"/api/v1/db/{db}/indexes", json_body=index)
        assert made.status == 200, (user.name, made.body)
        refused = await scenario.member_client.delete(f"/api/v1/db/{db}/indexes/idx/by-n")
        assert refused.status == 403, refused.body
        removed = await client.delete(f"/api/v1/db/{db}/indexes/idx/by-n")
        assert removed.status == 200, (user.name, removed.body)
