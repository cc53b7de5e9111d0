"""JSON answers carry their length and leave before the bookkeeping that follows them."""

from __future__ import annotations

import json
from typing import Any

from gateway.http.site import FrontDoor
from tests.rest.conftest import RunningGateway, Scenario


async def test_json_answers_have_a_content_length(scenario: Scenario) -> None:
    for reply in (
        await scenario.admin.get("/health"),
        await scenario.member_client.put(f"/api/v1/db/{scenario.db.name}/docs/a", json_body={"n": 1}),
        await scenario.member_client.get(f"/api/v1/db/{scenario.db.name}/docs/a"),
        await scenario.member_client.get(f"/api/v1/db/{scenario.db.name}/docs/missing"),
        await scenario.outsider_client.get(f"/api/v1/db/{scenario.db.name}/docs/a"),
    ):
        # Twisted's client moves Content-Length into ``length`` (unknown when chunked).
        assert reply.length == len(reply.body), reply.status


async def test_answer_is_sent_before_the_access_log_runs(
    gateway: RunningGateway, monkeypatch: Any
) -> None:
    queued_at_log_time: list[int] = []
    original = FrontDoor._finished

    def observing(self: FrontDoor, outcome: Any, request: Any, counted: bool) -> None:
        transport = request.transport
        pending = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        queued_at_log_time.append(pending)
        original(self, outcome, request, counted)

    monkeypatch.setattr(FrontDoor, "_finished", observing)
    for _ in range(3):
        reply = await gateway.client.get("/health")
        assert reply.status == 200
    # Without the flush the whole answer would still sit in Twisted's buffer here.
    assert queued_at_log_time == [0, 0, 0]


async def test_couchdb_answers_are_relayed_byte_for_byte(scenario: Scenario) -> None:
    """What CouchDB wrote reaches the client unchanged (decoded to check, not re-encoded)."""
    db = scenario.db
    doc = {"_id": "exact", "big": 12345678901234567, "text": "é \u2028 <tag>", "nested": {"a": [1, 2.5]}}
    await db.save(dict(doc))
    upstream = await db.transport.send("GET", [db.name, "exact"])
    assert upstream.raw is not None and json.loads(upstream.raw) == upstream.body
    reply = await scenario.member_client.get(f"/api/v1/db/{db.name}/docs/exact")
    assert reply.status == 200
    assert reply.body == upstream.raw
    missing = await db.transport.send("GET", [db.name, "nothing-here"], raise_for_status=False)
    assert missing.status == 404 and missing.raw is None  # errors are rebuilt as the envelope
