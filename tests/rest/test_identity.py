"""gateway.identity: the shared authentication routine, including CouchDB-only modes.

``jwt`` and ``proxy`` modes need Apache CouchDB's handlers, which pouchdb-server lacks:
here we check the credentials they would send upstream.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config import Settings
from gateway.couch import BearerAuth, CouchServer, ForwardedAuth, NoAuth, ProxyAuth
from gateway.errors import AuthenticationRequired
from gateway.identity import Identity, IdentityCache, credentials_from, identify
from tests.conftest import TestUser
from tests.rest.conftest import basic


def test_credentials_by_mode() -> None:
    forward, jwt = Settings(), Settings(auth_mode="jwt")
    assert isinstance(credentials_from({"authorization": "Bearer abc"}, {}, jwt), BearerAuth)
    bearer = credentials_from({"authorization": "Bearer abc"}, {}, forward)
    assert isinstance(bearer, ForwardedAuth)
    cookie = credentials_from({}, {"wallaby_session": "abc"}, forward)
    assert isinstance(cookie, ForwardedAuth)
    assert credentials_from({}, {}, forward) is None
    for bad in ("Basic not base64!", "Bearer a b", "Token x"):
        with pytest.raises(AuthenticationRequired):
            credentials_from({"authorization": bad}, {}, forward)


async def test_jwt_mode_forwards_the_token_as_bearer() -> None:
    auth = credentials_from({"authorization": "Bearer e30.e30.sig"}, {}, Settings(auth_mode="jwt"))
    assert auth is not None
    assert await auth.headers() == {"Authorization": "Bearer e30.e30.sig"}


async def test_proxy_mode_sends_signed_proxy_headers(
    admin: CouchServer, make_user: Callable[..., Awaitable[TestUser]]
) -> None:
    user = await make_user(["editor"])
    settings = Settings(auth_mode="proxy", proxy_secret="s3cret")
    identity = await identify({"authorization": basic(user.name, user.password)["Authorization"]},
                              {}, admin, settings)
    assert isinstance(identity.auth, ProxyAuth)
    headers = await identity.auth.headers()
    assert headers["X-Auth-CouchDB-UserName"] == user.name
    assert headers["X-Auth-CouchDB-Roles"] == "editor"
    expected = hmac.new(b"s3cret", user.name.encode(), hashlib.sha256).hexdigest()
    assert headers["X-Auth-CouchDB-Token"] == expected
    assert "Authorization" not in headers


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
