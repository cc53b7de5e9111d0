"""Sessions stay alive while used: CouchDB's refreshed sessions reach the client.

A cookie client gets the refreshed session as the gateway's cookie (``Set-Cookie``); a
bearer-token client (``Authorization: Bearer``, the ``token`` of ``POST /session``) as
``X-Wallaby-Token``, a header scripts can read (a page on another site cannot read a
``Set-Cookie``, and sends no cookie anyway).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from gateway.config import Settings
from gateway.couch import BearerAuth, CouchServer, ForwardedAuth, ProxyAuth
from gateway.http.session import TOKEN_HEADER, session_cookie, session_refresh
from gateway.identity import Identity
from tests.conftest import CouchBackend, TestUser
from tests.rest.conftest import RunningGateway, StartGateway
from tests.support.couchconfig import config_value

TIMEOUT = 20  # seconds a CouchDB session lives without being refreshed


class _Head:
    """The part of a request a refresh hook writes to: its response headers."""

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.responseHeaders = Headers()

    def added(self) -> dict[str, list[str]]:
        return {name.decode(): [v.decode() for v in values]
                for name, values in self.responseHeaders.getAllRawHeaders()}


def _applied(refresh: Callable[[Any], None], code: int = 200) -> dict[str, list[str]]:
    head = _Head(code)
    refresh(head)
    return head.added()


async def _past_the_timeout(gateway: RunningGateway, reactor: Any, started: float,
                            user: TestUser, first: dict[str, str],
                            second: dict[str, str]) -> None:
    """Once the first session (presented by ``first``) timed out, it is refused and the
    refreshed one (``second``) still serves the user."""
    await deferLater(reactor, max(0.0, TIMEOUT + 1 - (reactor.seconds() - started)),
                     lambda: None)
    expired = await gateway.client.get("/api/v1/session", headers=first)
    assert expired.status == 401
    alive = await gateway.client.get("/api/v1/session", headers=second)
    assert alive.status == 200 and alive.json["name"] == user.name


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
        assert used.header(TOKEN_HEADER) is None, "a cookie client gets the cookie, no token"
        second = cookies[0].split(";", 1)[0].split("=", 1)[1]
        assert second and second != first

        await _past_the_timeout(gateway, reactor, started, user,
                                {"Cookie": f"wallaby_session={first}"},
                                {"Cookie": f"wallaby_session={second}"})
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
    assert _applied(refresh) == {}
    credential.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert _applied(refresh) == {"Set-Cookie": [session_cookie(settings, "second")]}


async def test_refreshed_session_reaches_a_bearer_client_and_outlives_the_first(
    start_gateway: StartGateway, admin: CouchServer, couch_backend: CouchBackend,
    make_user: Callable[..., Awaitable[TestUser]], reactor: Any,
) -> None:
    """A token client touching ``GET /session`` gets the refreshed session as
    ``X-Wallaby-Token`` (readable by a listed origin's scripts) before its token expires,
    and with it goes on after the first token is refused."""
    origin = "https://app.example"
    gateway = await start_gateway(cors_origins=(origin,))
    user = await make_user()
    async with config_value(admin, couch_backend.is_pouchdb, "chttpd_auth", "timeout", str(TIMEOUT)):
        login = await gateway.client.post(
            "/api/v1/session", json_body={"name": user.name, "password": user.password})
        first = login.json["token"]
        started = reactor.seconds()
        assert login.header(TOKEN_HEADER) is None, "a login answers with the token in its body"
        fresh = await gateway.client.get("/api/v1/session",
                                         headers={"Authorization": f"Bearer {first}"})
        assert fresh.status == 200
        assert fresh.header(TOKEN_HEADER) is None, "a session not yet refreshed: no new token"
        # Past the identity cache's few seconds (CouchDB is asked again) and 10 % of the
        # timeout (CouchDB refreshes the session on that request).
        await deferLater(reactor, gateway.app.identities.ttl + 1, lambda: None)
        used = await gateway.client.get("/api/v1/session", headers={
            "Authorization": f"Bearer {first}", "Origin": origin})
        assert used.status == 200 and used.json["name"] == user.name
        second = used.header(TOKEN_HEADER)
        assert second and second != first, "CouchDB refreshed the session: the client must get it"
        assert used.headers_all("Set-Cookie") == [], "a bearer client gets no cookie"
        exposed = {h.strip().lower()
                   for h in (used.header("Access-Control-Expose-Headers") or "").split(",")}
        assert TOKEN_HEADER.lower() in exposed, "a page on another site must be able to read it"

        other = await gateway.client.get("/api/v1/session", headers={
            "Cookie": f"wallaby_session={first}"})
        assert other.header(TOKEN_HEADER) is None, "only a request that presented a token gets one"

        await _past_the_timeout(gateway, reactor, started, user,
                                {"Authorization": f"Bearer {first}"},
                                {"Authorization": f"Bearer {second}"})


def test_a_jwt_is_not_a_session_no_token_is_handed_back() -> None:
    """auth_mode=jwt: a JWT bearer is CouchDB's JWT handler's business (its issuer renews
    it); nothing is handed back for it. A session token there is refreshed as in forward
    mode."""
    settings = Settings(auth_mode="jwt")
    jwt = "aGVhZA.Ym9keQ.c2ln"
    refresh = session_refresh(settings, Identity("bob", (), BearerAuth(jwt)), jwt, bearer=True)
    assert _applied(refresh) == {}
    session = ForwardedAuth({"Cookie": "AuthSession=first"})
    refresh = session_refresh(settings, Identity("bob", (), session), "first", bearer=True)
    session.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert _applied(refresh) == {TOKEN_HEADER: ["second"], "Cache-Control": ["no-store"]}


def test_proxy_mode_hands_a_bearer_client_the_session_its_verification_refreshed() -> None:
    settings = Settings(auth_mode="proxy", proxy_secret="s3cret")
    credential = ForwardedAuth({"Cookie": "AuthSession=first"})
    identity = Identity("bob", ("editor",), ProxyAuth("bob", ["editor"], secret="s3cret"),
                        credential=credential)
    refresh = session_refresh(settings, identity, "first", bearer=True)
    assert _applied(refresh) == {}
    credential.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert _applied(refresh) == {TOKEN_HEADER: ["second"], "Cache-Control": ["no-store"]}


def test_no_token_on_a_304() -> None:
    """A browser merges a 304's headers into the answer it stored and replays them on the
    next revalidation: a token there would come back, older, later. The next full answer
    carries it (the gateway keeps the refreshed session)."""
    settings = Settings()
    session = ForwardedAuth({"Cookie": "AuthSession=first"})
    refresh = session_refresh(settings, Identity("bob", (), session), "first", bearer=True)
    session.observe(["AuthSession=second; Version=1; Path=/; HttpOnly"])
    assert _applied(refresh, 304) == {}
    assert _applied(refresh, 200) == {TOKEN_HEADER: ["second"], "Cache-Control": ["no-store"]}
