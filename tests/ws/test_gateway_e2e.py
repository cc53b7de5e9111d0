"""End to end through the real gateway: REST login sets the cookie, the WebSocket
handshake is authenticated by the same identity code, changes flow."""

from __future__ import annotations

import json
from typing import Any

import treq

from gateway.couch import CouchServer, Database
from tests.ws.conftest import Client, ClientProtocol, gateway_with_changes, sleep


async def test_cookie_login_then_websocket_through_gateway(
    reactor: Any, admin: CouchServer, db: Database, make_user: Any
) -> None:
    from autobahn.twisted.websocket import WebSocketClientFactory

    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        base = f"127.0.0.1:{gateway.port}"
        user = await make_user()
        answer = await treq.post(f"http://{base}/api/v1/session",
                                 json={"name": user.name, "password": user.password})
        assert answer.code == 200, await answer.text()
        cookie = answer.headers.getRawHeaders("set-cookie")[0].split(";")[0]
        factory = WebSocketClientFactory(f"ws://{base}/api/v1/changes",
                                         headers={"Cookie": cookie}, reactor=reactor)
        factory.protocol = ClientProtocol
        built: list[ClientProtocol] = []
        original = factory.buildProtocol
        factory.buildProtocol = lambda addr: built.append(original(addr)) or built[-1]
        reactor.connectTCP("127.0.0.1", gateway.port, factory)
        while not built:
            await sleep(reactor, 0.005)
        await built[0].opened
        client = Client(built[0], reactor)
        assert (await client.subscribe("s", db.name, include_docs=True))["type"] == "subscribed"
        await db.save({"_id": "e2e", "v": 1})
        change = await client.next("change")
        assert change["id"] == "e2e" and change["doc"]["v"] == 1
        # no credentials: refused at the handshake
        anonymous = WebSocketClientFactory(f"ws://{base}/api/v1/changes", reactor=reactor)
        anonymous.protocol = ClientProtocol
        refused: list[ClientProtocol] = []
        original_anon = anonymous.buildProtocol
        anonymous.buildProtocol = lambda addr: refused.append(original_anon(addr)) or refused[-1]
        reactor.connectTCP("127.0.0.1", gateway.port, anonymous)
        while not refused:
            await sleep(reactor, 0.005)
        try:
            await refused[0].opened
            raise AssertionError("anonymous handshake accepted")
        except ConnectionError:
            pass
        await client.close()


async def test_a_plain_request_to_the_websocket_endpoint_gets_the_envelope(
    reactor: Any, admin: CouchServer
) -> None:
    """Not Autobahn's status page (which named the library and its version), and no
    way around the front door: 426 with the error envelope, for anyone."""
    from tests.rest.conftest import CONTRACT

    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        for method in ("GET", "POST"):
            answer = await treq.request(method, f"http://127.0.0.1:{gateway.port}/api/v1/changes")
            body = await answer.content()
            assert answer.code == 426, body
            assert b"autobahn" not in body.lower()
            envelope = json.loads(body)
            assert envelope["error"] == "upgrade_required" and envelope["status"] == 426
        assert CONTRACT.match("GET", "/api/v1/changes") is not None
