"""The ``closing`` message's resume seqs must move past every change
written, whichever path wrote it (a catch-up page, a queued or trailing live change), not
only the fan-out's fast path. Real pouchdb-server, real gateway endpoint, real sockets."""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from gateway.ws.protocol import CLOSE_GOING_AWAY
from tests.ws.conftest import WsServer


async def test_closing_resume_seq_covers_a_catch_up_and_trailing_live_changes(
    make_server: Any, db: Database, make_user: Any
) -> None:
    await db.bulk_save([{"_id": f"old{i}"} for i in range(3)])
    server: WsServer = await make_server()
    client = await server.connect(await server.login(await make_user()))
    answer = await client.subscribe("s", db.name, since=0)
    assert answer["type"] == "subscribed", answer
    caught_up = await client.collect_changes(3)
    assert [c["id"] for c in caught_up] == ["old0", "old1", "old2"]
    # Right after a catch-up the join's trailing filter is on: this live change goes
    # through the connection's queue path (_deliver -> _enqueue -> _write).
    await db.save({"_id": "live"})
    live = await client.next("change")
    assert live["id"] == "live"
    await server.service.stopService()
    _clean, code, _reason = await client.protocol.closed
    assert code == CLOSE_GOING_AWAY
    closing = await client.next("closing")
    # Resuming from anything older would send changes the client already has.
    assert closing["resume"] == {"s": live["seq"]}, (closing, live["seq"])


async def test_closing_resume_seq_after_a_catch_up_only(
    make_server: Any, db: Database, make_user: Any
) -> None:
    await db.bulk_save([{"_id": f"old{i}"} for i in range(3)])
    server: WsServer = await make_server()
    client = await server.connect(await server.login(await make_user()))
    assert (await client.subscribe("s", db.name, since=0))["type"] == "subscribed"
    caught_up = await client.collect_changes(3)
    await server.service.stopService()
    await client.protocol.closed
    closing = await client.next("closing")
    assert closing["resume"] == {"s": caught_up[-1]["seq"]}, (closing, caught_up[-1]["seq"])
