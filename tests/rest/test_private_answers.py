"""The caching policy of per-user answers, spelled out.

tests/rest/test_conditional.py compares ``Cache-Control`` with the constant
``conditional.REVALIDATE`` itself, so a change of that constant (dropping ``private``,
which keeps shared caches from storing one user's answer) cannot fail it.
"""

from __future__ import annotations

from tests.rest.conftest import Scenario


async def test_per_user_answers_are_private_and_revalidated(scenario: Scenario) -> None:
    client = scenario.member_client
    url = f"/api/v1/db/{scenario.db.name}/docs/note"
    assert (await client.put(url, json_body={"text": "v1"})).status == 201
    fresh = await client.get(url)
    assert fresh.status == 200
    directives = {d.strip() for d in (fresh.header("Cache-Control") or "").split(",")}
    assert directives == {"private", "no-cache"}, directives  # RFC 9111 5.2.2.7, 5.2.2.4
    again = await client.get(url, headers={"If-None-Match": fresh.header("ETag") or ""})
    assert again.status == 304
    directives = {d.strip() for d in (again.header("Cache-Control") or "").split(",")}
    assert directives == {"private", "no-cache"}, directives
