"""What identity material reaches CouchDB, per ``WALLABY_AUTH_MODE``.

A real gateway process in front of the recording CouchDB 3.x stand-in
(``tests/support/couch_auth_standin.py``), which logs every upstream request's headers.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import GatewayProcess, http, spawn_gateway
from tests.reliability.wsclient import open_socket
from tests.support.couch_auth_standin import CouchAuthStandIn, hs256
from tests.ws.conftest import sleep

SECRET = "proxy-secret"
SPOOFED = [
    ("X-Auth-CouchDB-UserName", "admin"),
    ("X-Auth-CouchDB-Roles", "_admin"),
    ("X-Auth-CouchDB-Token", "00"),
    ("x-auth-couchdb-username", "admin"),
    ("X-AUTH-COUCHDB-ROLES", "_admin"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-User", "admin"),
    ("X-Forwarded-Host", "evil"),
    ("Proxy-Authorization", "Basic YWRtaW46YWRtaW5wdw=="),
    ("Cookie", "AuthSession=forged; other=1"),
]
#: A second Authorization, admin's: the request is refused (400), never served as either.
SECOND_AUTHORIZATION = ("Authorization", "Basic YWRtaW46YWRtaW5wdw==")


@pytest.fixture
def fake() -> Iterator[CouchAuthStandIn]:
    couch = CouchAuthStandIn(secret=SECRET).start()
    couch.add_user("bob", "pw", ["editor"])
    couch.add_db("alpha", roles=["editor"])
    couch.put_doc("alpha", "d1", {"v": 1})
    yield couch
    couch.stop()


def _gateway(fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
             mode: str) -> GatewayProcess:
    env = {"WALLABY_AUTH_MODE": mode, "WALLABY_WS_PING_INTERVAL": "0"}
    if mode == "proxy":
        env["WALLABY_PROXY_SECRET"] = SECRET
    gateway = spawn_gateway(fake.url, tmp_path, **env)
    gateways.append(gateway)
    return gateway


def _credential(fake: CouchAuthStandIn, mode: str) -> str:
    if mode == "jwt":
        token = hs256({"sub": "bob", "_couchdb.roles": ["editor"],
                       "exp": int(time.time()) + 300}, fake.jwt_key)
        return f"Bearer {token}"
    return "Basic " + base64.b64encode(b"bob:pw").decode()


def _raw_get(port: int, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, body


def _user_requests(fake: CouchAuthStandIn, since: int) -> list[Any]:
    """Upstream requests after ``since`` that are not the service's own (feed, admin)."""
    admin = "Basic " + base64.b64encode(b"admin:adminpw").decode()
    return [r for r in fake.recorded()[since:] if admin not in r.get("Authorization")]


@pytest.mark.parametrize("mode", ["forward", "jwt", "proxy"])
async def test_client_identity_headers_never_reach_couchdb(
    reactor: Any, fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess], mode: str,
) -> None:
    """Control (passes): upstream requests are built from scratch; only the gateway's own
    credential headers go, REST and WS alike. Two Authorization fields are refused (400)
    before anything goes upstream."""
    gateway = _gateway(fake, tmp_path, gateways, mode)
    since = len(fake.recorded())
    headers = [("Authorization", _credential(fake, mode)), *SPOOFED]
    status, body = _raw_get(gateway.port, "/api/v1/db/alpha/docs/d1",
                            [*headers, SECOND_AUTHORIZATION])
    assert status == 400 and b"Authorization" in body, body
    assert not _user_requests(fake, since)
    status, body = _raw_get(gateway.port, "/api/v1/db/alpha/docs/d1", headers)
    assert status == 200, body
    ws_headers = {"Authorization": _credential(fake, mode), **dict(SPOOFED)}
    proto = await open_socket(reactor, gateway.port, gateway.ws_url, headers=ws_headers)
    proto.send({"type": "subscribe", "id": "s", "db": "alpha", "since": 0})
    await sleep(reactor, 1.5)
    proto.sendClose()
    assert any(m.get("type") == "subscribed" for m in proto.messages), proto.messages
    seen = _user_requests(fake, since)
    assert seen
    for request in seen:
        names = {k.lower() for k, _ in request.headers}
        assert not {n for n in names if n.startswith("x-forwarded")}, request
        assert "proxy-authorization" not in names
        if mode == "proxy":
            assert request.get("X-Auth-CouchDB-UserName") in ([], ["bob"]), request
            assert request.get("X-Auth-CouchDB-Roles") in ([], ["editor"]), request
        else:
            assert not {n for n in names if n.startswith("x-auth-couchdb")}, request
        assert all("forged" not in c for c in request.get("Cookie")), request
        assert all("YWRtaW46" not in a for a in request.get("Authorization")), request


async def test_jwt_mode_login_token_is_usable_as_bearer(
    fake: CouchAuthStandIn, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    """docs/rest-api.md: ``POST /api/v1/session`` "returns ``{ok, name, roles, token}``" and a
    request may present "``Authorization: Bearer <token>`` with the ``token`` returned by the
    login"; the browser client in token mode does exactly that after ``login()``
    (gateway/static/wallaby.js), and over ``?token=`` for its WebSocket.

    In ``jwt`` mode the login still works (CouchDB's cookie handler stays enabled by
    deploy/couchdb_setup.py) and returns CouchDB's ``AuthSession`` value as ``token``,
    but gateway/identity.py ``credentials_from`` sends every bearer upstream as
    ``Authorization: Bearer <AuthSession>``, which CouchDB's ``jwt_authentication_handler``
    rejects (not a JWT → 401). So the token the gateway hands out is refused by the same
    gateway. An ``AuthSession`` value (base64url, no ``.``) is never a JWS compact token
    (exactly two ``.``), so the two can be told apart.
    """
    gateway = _gateway(fake, tmp_path, gateways, "jwt")
    login = http("POST", gateway.url + "/api/v1/session", {"name": "bob", "password": "pw"})
    assert login.status == 200, login.body
    token = login.json["token"]
    since = len(fake.recorded())
    who = http("GET", gateway.url + "/api/v1/session", None,
               {"Authorization": f"Bearer {token}"})
    upstream = [(r.path, r.get("Authorization"), r.get("Cookie"))
                for r in _user_requests(fake, since)]
    assert who.status == 200, (
        f"jwt mode: the login's own token as bearer → {who.status} "
        f"{json.loads(who.body).get('reason')}; sent upstream: {upstream}")
