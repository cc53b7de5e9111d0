"""CORS for configured origins, preflight included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import AccessDenied

__all__ = ["Cors"]

_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
_ALLOWED_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match, Range, X-Request-Id"
_EXPOSED = "ETag, Content-Length, Content-Range, Accept-Ranges, Retry-After, X-Request-Id"


@dataclass
class Cors:
    """Adds CORS headers for allowed origins.

    Args:
        origins: Allowed origins (``*`` allows any; credentials are then still only
            allowed for the exact origin echoed back).
        max_age: Seconds browsers may cache a preflight.
    """

    origins: Sequence[str]
    max_age: int = 600

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` may call the API."""
        return "*" in self.origins or origin in self.origins

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
        if not self.allowed(origin):
            if preflight:
                raise AccessDenied("origin not allowed")
            return False
        request.setHeader("Access-Control-Allow-Origin", origin)
        request.setHeader("Access-Control-Allow-Credentials", "true")
        request.setHeader("Vary", "Origin")
        if not preflight:
            request.setHeader("Access-Control-Expose-Headers", _EXPOSED)
            return False
        request.setHeader("Access-Control-Allow-Methods", _METHODS)
        request.setHeader("Access-Control-Allow-Headers", _ALLOWED_HEADERS)
        request.setHeader("Access-Control-Max-Age", str(self.max_age))
        request.setResponseCode(204)
        return True
