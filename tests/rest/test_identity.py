"""gateway.identity: the shared authentication routine, including CouchDB-only modes.

``jwt`` and ``proxy`` modes need Apache CouchDB's handlers, which pouchdb-server lacks:
against it we check the credentials they would send upstream; against Apache CouchDB
(``COUCHDB_URL``) the end-to-end tests at the bottom switch the handlers on and go through.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config import Settings
from gateway.couch import BearerAuth, CouchServer, Database, ForwardedAuth, NoAuth, ProxyAuth
from gateway.errors import AuthenticationRequired, CouchError
from gateway.identity import (
    Identity,
    IdentityCache,
    basic_user,
    credentials_from,
    identify,
    reverify,
)
from tests.conftest import CouchBackend, TestUser
from tests.rest.conftest import StartGateway, basic
from tests.support.couchconfig import config_value


def test_credentials_by_mode() -> None:
    forward, jwt = Settings(), Settings(auth_mode="jwt")
    assert isinstance(credentials_from({"authorization": "Bearer e30.e30.sig"}, {}, jwt),
                      BearerAuth)
    bearer = credentials_from({"authorization": "Bearer abc"}, {}, forward)
    assert isinstance(bearer, ForwardedAuth)
    cookie = credentials_from({}, {"wallaby_session": "abc"}, forward)
    assert isinstance(cookie, ForwardedAuth)
    assert credentials_from({}, {}, forward) is None
    for bad in ("Basic not base64!", "Bearer a b", "Token x"):
        with pytest.raises(AuthenticationRequired):
            credentials_from({"authorization": bad}, {}, forward)


@pytest.mark.parametrize("token", ["YW5uOnNlY3JldDE=", "YW5uOnNlY3JldDE", "  YW5uOnNlY3JldDE= "])
async def test_basic_credentials_are_read_with_or_without_padding_and_forwarded_canonical(
    token: str,
) -> None:
    """The name the failed-login guard reads is the one CouchDB is sent."""
    assert basic_user(f"basic {token}") == "ann"
    auth = credentials_from({"authorization": f"basic {token}"}, {}, Settings())
    assert auth is not None
    assert await auth.headers() == {"Authorization": "Basic YW5uOnNlY3JldDE="}


@pytest.mark.parametrize(("token", "problem"), [
    ("YW=5u", "not base64"),           # padding inside
    ("YW5uO", "not base64"),           # one character past a whole group
    ("/w==", "not UTF-8"),
    ("YW5u", "no ':'"),                # "ann", no password part
])
def test_malformed_basic_credentials_are_refused_naming_the_problem(
    token: str, problem: str
) -> None:
    with pytest.raises(AuthenticationRequired) as refused:
        credentials_from({"authorization": f"Basic {token}"}, {}, Settings())
    assert problem in refused.value.reason
    with pytest.raises(AuthenticationRequired):
        basic_user(f"Basic {token}")
    assert basic_user("Bearer abc") is None


async def test_jwt_mode_sends_a_session_token_as_the_cookie_it_is() -> None:
    """The login's token (CouchDB's ``AuthSession``: base64url, no ``.``) is no JWT."""
    jwt = Settings(auth_mode="jwt")
    for token in ("Ym9iOjZCMEEwRjU2OjM3YjMzOTQ1", "a.b", "a.b.c.d"):
        auth = credentials_from({"authorization": f"Bearer {token}"}, {}, jwt)
        assert isinstance(auth, ForwardedAuth)
        assert await auth.headers() == {"Cookie": f"AuthSession={token}"}


async def test_jwt_mode_forwards_the_token_as_bearer() -> None:
    auth = credentials_from({"authorization": "Bearer e30.e30.sig"}, {}, Settings(auth_mode="jwt"))
    assert auth is not None
    assert await auth.headers() == {"Authorization": "Bearer e30.e30.sig"}


@pytest.mark.parametrize("digest", ["sha256", "sha1"])
async def test_proxy_mode_sends_signed_proxy_headers(
    admin: CouchServer, make_user: Callable[..., Awaitable[TestUser]], digest: str
) -> None:
    user = await make_user(["editor"])
    settings = Settings(auth_mode="proxy", proxy_secret="s3cret", proxy_hash=digest)
    identity = await identify({"authorization": basic(user.name, user.password)["Authorization"]},
                              {}, admin, settings)
    assert isinstance(identity.auth, ProxyAuth)
    headers = await identity.auth.headers()
    assert headers["X-Auth-CouchDB-UserName"] == user.name
    assert headers["X-Auth-CouchDB-Roles"] == "editor"
    expected = hmac.new(b"s3cret", user.name.encode(), digest).hexdigest()
    assert headers["X-Auth-CouchDB-Token"] == expected
    assert "Authorization" not in headers


async def test_proxy_identity_keeps_its_credential_and_reverify_asks_couchdb(
    admin: CouchServer, make_user: Callable[..., Awaitable[TestUser]]
) -> None:
    """CouchDB believes proxy headers without reading ``_users``: a long-lived holder (a
    WebSocket) verifies the credential behind them again, past the cache."""
    user = await make_user(["editor"])
    settings = Settings(auth_mode="proxy", proxy_secret="s3cret")
    cache = IdentityCache(clock=lambda: 0.0)  # nothing expires
    headers = {"authorization": basic(user.name, user.password)["Authorization"]}
    first = await identify(headers, {}, admin, settings, cache=cache)
    assert isinstance(first.credential, ForwardedAuth)
    again = await reverify(first, admin, settings, cache=cache)
    assert again is not first and (again.name, again.roles) == (user.name, ("editor",))
    assert await identify(headers, {}, admin, settings, cache=cache) is again  # left cached
    forwarded = await identify(headers, {}, admin, Settings())
    assert forwarded.credential is None  # its auth is the credential itself


async def test_identify_verifies_with_couchdb_and_caches(
    admin: CouchServer, make_user: Callable[..., Awaitable[TestUser]]
) -> None:
    user = await make_user()
    now = [1000.0]
    cache = IdentityCache(clock=lambda: now[0], ttl=5, max_entries=2)
    headers = {"authorization": basic(user.name, user.password)["Authorization"]}
    first = await identify(headers, {}, admin, Settings(), cache=cache)
    assert first.name == user.name and not first.is_admin
    assert await identify(headers, {}, admin, Settings(), cache=cache) is first
    now[0] += 6
    assert await identify(headers, {}, admin, Settings(), cache=cache) is not first
    with pytest.raises(AuthenticationRequired):
        await identify({"authorization": basic(user.name, "wrong")["Authorization"]}, {},
                       admin, Settings(), cache=cache)
    anonymous = await identify({}, {}, admin, Settings(allow_anonymous=True))
    assert anonymous == Identity(None, (), anonymous.auth) and isinstance(anonymous.auth, NoAuth)
    with pytest.raises(AuthenticationRequired):
        await identify({}, {}, admin, Settings())


def test_cache_is_bounded() -> None:
    cache = IdentityCache(clock=lambda: 0.0, max_entries=2)
    ident: Any = Identity("a", (), NoAuth())
    for key in ("k1", "k2", "k3"):
        cache.put(key, ident)
    assert cache.get("k1") is None and cache.get("k3") is ident


# -- end to end on Apache CouchDB (pouchdb-server has neither handler) ----------------

NO_HANDLERS = "pouchdb-server has no proxy or JWT authentication handler (CouchDB 3 has both)"

PROXY_HANDLERS = ("{chttpd_auth, cookie_authentication_handler}, "
                  "{chttpd_auth, proxy_authentication_handler}, "
                  "{chttpd_auth, default_authentication_handler}")
JWT_HANDLERS = ("{chttpd_auth, jwt_authentication_handler}, "
                "{chttpd_auth, cookie_authentication_handler}, "
                "{chttpd_auth, default_authentication_handler}")


def hs256(claims: dict[str, Any], key: bytes) -> str:
    """A JWT signed with HMAC-SHA256."""
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


async def test_proxy_mode_end_to_end_on_couchdb(
    start_gateway: StartGateway, admin: CouchServer, couch_backend: CouchBackend,
    make_user: Callable[..., Awaitable[TestUser]], db: Database,
) -> None:
    """CouchDB takes the gateway's signed proxy headers, and refuses a wrong signature."""
    if couch_backend.is_pouchdb:
        pytest.skip(NO_HANDLERS)
    user = await make_user(["editor"])
    await db.set_security({"admins": {"names": [], "roles": []},
                           "members": {"names": [user.name], "roles": []}})
    secret = uuid.uuid4().hex
    async with config_value(admin, False, "chttpd", "authentication_handlers", PROXY_HANDLERS), \
            config_value(admin, False, "chttpd_auth", "proxy_use_secret", "true"), \
            config_value(admin, False, "chttpd_auth", "secret", secret):
        session = await admin.as_identity(ProxyAuth(user.name, ["editor"], secret)).session()
        assert session["userCtx"]["name"] == user.name
        assert "editor" in session["userCtx"]["roles"]
        assert session["info"]["authenticated"] == "proxy"
        gateway = await start_gateway(auth_mode="proxy", proxy_secret=secret)
        client = gateway.as_user(user)
        saved = await client.put(f"/api/v1/db/{db.name}/docs/by-proxy", json_body={"v": 1})
        assert saved.status == 201, saved.body  # as the member: anonymous would get 401
        forged = admin.as_identity(ProxyAuth(user.name, [], "not-the-secret")).database(db.name)
        with pytest.raises(CouchError) as refused:
            await forged.get("by-proxy")
        assert refused.value.status == 401


async def test_jwt_mode_end_to_end_on_couchdb(
    start_gateway: StartGateway, admin: CouchServer, couch_backend: CouchBackend, db: Database,
) -> None:
    """CouchDB verifies the bearer JWT the gateway passes on; another key's token is 401."""
    if couch_backend.is_pouchdb:
        pytest.skip(NO_HANDLERS)
    name, key = f"jwt_{uuid.uuid4().hex[:10]}", uuid.uuid4().bytes
    await db.set_security({"admins": {"names": [], "roles": []},
                           "members": {"names": [name], "roles": []}})
    claims = {"sub": name, "_couchdb.roles": ["editor"], "exp": int(time.time()) + 300}
    async with config_value(admin, False, "chttpd", "authentication_handlers", JWT_HANDLERS), \
            config_value(admin, False, "jwt_keys", "hmac:_default",
                         base64.b64encode(key).decode()):
        gateway = await start_gateway(auth_mode="jwt")
        bearer = gateway.client.with_headers({"Authorization": f"Bearer {hs256(claims, key)}"})
        who = await bearer.get("/api/v1/session")
        assert who.status == 200 and who.json["name"] == name and "editor" in who.json["roles"]
        saved = await bearer.put(f"/api/v1/db/{db.name}/docs/by-jwt", json_body={"v": 1})
        assert saved.status == 201, saved.body
        forged = gateway.client.with_headers(
            {"Authorization": f"Bearer {hs256(claims, b'another key')}"})
        assert (await forged.get("/api/v1/session")).status == 401
