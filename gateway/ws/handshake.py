"""What a WebSocket handshake's headers allow: its ``Origin``, its cookies, its identity.

A browser sends its cookies and Basic credentials with a handshake whatever page opened
the socket, so the ``Origin`` decides both whether the socket may open at all and
whether those ambient credentials may count (a foreign page must not act with the
session of a user who visits it). The credentials that count are verified by an
:data:`Authenticate` check, which answers who the connection acts as; :func:`admit`
runs these checks for a handshake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.couch.auth import Auth
from gateway.errors import (
    AccessDenied,
    AuthenticationRequired,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)
from gateway.ws.access import credential_key

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.ws.metrics import WsMetrics

__all__ = [
    "Authenticate",
    "WsIdentity",
    "admit",
    "origin_allowed",
    "origin_trusted",
    "request_cookies",
]


@dataclass(frozen=True)
class WsIdentity:
    """Who a connection acts as (the shape of ``gateway.identity.Identity``)."""

    name: str | None
    roles: tuple[str, ...]
    auth: Auth = field(repr=False)
    credential: Auth | None = field(default=None, repr=False)


#: Verifies a handshake's credentials: ``(headers with lower-case names, cookies, the
#: client's address)`` → an object with ``name``, ``roles`` and ``auth``; raises
#: ``AuthenticationRequired`` (``RateLimited`` for a client locked out of the account).
Authenticate = Callable[[Mapping[str, str], Mapping[str, str], str], Awaitable[Any]]


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str], *,
                   https_only: bool = False) -> bool:
    """Whether a handshake's ``Origin`` may connect.

    No Origin (not a browser), the gateway's own origin (see :func:`origin_trusted`),
    ``*`` or an origin listed in ``cors_origins`` are allowed.
    """
    return "*" in allowed or origin_trusted(origin, host, allowed, https_only=https_only)


def origin_trusted(origin: str | None, host: str | None, allowed: Sequence[str], *,
                   https_only: bool = False) -> bool:
    """Whether a handshake may carry the browser's own credentials (cookie, Basic).

    Not a browser, the gateway's own origin, or an origin listed by name. An origin
    let in only by ``*`` must bring its credentials itself (``?token=``): a foreign
    page must not act with the session of a user who visits it.

    The own origin is the ``Host`` the handshake names, with ``https_only`` (the gateway
    is served over TLS: its cookie is ``Secure``) under ``https`` only. A ``Secure``
    cookie goes with a handshake from an ``http://`` page of the same host too, and
    such a page is what anyone on the network path can write into.
    """
    if not origin:
        return True
    if origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
        return True
    if origin == "null" or host is None:
        return False
    parts = urlsplit(origin)
    if parts.netloc.lower() != host.strip().lower():
        return False
    return not https_only or parts.scheme.lower() == "https" or _trustworthy(parts.hostname)


def _trustworthy(hostname: str | None) -> bool:
    """Whether browsers count plain ``http`` to this host as secure: a loopback name.

    (W3C Secure Contexts, "potentially trustworthy origin"): a developer's
    ``http://localhost`` keeps working with ``Secure`` cookies.
    """
    name = (hostname or "").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def request_cookies(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header by name (none if it cannot be parsed)."""
    jar: SimpleCookie = SimpleCookie()
    if header:
        try:
            jar.load(header)
        except Exception:
            return {}
    return {name: morsel.value for name, morsel in jar.items()}


async def admit(
    request: Any,
    *,
    settings: Settings,
    authenticate: Authenticate,
    metrics: WsMetrics,
    accepting: bool,
    client: str = "unknown",
) -> tuple[Any, str]:
    """Check a handshake's ``Origin`` and credentials before it is accepted.

    Args:
        request: Autobahn's ``ConnectionRequest`` (``headers``, ``params``).
        settings: Gateway settings (``cors_origins``, ``allow_anonymous``, ``cookie_name``).
        authenticate: Verifies the credentials that count.
        metrics: Counts the handshakes refused for the client's fault.
        accepting: False once shutting down.
        client: The client's address, as the REST API's limits key it.

    Returns:
        Who the connection acts as, and the hash of its credential
        (:func:`~gateway.ws.access.credential_key`).

    Raises:
        ShuttingDown: The gateway is shutting down.
        AccessDenied: The ``Origin`` is not allowed (or ``authenticate`` refused).
        AuthenticationRequired: No identity, and anonymous callers are not allowed.
        Unauthorized: ``authenticate`` refused the credentials.
        RateLimited: The client is locked out of the account its Basic credentials name.
    """
    if not accepting:
        raise ShuttingDown("the gateway is shutting down: connect again shortly")
    headers: dict[str, str] = {str(k).lower(): str(v) for k, v in request.headers.items()}
    origin, host, https_only = headers.get("origin"), headers.get("host"), settings.cookie_is_secure
    if not origin_allowed(origin, host, settings.cors_origins, https_only=https_only):
        metrics.rejected_handshakes += 1
        raise AccessDenied("origin not allowed")
    if not origin_trusted(origin, host, settings.cors_origins, https_only=https_only):
        # Let in by "*" only: the browser's ambient credentials do not count.
        headers.pop("authorization", None)
        headers.pop("cookie", None)
    token = (request.params.get("token") or [None])[0]
    if token and "authorization" not in headers:
        headers["authorization"] = f"Bearer {token}"
    cookies = request_cookies(headers.get("cookie"))
    try:
        identity = await authenticate(headers, cookies, client)
    except (AuthenticationRequired, Unauthorized, AccessDenied, RateLimited):
        metrics.rejected_handshakes += 1
        raise
    if getattr(identity, "name", None) is None and not settings.allow_anonymous:
        metrics.rejected_handshakes += 1
        raise AuthenticationRequired("authentication required")
    return identity, credential_key(headers, cookies, settings.cookie_name,
                                    getattr(identity, "name", None),
                                    tuple(getattr(identity, "roles", ())))
