"""Browser sessions stay alive while used: CouchDB's refreshed cookies reach the browser."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.task import deferLater

from gateway.config import Settings
from gateway.couch import CouchServer, ForwardedAuth, ProxyAuth
from gateway.http.session import session_cookie, session_refresh
from gateway.identity import Identity
from tests.conftest import CouchBackend, TestUser
from tests.rest.conftest import RunningGateway
from tests.support.couchconfig import config_value

TIMEOUT = 20  # seconds a CouchDB session lives without being refreshed


async def test_refreshed_session_cookie_is_handed_back_and_outlives_the_first(
    gateway: RunningGateway, admin: CouchServer, couch_backend: CouchBackend,
    make_user: Callable[..., Awaitable[TestUser]], reactor: Any,
) -> None:
    user = await make_user()
    async with config_value(admin, couch_backend.is_pouchdb, "chttpd_auth", "timeout", str(TIMEOUT)):
        login = await gateway.client.post(
            "/api/v1/session", json_body={"name": user.name, "password": user.password})
        first = login.json["token"]
        started = reactor.seconds()
        await deferLater(reactor, 3, lambda: None)
        used = await gateway.client.get("/api/v1/session",
                                        headers={"Cookie": f"wallaby_session={first}"})
        assert used.status == 200
        cookies = used.headers_all("Set-Cookie")
        assert len(cookies) == 1, "CouchDB refreshed the session: the browser must get it"
        assert "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0]
        second = cookies[0].split(";", 1)[0].split("=", 1)[1]
        assert second and second != first

        await deferLater(reactor, max(0.0, TIMEOUT + 1 - (reactor.seconds() - started)),
                         lambda: None)
        expired = await gateway.client.get("/api/v1/session",
                                           headers={"Cookie": f"wallaby_session={first}"})
        assert expired.status == 401
        alive = await gateway.client.get("/api/v1/session",
                                         headers={"Cookie": f"wallaby_session={second}"})
        assert alive.status == 200 and alive.json["name"] == user.name
        bearer = await gateway.client.get("/api/v1/session",
                                          headers={"Authorization": f"Bearer {second}"})
        assert bearer.headers_all("Set-Cookie") == [], "bearer clients get no cookie"


def test_proxy_mode_hands_back_the_session_its_verification_refreshed() -> None:
    """proxy mode: upstream requests carry proxy headers; the session CouchDB refreshes
    is the verified credential's (its ``GET /_session`` identity checks)."""
    settings = Settings(auth_mode="proxy", proxy_secret="s3cret")
    credential = ForwardedAuth({"Cookie": "AuthSession=first"})
    identity = Identity("bob", ("editor",), ProxyAuth("bob", ["editor"], secret="s3cret"),
                        credential=credential)
    refresh = session_refresh(settings, identity, "first")
    assert refresh() is None
    credential.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert refresh() == session_cookie(settings, "second")
