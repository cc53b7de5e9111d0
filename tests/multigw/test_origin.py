"""WebSocket ``Origin`` and cookie flags behind the shipped HAProxy config.

HAProxy passes ``Host`` through, so the gateway's "own origin" check (``Origin``'s host
equal to ``Host``) sees the public host; ``X-Forwarded-Proto`` is set by HAProxy but the
gateway marks cookies ``Secure`` only by ``WALLABY_COOKIE_SECURE`` (docs/deployment.md).
"""

from __future__ import annotations

from typing import Any

from tests.multigw.stack import WsClient, request


def _cookie(answer: Any) -> str:
    for value in answer.headers_all("Set-Cookie"):
        if value.startswith("wallaby_session="):
            return value
    raise AssertionError(answer.headers)


def test_same_origin_page_behind_the_proxy_may_open_a_websocket_with_its_cookie(lab: Any) -> None:
    name, password = lab.user()
    a = lab.gateway("a")
    b = lab.gateway("b")
    proxy = lab.haproxy(a, b)
    public = f"http://127.0.0.1:{proxy.port}"
    login = request(proxy.port, "POST", "/api/v1/session", body={"name": name, "password": password})
    cookie = _cookie(login).split(";", 1)[0]
    for _ in range(2):  # leastconn: both replicas
        ws = WsClient.connect(proxy.port, headers={"Origin": public, "Cookie": cookie})
        assert ws.status == 101, ws.buffer[:200]
        ws.close()
    foreign = WsClient.connect(proxy.port, headers={"Origin": "http://evil.example", "Cookie": cookie})
    assert foreign.status == 403
    foreign.close()


def test_cookie_secure_follows_the_setting_not_a_forwarded_proto(lab: Any) -> None:
    name, password = lab.user()
    plain = lab.gateway("a")
    secure = lab.gateway("b", WALLABY_COOKIE_SECURE="true")
    for gateway, flagged in ((plain, False), (secure, True)):
        proxy = lab.haproxy(gateway)
        # a client's own X-Forwarded-Proto is overwritten by HAProxy, and ignored anyway
        login = request(proxy.port, "POST", "/api/v1/session", headers={"X-Forwarded-Proto": "https"},
                        body={"name": name, "password": password})
        assert login.status == 200
        assert ("Secure" in _cookie(login).split("; ")) is flagged
