"""Sessions and tokens across gateway replicas (docs/deployment.md, "Why stateless gateways
are correct"; docs/rest-api.md, "Authentication").

A session is CouchDB's own ``AuthSession`` value: any replica in front of the same
CouchDB verifies it with CouchDB, so no secret is shared between gateways in ``forward``
mode. What the replicas must agree on is the cookie's name.
"""

from __future__ import annotations

from typing import Any

from tests.multigw.stack import WsClient, request


def _cookie(answer: Any, name: str = "wallaby_session") -> str:
    for value in answer.headers_all("Set-Cookie"):
        if value.startswith(name + "="):
            return value.split(";", 1)[0]
    raise AssertionError(f"no {name} cookie in {answer.headers}")


def test_cookie_and_token_from_one_gateway_work_on_the_other(lab: Any) -> None:
    name, password = lab.user()
    db = lab.database([name])
    a = lab.gateway("a")
    b = lab.gateway("b")
    login = request(a.port, "POST", "/api/v1/session", body={"name": name, "password": password})
    assert login.status == 200, login
    cookie, token = _cookie(login), login.json["token"]
    for gateway in (a, b):
        session = request(gateway.port, "GET", "/api/v1/session", headers={"Cookie": cookie})
        assert session.status == 200 and session.json["name"] == name, session
        bearer = request(gateway.port, "GET", f"/api/v1/db/{db}",
                         headers={"Authorization": f"Bearer {token}"})
        assert bearer.status == 200, bearer
        for headers, path in (({"Cookie": cookie}, "/api/v1/changes"),
                              ({}, f"/api/v1/changes?token={token}")):
            ws = WsClient.connect(gateway.port, path, headers=headers)
            try:
                assert ws.status == 101, (gateway.name, ws.status, ws.buffer[:200])
                ws.send_json({"type": "subscribe", "id": "s", "db": db, "since": 0})
                assert ws.receive()["type"] == "subscribed"
            finally:
                ws.close()


def test_logout_on_one_gateway_clears_the_cookie_for_every_gateway(lab: Any) -> None:
    """``DELETE /session`` clears the browser's cookie; CouchDB sessions are stateless, so the
    token itself stays valid until CouchDB's session timeout, on every replica alike
    (as on CouchDB, whose ``DELETE /_session`` only clears the cookie too)."""
    name, password = lab.user()
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    login = request(proxy.port, "POST", "/api/v1/session", body={"name": name, "password": password})
    cookie, token = _cookie(login), login.json["token"]
    logout = request(a.port, "DELETE", "/api/v1/session", headers={"Cookie": cookie})
    assert logout.status == 200
    cleared = _cookie(logout)
    assert cleared == "wallaby_session="
    assert "Max-Age=0" in logout.header("Set-Cookie")
    for gateway in (a, b):
        assert request(gateway.port, "GET", "/api/v1/session",
                       headers={"Cookie": cleared}).status == 401
        # the same on both replicas: the token outlives the logout (documented stateless)
        assert request(gateway.port, "GET", "/api/v1/session",
                       headers={"Authorization": f"Bearer {token}"}).status == 200


def test_replicas_with_different_cookie_names_refuse_cleanly(lab: Any) -> None:
    """A replica configured with another ``WALLABY_COOKIE_NAME`` does not see the session:
    a clean 401 envelope, not a 500 (the token still works, it is not a cookie)."""
    name, password = lab.user()
    a = lab.gateway("a")
    b = lab.gateway("b", WALLABY_COOKIE_NAME="other_session")
    login = request(a.port, "POST", "/api/v1/session", body={"name": name, "password": password})
    cookie = _cookie(login)
    refused = request(b.port, "GET", "/api/v1/session", headers={"Cookie": cookie})
    assert refused.status == 401 and refused.json["error"] == "unauthorized", refused
    ws = WsClient.connect(b.port, "/api/v1/changes", headers={"Cookie": cookie})
    try:
        assert ws.status == 401
    finally:
        ws.close()
    assert request(b.port, "GET", "/api/v1/session",
                   headers={"Authorization": f"Bearer {login.json['token']}"}).status == 200


def test_a_forged_or_foreign_token_is_a_clean_401_on_every_replica(lab: Any) -> None:
    a = lab.gateway("a")
    b = lab.gateway("b")
    for gateway in (a, b):
        for token in ("YWRtaW46NjVGMDAwMDA6AAAAAAAAAAAAAAAAAAAAAAAAAAA", "x" * 4096):
            answer = request(gateway.port, "GET", "/api/v1/session",
                             headers={"Authorization": f"Bearer {token}"})
            assert answer.status == 401 and answer.json["error"] == "unauthorized", answer
