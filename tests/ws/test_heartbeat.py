"""A stalled upstream (a hung middlebox between the gateway and CouchDB) is detected by
the shared feed's heartbeat watchdog: subscribers hear ``feed_state`` interrupted within
a few heartbeats, then ``live`` once the path heals, and get every change exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.couch import CouchServer, Database
from tests.conftest import CouchBackend
from tests.ws.conftest import server_behind_fault_proxy, ws_settings

HEARTBEAT_MS = 300
#: Silence is detected after 2 heartbeats; this leaves room for a busy test machine.
DETECTION_BOUND = 3.0


async def test_stalled_upstream_is_detected_by_heartbeat_and_recovers(
    couch_backend: CouchBackend, admin: CouchServer, db: Database, make_user: Any, reactor: Any,
) -> None:
    async with server_behind_fault_proxy(reactor, couch_backend, admin,
                                         ws_settings(feed_heartbeat_ms=HEARTBEAT_MS)) as (server, proxy):
        client = await server.connect(await server.login(await make_user()))
        assert (await client.subscribe("s", db.name))["type"] == "subscribed"
        await db.bulk_save([{"_id": f"a{i}"} for i in range(5)])
        assert sorted(c["id"] for c in await client.collect_changes(5)) == [f"a{i}" for i in range(5)]

        proxy.stall()
        stalled_at = reactor.seconds()
        notice = await client.next("feed_state", timeout=DETECTION_BOUND + 2)
        detected_after = reactor.seconds() - stalled_at
        assert notice["state"] == "interrupted", notice
        # the feed's own explanation reaches the client, not a guess
        assert notice["reason"] == f"no heartbeat from CouchDB for {2 * HEARTBEAT_MS / 1000:g} s;" \
            " reconnecting", notice
        assert detected_after < DETECTION_BOUND, f"stall noticed after {detected_after:.2f} s"
        # written while the path is dead: must arrive after it heals
        await db.bulk_save([{"_id": f"b{i}"} for i in range(5)])

        proxy.resume()
        live = await client.next("feed_state", timeout=20)
        assert live["state"] == "live", live
        assert live["feed"] == notice["feed"]
        await db.bulk_save([{"_id": f"c{i}"} for i in range(5)])
        changes = await client.collect_changes(10, timeout=20)
        assert sorted(c["id"] for c in changes) == sorted(
            [f"b{i}" for i in range(5)] + [f"c{i}" for i in range(5)]
        )
        await db.save({"_id": "end"})
        assert (await client.next("change"))["id"] == "end"  # nothing repeated in between
        seen = Counter(m["id"] for m in client.messages if m["type"] == "change")
        assert set(seen.values()) == {1}, seen
        assert len(seen) == 16
        states = [m["state"] for m in client.messages if m["type"] == "feed_state"]
        assert states == ["interrupted", "live"], states
        assert server.feeds() == 1
        client.check()
