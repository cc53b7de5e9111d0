"""What a WebSocket handshake's headers allow: its ``Origin``, its cookies, its identity.

A browser sends its cookies and Basic credentials with a handshake whatever page opened
the socket, so the ``Origin`` decides both whether the socket may open at all and
whether those ambient credentials may count (a foreign page must not act with the
session of a user who visits it). The credentials that count are verified by an
:data:`Authenticate` check, which answers who the connection acts as; :func:`admit`
runs these checks for a handshake.
"""

from __future__ import annotations

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


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a handshake's ``Origin`` may connect.

    No Origin (not a browser), the gateway's own origin (same host and port), ``*``
    or an origin listed in ``cors_origins`` are allowed.
    """
    return "*" in allowed or origin_trusted(origin, host, allowed)


def origin_trusted(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a handshake may carry the browser's own credentials (cookie, Basic).

    Not a browser, the gateway's own origin, or an origin listed by name. An origin
    let in only by ``*`` must bring its credentials itself (``?token=``): a foreign
    page must not act with the session of a user who visits it.
    """
    if not origin:
        return True
    if origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
        return True
    if origin == "null" or host is None:
        return False
    return urlsplit(origin).netloc.lower() == host.strip().lower()


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
    if not origin_allowed(headers.get("origin"), headers.get("host"), settings.cors_origins):
        metrics.rejected_handshakes += 1
        raise AccessDenied("origin not allowed")
    if not origin_trusted(headers.get("origin"), headers.get("host"), settings.cors_origins):
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
