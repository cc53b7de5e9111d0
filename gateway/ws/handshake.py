"""What a WebSocket handshake's headers allow: its ``Origin``, its cookies, its identity.

A browser sends its cookies and Basic credentials with a handshake whatever page opened
the socket, so the ``Origin`` decides both whether the socket may open at all and
whether those ambient credentials may count (a foreign page must not act with the
session of a user who visits it). The credentials that count are verified by an
:data:`Authenticate` check, which answers who the connection acts as.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from gateway.couch.auth import Auth

__all__ = [
    "Authenticate",
    "WsIdentity",
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


#: Verifies a handshake's credentials: ``(headers with lower-case names, cookies)`` →
#: an object with ``name``, ``roles`` and ``auth``; raises ``AuthenticationRequired``.
Authenticate = Callable[[Mapping[str, str], Mapping[str, str]], Awaitable[Any]]


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
