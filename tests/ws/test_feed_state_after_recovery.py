"""A subscriber joining a shared feed *after* it came back from an
interruption is not told it is interrupted (the hub keeps the ``interrupted`` notice for
joiners only while the feed is down: hub.py ``_on_state``). Real pouchdb-server behind
the suite's fault proxy, real sockets."""

from __future__ import annotations

from typing import Any

from gateway.couch import CouchServer, Database
from tests.conftest import CouchBackend
from tests.ws.conftest import server_behind_fault_proxy, ws_settings

HEARTBEAT_MS = 300


async def test_a_subscriber_joining_after_the_feed_recovered_is_not_told_interrupted(
    couch_backend: CouchBackend, admin: CouchServer, db: Database, make_user: Any, reactor: Any,
) -> None:
    async with server_behind_fault_proxy(reactor, couch_backend, admin,
                                         ws_settings(feed_heartbeat_ms=HEARTBEAT_MS)) as (server, proxy):
        token = await server.login(await make_user())
        first = await server.connect(token)
        assert (await first.subscribe("s", db.name))["type"] == "subscribed"
        await db.save({"_id": "before"})  # the upstream feed is connected and live
        assert (await first.next("change", timeout=10))["id"] == "before"
        proxy.stall()
        assert (await first.next("feed_state", timeout=10))["state"] == "interrupted"
        proxy.resume()
        assert (await first.next("feed_state", timeout=20))["state"] == "live"
        # The feed is live again: a new subscriber of the same feed joins now.
        second = await server.connect(token)
        assert (await second.subscribe("s", db.name))["type"] == "subscribed"
        await db.save({"_id": "after"})
        assert (await second.next("change", timeout=10))["id"] == "after"
        states = [m for m in second.messages if m["type"] == "feed_state"]
        assert states == [], f"a subscriber of a live feed was told: {states}"
        assert server.feeds() == 1
