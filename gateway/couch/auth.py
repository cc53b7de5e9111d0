"""How a request proves who it is to CouchDB.

Every credential type is an :class:`Auth`: it adds headers to each request and may
renew itself once when CouchDB answers 401. Credentials live only in these objects;
their ``repr`` never shows a secret, so they are safe in logs and tracebacks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Protocol

from gateway.singleflight import Flight, single_flight

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "DEFAULT_SESSION_MAX_AGE",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "ForwardedAuth",
    "NoAuth",
    "ProxyAuth",
    "SessionAuth",
    "SessionLogin",
    "session_cookie_from_headers",
]

#: Signature of the callable a :class:`SessionAuth` uses to log in: it posts the name
#: and password to ``/_session`` and returns the ``AuthSession`` cookie value.
SessionLogin = Callable[[str, str], Awaitable[str]]

HeaderMap = dict[str, str]


class Auth(Protocol):
    """Credentials for CouchDB requests."""

    async def headers(self) -> HeaderMap:
        """Headers to add to the next request."""
        ...

    async def renew(self) -> bool:
        """Try to obtain fresh credentials after a 401; ``True`` if a retry makes sense."""
        ...

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """See the ``Set-Cookie`` headers of a response (CouchDB refreshes sessions so)."""
        ...


class NoAuth:
    """Anonymous requests."""

    async def headers(self) -> HeaderMap:
        """No headers."""
        return {}

    async def renew(self) -> bool:
        """Anonymous credentials cannot be renewed."""
        return False

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """Ignore cookies."""

    def __repr__(self) -> str:
        return "NoAuth()"


class _FixedAuthorization:
    """Credentials sent as one fixed ``Authorization`` header.

    They cannot renew themselves (a 401 is final) and cookies are no business of theirs.
    """

    _header: str

    async def headers(self) -> HeaderMap:
        """The ``Authorization`` header."""
        return {"Authorization": self._header}

    async def renew(self) -> bool:
        """Fixed credentials: nothing to renew."""
        return False

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """Ignore cookies."""


class BasicAuth(_FixedAuthorization):
    """HTTP Basic authentication.

    Args:
        username: The CouchDB user name.
        password: Its password.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=<hidden>)"


class BearerAuth(_FixedAuthorization):
    """A JWT bearer token (CouchDB's ``jwt_authentication_handler``).

    Args:
        token: The encoded token.
    """

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:
        return "BearerAuth(token=<hidden>)"


def session_cookie_from_headers(set_cookie_headers: Sequence[str]) -> str | None:
    """Extract the ``AuthSession`` value from ``Set-Cookie`` headers, if any."""
    for raw in set_cookie_headers:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except Exception:  # noqa: S112 - a malformed cookie is simply not ours
            continue
        morsel = jar.get("AuthSession")
        if morsel is not None:
            return morsel.value
    return None


#: Seconds a session cookie is used before logging in again: 90 % of CouchDB's default
#: ``[chttpd_auth] timeout`` (600 s).
DEFAULT_SESSION_MAX_AGE = 540.0


class SessionAuth:
    """Cookie authentication via ``POST /_session``, renewed transparently.

    The first request logs in; CouchDB's refreshed cookies (sent when a session is
    near expiry) are adopted; a 401 triggers one fresh login and a retry (a request
    whose body was streamed cannot be sent again: it fails, and the next one logs in).
    CouchDB does not answer 401 to an *expired* cookie: it serves the request as
    anonymous. So a cookie neither issued nor refreshed for ``max_age`` seconds (an idle
    client) is replaced by a fresh login before it is used.

    Args:
        username: The CouchDB user name.
        password: Its password.
        login: Performs the login; supplied by the client that owns this object.
        clock: Measures the cookie's age; without one, only a 401 renews.
        max_age: Seconds a cookie is used; keep it below the server's
            ``[chttpd_auth] timeout``.
    """

    def __init__(
        self,
        username: str,
        password: str,
        login: SessionLogin,
        clock: IReactorTime | None = None,
        max_age: float = DEFAULT_SESSION_MAX_AGE,
    ) -> None:
        self.username = username
        self._password = password
        self._login = login
        self._clock = clock
        self._max_age = max_age
        self._cookie: str | None = None
        self._issued = 0.0
        self._logins: dict[None, Flight] = {}

    async def headers(self) -> HeaderMap:
        """A ``Cookie: AuthSession=…`` header, logging in first when needed.

        Requests that need a login at the same time share one.
        """
        if self._cookie is None or self._too_old():
            self._adopt(await single_flight(self._logins, None, self._log_in))
        return {"Cookie": f"AuthSession={self._cookie}"}

    async def _log_in(self) -> str:
        return await self._login(self.username, self._password)

    async def renew(self) -> bool:
        """Forget the cookie so the retry logs in again.

        Always worth a retry: several requests sent with the same expired cookie each
        get their 401 and each retry once, the later ones joining the login the first
        one started (a 401 that comes after that login has finished starts another: one
        login too many, never a failure). A wrong password then fails the login with
        :class:`~gateway.errors.Unauthorized`.
        """
        if not self._logins:
            self._cookie = None
        return True

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """Adopt a refreshed ``AuthSession`` cookie."""
        cookie = session_cookie_from_headers(set_cookie_headers)
        if cookie:
            self._adopt(cookie)

    def _too_old(self) -> bool:
        return self._clock is not None and self._clock.seconds() - self._issued >= self._max_age

    def _adopt(self, cookie: str) -> None:
        self._cookie = cookie
        if self._clock is not None:
            self._issued = self._clock.seconds()

    def __repr__(self) -> str:
        return f"SessionAuth(username={self.username!r}, password=<hidden>)"


class ForwardedAuth:
    """Caller-supplied headers forwarded as they are (how the gateway acts as its user).

    When the forwarded header is a CouchDB session cookie (``Cookie: AuthSession=…``),
    the refreshed cookies CouchDB sends as a session ages are adopted, so a long-lived
    holder (a WebSocket connection) keeps a live session exactly as a browser talking
    to CouchDB directly would; :attr:`session` is the newest cookie value, which the
    REST layer hands back to the browser.

    Args:
        headers: e.g. ``{"Cookie": "AuthSession=…"}`` or ``{"Authorization": "Basic …"}``.
    """

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)
        self.session: str | None = None
        cookie = self._headers.get("Cookie", "")
        if cookie.startswith("AuthSession=") and ";" not in cookie:
            self.session = cookie[len("AuthSession="):]

    async def headers(self) -> HeaderMap:
        """The forwarded headers."""
        return dict(self._headers)

    async def renew(self) -> bool:
        """Forwarded credentials belong to the caller: a 401 is final."""
        return False

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """Adopt a refreshed ``AuthSession`` cookie (only for cookie sessions)."""
        if self.session is None:
            return
        cookie = session_cookie_from_headers(set_cookie_headers)
        if cookie and cookie != self.session:
            self.session = cookie
            self._headers["Cookie"] = f"AuthSession={cookie}"

    def __repr__(self) -> str:
        return f"ForwardedAuth(headers={sorted(self._headers)!r} <values hidden>)"


class ProxyAuth:
    """CouchDB proxy authentication (``X-Auth-CouchDB-*`` headers).

    Args:
        username: The user the request acts as.
        roles: Its roles.
        secret: The shared ``[chttpd_auth] secret``; when given, a token is added.
        digest: Hash of the HMAC token. CouchDB 3.3.2 and later accept any of their
            ``[chttpd_auth] hash_algorithms`` (by default ``sha256, sha``); CouchDB 3.0
            to 3.3.1 accept only ``sha1``.
    """

    def __init__(
        self,
        username: str,
        roles: Sequence[str] = (),
        secret: str | None = None,
        digest: str = "sha256",
    ) -> None:
        self.username = username
        self.roles = list(roles)
        self._token = (
            hmac.new(secret.encode(), username.encode(), digest).hexdigest()
            if secret is not None
            else None
        )
        if digest not in hashlib.algorithms_available:
            raise ValueError(f"unknown digest {digest!r}")

    async def headers(self) -> HeaderMap:
        """The proxy headers."""
        headers = {
            "X-Auth-CouchDB-UserName": self.username,
            "X-Auth-CouchDB-Roles": ",".join(self.roles),
        }
        if self._token is not None:
            headers["X-Auth-CouchDB-Token"] = self._token
        return headers

    async def renew(self) -> bool:
        """Proxy identities are fixed: a 401 is final."""
        return False

    def observe(self, set_cookie_headers: Sequence[str]) -> None:
        """Ignore cookies."""

    def __repr__(self) -> str:
        return f"ProxyAuth(username={self.username!r}, roles={self.roles!r})"
