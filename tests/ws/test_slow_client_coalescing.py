"""Live changes queued for a client that stopped reading are
coalesced per document (gateway/ws/outbox.py: "A change waiting for a slow client is
replaced by a later change to the same document of the same subscription"). The Outbox
is unit-tested with a key; this checks that the server really passes one. Real
pouchdb-server, real sockets, a client that stops reading."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.couch import Database
from tests.ws.conftest import slow_and_healthy_subscribers


async def test_queued_changes_of_one_document_reach_a_slow_client_once(
    make_server: Any, db: Database, make_user: Any
) -> None:
    server, slow, healthy = await slow_and_healthy_subscribers(make_server, make_user, db, 10)
    hot = await db.save({"_id": "hot", "n": 0})
    rev = hot["rev"]
    for n in range(1, 20):  # 20 changes of one document while the client reads nothing
        rev = (await db.save({"_id": "hot", "_rev": rev, "n": n}))["rev"]
    got_healthy = await healthy.collect_changes(20)
    assert [c["id"] for c in got_healthy] == ["hot"] * 20
    assert server.service.metrics.coalesced > 0, "no queued change was coalesced"
    slow.protocol.transport.resumeProducing()
    await db.save({"_id": "end"})
    got: list[dict[str, Any]] = []
    while not got or got[-1]["id"] != "end":
        got.append(await slow.next("change", timeout=10))
    counts = Counter(c["id"] for c in got)
    assert counts["hot"] < 20 and counts["end"] == 1, counts
    hots = [c for c in got if c["id"] == "hot"]
    assert hots[-1]["doc"]["n"] == 19  # the latest revision, once
    assert set(counts) == {c["id"] for c in healthy.messages if c["type"] == "change"}
