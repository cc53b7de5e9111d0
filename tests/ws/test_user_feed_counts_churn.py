"""per-user feed counts across design-filter changeovers and churn.

After any mix of subscribes, immediate unsubscribes, closes, lost sockets (which
linger) and resumes across design document updates, ``factory.user_feeds`` must equal
the live subscriptions' keys (plus lingering ones) and be empty once everything ended.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.couch import Database
from tests.ws.conftest import WsServer, sleep

CODE = "function (doc, req) { return doc.kind === '%s'; }"


async def _update(db: Database, kind: str) -> None:
    ddoc = await db.get("_design/app")
    ddoc["filters"]["f"] = CODE % kind
    await db.save(ddoc)


def _live_keys(server: WsServer) -> Counter[Any]:
    keys: Counter[Any] = Counter()
    for conn in server.service.factory.connections:
        for sub in conn.subs.values():
            if sub.feed_key is not None:
                keys[sub.feed_key] += 1
    return keys


async def test_user_feed_counts_follow_live_subscriptions_through_churn(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    ws_server.service.hub.linger = 0.3
    await db.save({"_id": "_design/app", "filters": {"f": CODE % "k0"}})
    user = await make_user()
    token = await ws_server.login(user)
    owner = f"user:{user.name}"
    factory = ws_server.service.factory
    kept = []
    for round_ in range(6):
        a = await ws_server.connect(token)
        b = await ws_server.connect(token)
        # subscribe then unsubscribe at once (between the subscribe and its authorisation)
        a.send({"type": "subscribe", "id": "x", "db": db.name, "filter": "app/f"})
        a.send({"type": "unsubscribe", "id": "x"})
        # subscribe then close at once
        b.send({"type": "subscribe", "id": "y", "db": db.name, "filter": "app/f"})
        b.send({"type": "subscribe", "id": "z", "db": db.name})
        await b.close()
        c = await ws_server.connect(token)
        assert (await c.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"
        # update while another subscribe is in flight
        d = await ws_server.connect(token)
        d.send({"type": "subscribe", "id": "s", "db": db.name, "filter": "app/f"})
        await _update(db, f"k{round_ + 1}")
        await d.next(where=lambda m: m.get("id") == "s" and m["type"] in ("subscribed", "error"))
        # lose c's socket (it lingers), then resume on a new socket
        c.protocol.transport.abortConnection()
        await c.protocol.closed
        e = await ws_server.connect(token)
        assert (await e.subscribe("s", db.name, filter="app/f"))["type"] == "subscribed"
        await a.close()
        kept += [d, e]
        await sleep(reactor, 0.05)
        held = Counter(factory.user_feeds.get(owner, {}))
        assert all(n > 0 for n in held.values()), held
    for client in kept:
        await client.close()
    await sleep(reactor, 1.0)
    assert not _live_keys(ws_server)
    assert not factory.user_feeds, factory.user_feeds
    assert not ws_server.service.hub.feeds
