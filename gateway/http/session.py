"""The browser's session: the credentials a request presents, and the cookie's lifecycle.

The gateway's session cookie is set, refreshed and cleared as CouchDB would set its own
``AuthSession``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config import Settings
from gateway.identity import Identity

__all__ = ["presented_credentials", "session_cookie", "session_refresh"]


def presented_credentials(request: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and cookies a request presents, as :func:`gateway.identity.identify` takes.

    Args:
        request: The client's request.

    Returns:
        Its headers (lower-case names, the first value of each) and its cookies.
    """
    headers = {
        k.decode("latin-1").lower(): v[0].decode("latin-1")
        for k, v in request.requestHeaders.getAllRawHeaders()
    }
    raw_cookies: dict[bytes, bytes] = request.received_cookies
    cookies = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in raw_cookies.items()
    }
    return headers, cookies


def session_cookie(settings: Settings, value: str, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value for the gateway's session cookie.

    Args:
        settings: Configuration (the cookie's name, ``SameSite`` and ``Secure``).
        value: The session (CouchDB's ``AuthSession``); empty to clear it.
        max_age: Its ``Max-Age``, if any (0 clears it).

    Returns:
        The header's value.
    """
    parts = [f"{settings.cookie_name}={value}", "Path=/", "HttpOnly",
             f"SameSite={settings.cookie_samesite}"]
    if settings.cookie_is_secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def session_refresh(
    settings: Settings, identity: Identity, presented: str
) -> Callable[[], str | None]:
    """Hand CouchDB's refreshed session cookie back to the browser, as CouchDB would.

    The session is the one the cookie's verification holds: the upstream credential
    itself, or, when upstream requests carry something else (``auth_mode=proxy``), the
    verified credential (:attr:`~gateway.identity.Identity.credential`), whose identity
    checks (``GET /_session``, every few seconds while the browser is active) are the
    requests CouchDB refreshes it on.

    Args:
        settings: Configuration (for the cookie).
        identity: The caller, authenticated with the cookie ``presented``.
        presented: The session the browser presented.

    Returns:
        Called when the answer's headers go: the ``Set-Cookie`` value when CouchDB
        refreshed the session meanwhile, else ``None``.
    """

    def refreshed() -> str | None:
        session = getattr(identity.auth, "session", None)
        if session is None:
            session = getattr(identity.credential, "session", None)
        if isinstance(session, str) and session and session != presented:
            return session_cookie(settings, session)
        return None

    return refreshed
