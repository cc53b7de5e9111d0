"""A client that never reads, CouchDB going away, graceful shutdown."""

from __future__ import annotations

import base64
import os
from typing import Any

import psutil
from twisted.internet.threads import deferToThread

from gateway.couch import CouchServer, Database
from gateway.ws.protocol import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER
from tests.conftest import CouchBackend
from tests.ws.conftest import (
    StopsReading,
    WsServer,
    gateway_with_changes,
    open_client,
    sleep,
    ws_settings,
)


async def test_client_that_never_reads_is_closed_and_others_unaffected(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    budget = 1024 * 1024
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=budget),
                                         socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    stuck = await server.connect(token, protocol=StopsReading)
    stuck.send({"type": "subscribe", "id": "s", "db": db.name, "include_docs": True})
    healthy = await server.connect(token)
    await healthy.subscribe("s", db.name, include_docs=True)
    rss_before = psutil.Process(os.getpid()).memory_info().rss
    blob = "x" * 8000
    total = 0
    for batch in range(16):
        await db.bulk_save([{"_id": f"b{batch}-{i}", "blob": blob} for i in range(50)])
        total += 50
        changes = await healthy.collect_changes(50)
        assert sorted(c["id"] for c in changes) == sorted(f"b{batch}-{i}" for i in range(50))
    # the stuck client was closed with 4008 once its queue passed the budget
    for _ in range(500):
        if server.service.metrics.slow_closed:
            break
        await sleep(reactor, 0.01)
    assert server.service.metrics.slow_closed == 1
    # the server does not hold more than the budget (plus socket buffers) for it
    connections = server.service.factory.connections
    assert all(c.outbox.bytes <= budget for c in connections)
    stuck.protocol.transport.resumeProducing()
    _clean, code, _reason = await stuck.protocol.closed
    closing = [m for m in stuck.messages if m["type"] == "closing"]
    if code == CLOSE_SLOW_CONSUMER:
        assert closing and "s" in closing[0]["resume"]
    rss_after = psutil.Process(os.getpid()).memory_info().rss
    assert rss_after - rss_before < 64 * 1024 * 1024
    await db.save({"_id": "after"})
    assert (await healthy.next("change"))["id"] == "after"
    assert server.feeds() == 1


async def test_upstream_kill_and_restart_loses_nothing(
    make_server: Any, db: Database, make_user: Any, reactor: Any, couch_backend: CouchBackend,
) -> None:
    couch = couch_backend.require_killable()
    server: WsServer = await make_server(ws_settings(feed_heartbeat_ms=1000))
    token = await server.login(await make_user())
    clients = [await server.connect(token) for _ in range(3)]
    for client in clients:
        await client.subscribe("s", db.name)
    await db.bulk_save([{"_id": f"a{i}"} for i in range(5)])
    for client in clients:
        assert sorted(c["id"] for c in await client.collect_changes(5)) == [f"a{i}" for i in range(5)]
    await deferToThread(couch.kill)
    for client in clients:
        notice = await client.next("feed_state", timeout=20)
        assert notice["state"] == "interrupted"
    await deferToThread(couch.restart)
    await db.bulk_save([{"_id": f"b{i}"} for i in range(5)])
    for client in clients:
        await client.next("feed_state", timeout=30, where=lambda m: m["state"] == "live")
        changes = await client.collect_changes(5, timeout=30)
        assert sorted(c["id"] for c in changes) == [f"b{i}" for i in range(5)]
    await db.save({"_id": "c"})
    for client in clients:
        assert (await client.next("change"))["id"] == "c"  # nothing twice in between
    assert server.feeds() == 1


async def test_graceful_shutdown_closes_with_1001_and_resume_seqs(
    make_server: Any, db: Database, make_user: Any
) -> None:
    server: WsServer = await make_server()
    client = await server.connect(await server.login(await make_user()))
    await client.subscribe("s", db.name)
    await db.save({"_id": "one"})
    change = await client.next("change")
    # One that has had no change yet resumes from where it started, not from "now".
    quiet = await client.subscribe("q", db.name, filter="_doc_ids", doc_ids=["never"])
    assert quiet["type"] == "subscribed" and quiet.get("since") is not None, quiet
    await server.service.stopService()
    _clean, code, _reason = await client.protocol.closed
    assert code == CLOSE_GOING_AWAY
    closing = await client.next("closing")
    assert closing["code"] == CLOSE_GOING_AWAY
    assert closing["resume"] == {"s": change["seq"], "q": quiet["since"]}
    assert server.feeds() == 0


async def test_a_quiet_websocket_outlives_the_http_idle_timeout(
    reactor: Any, admin: CouchServer, db: Database, make_user: Any
) -> None:
    """WALLABY_IDLE_TIMEOUT closes silent HTTP connections; an upgraded one is the
    WebSocket's, kept (or dropped) by its own pings, not by the HTTP channel's timer."""
    user = await make_user()
    await db.set_security({"members": {"names": [user.name], "roles": []}})
    basic = "Basic " + base64.b64encode(f"{user.name}:{user.password}".encode()).decode()
    async with gateway_with_changes(reactor, admin, idle_timeout=0.5, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        client = await open_client(reactor, f"ws://127.0.0.1:{gateway.port}/api/v1/changes",
                                   headers={"Authorization": basic})
        try:
            assert (await client.subscribe("s", db.name))["type"] == "subscribed"
            await sleep(reactor, 2.0)  # four idle timeouts of silence
            await db.save({"_id": "after-the-silence"})
            assert (await client.next("change", timeout=10))["id"] == "after-the-silence"
            assert not client.protocol.closed.called
        finally:
            await client.close()

