"""CORS for configured origins, preflight included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import AccessDenied
from gateway.http.session import TOKEN_HEADER

__all__ = ["Cors"]

_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
_ALLOWED_HEADERS = (
    "Authorization, Content-Type, If-Match, If-None-Match, If-Range, Range, X-Request-Id"
)
_EXPOSED = (
    "ETag, Content-Length, Content-Range, Accept-Ranges, Retry-After, X-Request-Id, Location, "
    f"{TOKEN_HEADER}"
)


@dataclass
class Cors:
    """Adds CORS headers for allowed origins.

    A listed origin is echoed back with ``Access-Control-Allow-Credentials: true``: its
    pages may send the user's cookie. ``*`` lets any other origin read answers, as
    ``Access-Control-Allow-Origin: *`` without credentials: browsers then never attach a
    cookie (their own credentials, e.g. a bearer token, still work), so a foreign page
    cannot act with the session of a user who visits it.

    Either may read the refreshed token of a bearer client
    (:data:`~gateway.http.session.TOKEN_HEADER`): it only answers a request that
    presented that session's previous token itself.

    Args:
        origins: Allowed origins (``*``: any, without credentials).
        max_age: Seconds browsers may cache a preflight.
    """

    origins: Sequence[str]
    max_age: int = 600

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` may call the API (with or without credentials)."""
        return "*" in self.origins or origin in self.origins

    def listed(self, origin: str) -> bool:
        """Whether ``origin`` is listed by name (and so may send credentials)."""
        return origin in self.origins

    def apply(self, request: Any) -> bool:
        """Decorate the response for the request's ``Origin``.

        Returns:
            ``True`` when the request is a preflight that has been fully answered.

        Raises:
            AccessDenied: A preflight from an origin that is not allowed.
        """
        raw = request.getHeader("origin")
        if raw is None:
            return False
        origin = raw.strip()
        preflight = request.method == b"OPTIONS" and request.getHeader(
            "access-control-request-method"
        ) is not None
        if self.origins:
            request.setHeader("Vary", "Origin")  # the answer depends on it, allowed or not
        if not self.allowed(origin):
            if preflight:
                raise AccessDenied("origin not allowed")
            return False
        if self.listed(origin):
            request.setHeader("Access-Control-Allow-Origin", origin)
            request.setHeader("Access-Control-Allow-Credentials", "true")
        else:
            request.setHeader("Access-Control-Allow-Origin", "*")
        if not preflight:
            request.setHeader("Access-Control-Expose-Headers", _EXPOSED)
            return False
        request.setHeader("Access-Control-Allow-Methods", _METHODS)
        request.setHeader("Access-Control-Allow-Headers", _ALLOWED_HEADERS)
        request.setHeader("Access-Control-Max-Age", str(self.max_age))
        request.setResponseCode(204)
        return True
