"""Who is calling: one authentication routine for the REST gateway and the WebSocket.

A request proves its identity with one of:

* ``Authorization: Bearer <token>`` — the token returned by ``POST /api/v1/session``
  (the value of CouchDB's ``AuthSession`` cookie); in ``auth_mode=jwt`` also a JWT, passed
  on to CouchDB's JWT handler (told apart by its form, see :func:`credentials_from`);
* ``Authorization: Basic …`` — CouchDB credentials, forwarded re-encoded in canonical
  base64 (what the failed-login guard read is what CouchDB checks);
* the gateway's session cookie (``settings.cookie_name``), holding the ``AuthSession``
  value.

The credentials are checked by CouchDB itself (``GET /_session`` as that user: CouchDB
verifies the cookie's signature and expiry, the password, or the JWT), so a forged or
expired token is rejected by CouchDB. Results are cached for a few seconds, keyed by a
hash of the credential (never the credential itself), in a bounded cache; concurrent
verifications of the same credential share one in-flight ``_session`` request
(single-flight), so a burst of handshakes with one credential costs one request.

Basic credentials are a password: with the gateway's
:class:`~gateway.http.login_guard.FailedLogins` (and the client's address) given, a
client locked out of the account is refused before CouchDB is asked, a failure counts
and a success clears the count, on a REST request and a WebSocket handshake alike.

The resulting :class:`Identity` carries the credentials to use *upstream* on the
user's behalf: the forwarded cookie/Basic header, the JWT, or — in ``auth_mode=proxy``
— CouchDB proxy-authentication headers for the verified name and roles, signed with
``settings.proxy_secret`` (HMAC with ``settings.proxy_hash``). Proxy headers are
believed by CouchDB without a look at ``_users``, so a proxy identity also keeps the
credential it was verified from (:attr:`Identity.credential`): a holder that outlives the
cache (a WebSocket) verifies it again with :func:`reverify` to learn that the user was
deleted or lost a role.

Usage (REST and WebSocket alike)::

    identity = await identify(headers, cookies, couch, settings, cache=cache,
                              client=client, failed_logins=failed_logins)
    user_couch = couch.as_identity(identity.auth)
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from gateway.config import Settings
from gateway.couch import CouchServer
from gateway.couch.auth import Auth, BearerAuth, ForwardedAuth, NoAuth, ProxyAuth
from gateway.errors import AuthenticationRequired, CouchError, Unauthorized
from gateway.http.login_guard import FailedLogins
from gateway.singleflight import Flight, single_flight

__all__ = [
    "Identity",
    "IdentityCache",
    "basic_user",
    "credentials_from",
    "identify",
    "reverify",
]

_log = Logger(namespace="gateway.identity")

_TOKEN = re.compile(r"^[A-Za-z0-9_\-=.:+/]{1,4096}$")
_BASIC = re.compile(r"^Basic [A-Za-z0-9+/=]{1,4096}$")


@dataclass(frozen=True)
class Identity:
    """A verified caller.

    Attributes:
        name: The CouchDB user name (``None`` for an anonymous caller).
        roles: Its CouchDB roles.
        auth: Credentials acting as this caller upstream (``CouchServer.as_identity``).
        credential: The caller's own credential CouchDB verified (session cookie, Basic)
            when ``auth`` is something else (``auth_mode=proxy``: proxy headers built
            from that verification); ``None`` when ``auth`` is that credential.
    """

    name: str | None
    roles: tuple[str, ...]
    auth: Auth = field(repr=False)
    credential: Auth | None = field(default=None, repr=False)

    @property
    def is_admin(self) -> bool:
        """Whether CouchDB considers the caller a server admin."""
        return "_admin" in self.roles


@dataclass
class IdentityCache:
    """A small TTL cache of verified identities.

    Args:
        clock: Returns the current time in seconds (e.g. ``reactor.seconds``).
        ttl: Seconds an entry stays valid.
        max_entries: Oldest entries are dropped beyond this size.
    """

    clock: Callable[[], float]
    ttl: float = 5.0
    max_entries: int = 1024
    _entries: OrderedDict[str, tuple[float, Identity]] = field(
        default_factory=OrderedDict, repr=False
    )
    #: Verifications in flight per key (their waiters), see :func:`identify`.
    inflight: dict[str, Flight] = field(default_factory=dict, repr=False)

    def get(self, key: str) -> Identity | None:
        """A fresh cached identity, or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, identity: Identity) -> None:
        """Remember an identity for ``ttl`` seconds."""
        self._entries[key] = (self.clock() + self.ttl, identity)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def credentials_from(
    headers: Mapping[str, str], cookies: Mapping[str, str], settings: Settings
) -> Auth | None:
    """The upstream credentials a request presents (unverified), or ``None``.

    In ``auth_mode=jwt`` a bearer token is a JWT when it has the form of one (a compact
    JWS: exactly two ``.``) and is passed on as ``Authorization: Bearer``; any other is the
    session token ``POST /api/v1/session`` returned (CouchDB's ``AuthSession``, base64url,
    never a ``.``), sent as the cookie it is.

    Args:
        headers: Request headers with lower-case names.
        cookies: Request cookies.
        settings: Gateway settings (``auth_mode``, ``cookie_name``).

    Raises:
        AuthenticationRequired: Malformed credentials.
    """
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme = _scheme(authorization)
        if scheme == "basic":
            return _forwarded_basic(*_basic_pair(authorization))
        if scheme == "bearer":
            token = authorization[len("bearer"):].strip()
            if not _TOKEN.match(token):
                raise AuthenticationRequired("malformed bearer token")
            if settings.auth_mode == "jwt" and token.count(".") == 2:
                return BearerAuth(token)
            return ForwardedAuth({"Cookie": f"AuthSession={token}"})
        raise AuthenticationRequired("unsupported Authorization scheme")
    cookie = cookies.get(settings.cookie_name)
    if cookie:
        if not _TOKEN.match(cookie):
            raise AuthenticationRequired("malformed session cookie")
        return ForwardedAuth({"Cookie": f"AuthSession={cookie}"})
    return None


def basic_user(authorization: str) -> str | None:
    """The user name in a Basic ``Authorization`` header (``None`` for another scheme).

    Raises:
        AuthenticationRequired: Malformed Basic credentials (see :func:`credentials_from`).
    """
    return _basic_pair(authorization)[0] if _scheme(authorization) == "basic" else None


def _forwarded_basic(name: str, password: str) -> ForwardedAuth:
    """Basic credentials for CouchDB, encoded anew from what the gateway read.

    CouchDB is sent the canonical encoding (the failed-login guard keys on this name),
    never the client's own spelling.
    """
    token = base64.b64encode(f"{name}:{password}".encode()).decode("ascii")
    return ForwardedAuth({"Authorization": f"Basic {token}"})


def _scheme(authorization: str) -> str:
    """The authentication scheme of an ``Authorization`` value, lower-case."""
    return authorization.strip().split(" ", 1)[0].lower()


def _basic_pair(authorization: str) -> tuple[str, str]:
    """The name and password of a Basic ``Authorization`` header.

    Decoded leniently as CouchDB does: the ``=`` padding may be left out (with or
    without it, the same name; refusing it here while CouchDB took it would let the
    credential past the failed-login guard unnamed).

    Raises:
        AuthenticationRequired: Not base64, not UTF-8, or no ``:`` after the name.
    """
    encoded = authorization.strip()[len("basic"):].strip()
    if not _BASIC.match(f"Basic {encoded}"):
        raise AuthenticationRequired("malformed Basic credentials: not base64")
    data = encoded.rstrip("=")
    if "=" in data or len(data) % 4 == 1:
        raise AuthenticationRequired("malformed Basic credentials: not base64")
    try:
        decoded = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except ValueError:
        raise AuthenticationRequired("malformed Basic credentials: not base64") from None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationRequired("malformed Basic credentials: not UTF-8") from None
    name, sep, password = text.partition(":")
    if not sep:
        raise AuthenticationRequired(
            "malformed Basic credentials: no ':' between the name and the password")
    return name, password


async def _cache_key(credential: Auth, settings: Settings) -> str:
    """A hash of what ``credential`` sends CouchDB.

    The same session as a bearer token or as a cookie, or Basic credentials however the
    client encoded them: one entry.
    """
    headers = await credential.headers()
    material = "\0".join(
        (settings.auth_mode, *(f"{k}:{v}" for k, v in sorted(headers.items())))
    )
    return hashlib.sha256(material.encode("utf-8", "replace")).hexdigest()


async def identify(
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    couch: CouchServer,
    settings: Settings,
    *,
    cache: IdentityCache | None = None,
    client: str = "unknown",
    failed_logins: FailedLogins | None = None,
) -> Identity:
    """Authenticate a request (REST or WebSocket handshake) with CouchDB's help.

    Args:
        headers: Request headers, lower-case names.
        cookies: Request cookies.
        couch: The server (any identity: only its pool and URL are used).
        settings: Gateway settings.
        cache: A shared :class:`IdentityCache` (verification results for a few seconds).
        client: The client as the limits count it
            (:meth:`~gateway.http.client_address.ClientAddress.key`).
        failed_logins: The failed-login guard Basic credentials go through.

    Returns:
        The verified identity; anonymous (``NoAuth``) when no credentials are presented
        and ``settings.allow_anonymous`` is on.

    Raises:
        AuthenticationRequired: Missing (and anonymous not allowed), malformed, wrong,
            forged or expired credentials.
        RateLimited: Basic credentials of an account ``client`` is locked out of.
        CouchUnreachable: CouchDB could not be asked.
    """
    authorization = headers.get("authorization", "")
    if failed_logins is not None and authorization and _scheme(authorization) == "basic":
        name, password = _basic_pair(authorization)
        basic = _forwarded_basic(name, password)
        return await failed_logins.attempt(
            client, name, lambda: _cached_verify(basic, couch, settings, cache), password)
    auth = credentials_from(headers, cookies, settings)
    if auth is None:
        if settings.allow_anonymous:
            return Identity(None, (), NoAuth())
        raise AuthenticationRequired("authentication required")
    return await _cached_verify(auth, couch, settings, cache)


async def reverify(
    identity: Identity,
    couch: CouchServer,
    settings: Settings,
    *,
    cache: IdentityCache | None = None,
) -> Identity:
    """Verify again the credential an identity was verified from, as CouchDB sees it now.

    For a holder that outlives the cache (a WebSocket in ``auth_mode=proxy``): CouchDB is
    always asked (an answer the cache holds may be seconds old), a verification of the
    same credential in flight is joined, and the answer is cached for REST requests.

    Args:
        identity: An identity :func:`identify` returned.
        couch: The server (any identity: only its pool and URL are used).
        settings: Gateway settings.
        cache: The shared :class:`IdentityCache`.

    Returns:
        The identity now, with fresh upstream credentials (its roles may have changed).

    Raises:
        AuthenticationRequired: The credential no longer authenticates (the user was
            deleted, its password changed, the session expired).
        CouchUnreachable: CouchDB could not be asked.
    """
    credential = identity.credential if identity.credential is not None else identity.auth
    return await _cached_verify(credential, couch, settings, cache, fresh=True)


async def _cached_verify(
    auth: Auth,
    couch: CouchServer,
    settings: Settings,
    cache: IdentityCache | None,
    *,
    fresh: bool = False,
) -> Identity:
    """:func:`_verify`, through the cache and its single flight when there is one.

    ``fresh``: do not take a cached answer (but join one in flight, and cache this one).
    """
    if cache is None:
        return await _verify(auth, couch, settings)
    key = await _cache_key(auth, settings)
    cached = None if fresh else cache.get(key)
    if cached is not None:
        return cached

    async def verify_and_cache() -> Identity:
        identity = await _verify(auth, couch, settings)
        cache.put(key, identity)
        return identity

    result: Identity = await single_flight(cache.inflight, key, verify_and_cache)
    return result


def _proxy_roles(name: str, roles: tuple[str, ...]) -> tuple[str, ...]:
    """The roles that can travel in ``X-Auth-CouchDB-Roles`` as they are.

    CouchDB splits that header at commas (trimming spaces), and its ``_users`` check only
    refuses roles that *start* with ``_``: a stored role ``"staff,_admin"`` would arrive
    as ``staff`` and ``_admin``, a server admin. Such a role (or one CouchDB's split would
    trim) is dropped, never split: the user acts without it.
    """
    kept = tuple(role for role in roles if "," not in role and role == role.strip())
    if len(kept) != len(roles):
        _log.warn("proxy auth: {name}'s roles {dropped!r} are not sent: CouchDB would split "
                  "them at commas (or trim them) into other roles",
                  name=name, dropped=[role for role in roles if role not in kept])
    return kept


async def _verify(auth: Auth, couch: CouchServer, settings: Settings) -> Identity:
    """Ask CouchDB who ``auth`` is (``GET /_session`` as that caller)."""
    try:
        session: dict[str, Any] = await couch.as_identity(auth).session()
    except Unauthorized:
        raise AuthenticationRequired("invalid credentials") from None
    except CouchError as exc:
        if exc.status in (400, 403):
            raise AuthenticationRequired("invalid credentials") from None
        raise
    context = session.get("userCtx") or {}
    name = context.get("name")
    if not isinstance(name, str) or not name:
        raise AuthenticationRequired("invalid or expired credentials")
    roles = tuple(r for r in context.get("roles", []) if isinstance(r, str))
    if settings.auth_mode == "proxy":
        roles = _proxy_roles(name, roles)
        proxy = ProxyAuth(name, roles, secret=settings.proxy_secret, digest=settings.proxy_hash)
        return Identity(name, roles, proxy, credential=auth)
    return Identity(name, roles, auth)
