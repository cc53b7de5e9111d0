"""The client's session: the credentials a request presents, and the session's lifecycle.

The gateway's session cookie is set, refreshed and cleared as CouchDB would set its own
``AuthSession``. A client that presents the session as a bearer token (the ``token`` of
``POST /api/v1/session``) gets the refreshed session as :data:`TOKEN_HEADER` instead: a
script cannot read a ``Set-Cookie``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import Settings
from gateway.identity import Identity

__all__ = [
    "TOKEN_HEADER",
    "presented_credentials",
    "presented_session",
    "session_cookie",
    "session_refresh",
]

#: The response header carrying a bearer client's refreshed session token.
TOKEN_HEADER = "X-Wallaby-Token"  # noqa: S105 - a header's name, not a secret


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


def presented_session(
    headers: Mapping[str, str], cookies: Mapping[str, str], settings: Settings
) -> tuple[str, bool] | None:
    """The session a request authenticates with, as :func:`gateway.identity.identify` reads it.

    Args:
        headers: Request headers, lower-case names.
        cookies: Request cookies.
        settings: Configuration (the cookie's name).

    Returns:
        The presented value and whether it came as a bearer token (else as the cookie);
        ``None`` for Basic credentials or none. A bearer that is a JWT is returned too:
        its identity holds no session, so nothing is refreshed for it.
    """
    authorization = headers.get("authorization", "").strip()
    if authorization:
        if authorization.split(" ", 1)[0].lower() != "bearer":
            return None
        token = authorization[len("bearer"):].strip()
        return (token, True) if token else None
    cookie = cookies.get(settings.cookie_name)
    return (cookie, False) if cookie else None


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
    settings: Settings, identity: Identity, presented: str, *, bearer: bool = False
) -> Callable[[Any], None]:
    """Hand CouchDB's refreshed session back to the client, as CouchDB would.

    The session is the one the presented credential's verification holds: the upstream
    credential itself, or, when upstream requests carry something else
    (``auth_mode=proxy``), the verified credential
    (:attr:`~gateway.identity.Identity.credential`), whose identity checks
    (``GET /_session``, every few seconds while the client is active) are the requests
    CouchDB refreshes it on. Either is a ``ForwardedAuth`` of that very session: it adopts
    only the ``AuthSession`` CouchDB sends in answer to requests it authenticated, so the
    same user's. A JWT (``auth_mode=jwt``) holds no session: nothing is handed back.

    Args:
        settings: Configuration (for the cookie).
        identity: The caller, authenticated with the session ``presented``.
        presented: The session the client presented.
        bearer: It came as a bearer token: the refreshed one goes back as
            :data:`TOKEN_HEADER`, not as the cookie.

    Returns:
        Called with the request when the answer's head goes: adds the refreshed session
        when CouchDB refreshed it meanwhile (``Set-Cookie``, or :data:`TOKEN_HEADER`, on
        an answer then never stored and never on a ``304``: a browser replays a stored
        answer's headers, an older token, on a later revalidation).
    """

    def refreshed(request: Any) -> None:
        session = getattr(identity.auth, "session", None)
        if session is None:
            session = getattr(identity.credential, "session", None)
        if not isinstance(session, str) or not session or session == presented:
            return
        headers = request.responseHeaders
        if bearer and request.code == 304:
            return  # merged into the browser's stored answer: the next full answer has it
        if bearer:
            headers.setRawHeaders(TOKEN_HEADER.encode("latin-1"), [session.encode("latin-1")])
            headers.setRawHeaders(b"cache-control", [b"no-store"])
        else:
            cookie = session_cookie(settings, session)
            headers.addRawHeader(b"Set-Cookie", cookie.encode("latin-1"))

    return refreshed
