"""A subscriber that joins a shared feed while it is interrupted (session 20).

Found while exhausting the gateway's descriptors: after the flood the shared feed waits
out its reconnection backoff (up to 30 s) while REST, and so the access check of a new
``subscribe``, already work again. A subscriber arriving then gets ``subscribed`` and
nothing else: no ``feed_state interrupted``, though its feed is down and changes written
meanwhile wait for the reconnection. docs/websocket.md ("Upstream faults"): subscribers
get ``feed_state interrupted`` and later ``feed_state live``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, http, spawn_gateway
from tests.reliability.wsclient import open_socket
from tests.support.faultproxy import FaultProxy
from tests.ws.conftest import Client, sleep


async def test_a_subscriber_joining_an_interrupted_feed_is_told_it_is_interrupted(
    couch: Couch, couch_backend: CouchBackend, tmp_path: Path,
    gateways: list[GatewayProcess], reactor: Any,
) -> None:
    target_port = int(couch_backend.url.rsplit(":", 1)[1])
    proxy = FaultProxy(reactor, target_port)
    proxy.listen()
    proxied_url = (f"http://{couch_backend.admin_username}:{couch_backend.admin_password}"
                   f"@127.0.0.1:{proxy.port}")
    gateway = await deferToThread(spawn_gateway, proxied_url, tmp_path,
                                  WALLABY_FEED_HEARTBEAT_MS="500")
    gateways.append(gateway)
    user, password = couch.new_user()
    db = couch.new_db(members=[user])
    try:
        login = await deferToThread(http, "POST", gateway.url + "/api/v1/session",
                                    {"name": user, "password": password})
        token = login.json["token"]
        first = Client(await open_socket(reactor, gateway.port,
                                         gateway.ws_url + f"?token={token}"), reactor)
        assert (await first.subscribe("a", db, since=0))["type"] == "subscribed"
        await deferToThread(couch.call, "PUT", f"/{db}/before", {})
        assert (await first.next("change", timeout=15))["id"] == "before"  # the feed is live
        # the path to CouchDB dies long enough for the feed's backoff to grow
        proxy.stall()
        notice = await first.next("feed_state", timeout=20)
        assert notice["state"] == "interrupted"
        await sleep(reactor, 15)
        proxy.resume()
        proxy.reset_all()  # the dead path's sockets go away; CouchDB answers again
        second = Client(await open_socket(reactor, gateway.port,
                                          gateway.ws_url + f"?token={token}"), reactor)
        subscribed = await second.subscribe("b", db, since=0)
        assert subscribed["type"] == "subscribed", subscribed
        # precondition: the shared feed is still waiting out its backoff
        assert not any(m.get("type") == "feed_state" and m.get("state") == "live"
                       for m in first.messages), "feed came back before the join"
        assert subscribed["feed"] == notice["feed"]
        state = await second.next("feed_state", timeout=40)
        assert state["state"] == "interrupted", (
            f"the joining subscriber's first feed_state is {state}: it was never told its "
            "feed was interrupted")
        await first.close()
        await second.close()
    finally:
        await proxy.close()
        couch.delete_db(db)
