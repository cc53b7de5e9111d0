"""Wiring the live-changes endpoint into the REST gateway.

Usage (in ``python -m gateway run``)::

    changes = install_changes(app, couch, settings, reactor)
    reactor.callWhenRunning(changes.startService)
    # on shutdown: await changes.stopService(), then the HTTP service's stopService()

The handshake authenticates with :func:`gateway.identity.identify` — the REST API's
code, identity cache and failed-login guard — so a session cookie, a bearer token,
``?token=`` or Basic credentials work the same way on both, and a client locked out of an
account by failed logins is locked out of its handshakes too. In ``auth_mode=proxy`` the
access re-checks verify a socket's credential again with :func:`gateway.identity.reverify`
(a deleted user's socket is closed, a changed role takes effect).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import Settings
from gateway.couch import CouchServer
from gateway.http.login_guard import FailedLogins
from gateway.identity import Identity, IdentityCache, identify, reverify
from gateway.ws.access import Reverify
from gateway.ws.handshake import Authenticate
from gateway.ws.service import ChangesService

__all__ = ["CHANGES_PATH", "identity_authenticator", "identity_reverifier", "install_changes"]

CHANGES_PATH = b"/api/v1/changes"


def identity_authenticator(
    couch: CouchServer,
    settings: Settings,
    cache: IdentityCache | None = None,
    failed_logins: FailedLogins | None = None,
) -> Authenticate:
    """The handshake check: :func:`gateway.identity.identify` with the REST API's cache.

    Args:
        couch: The server (any identity).
        settings: Gateway settings.
        cache: The REST API's identity cache.
        failed_logins: The REST API's failed-login guard: Basic credentials on a
            handshake are refused, counted and cleared as on a REST request.
    """

    async def authenticate(
        headers: Mapping[str, str], cookies: Mapping[str, str], client: str
    ) -> Identity:
        return await identify(headers, cookies, couch, settings, cache=cache,
                              client=client, failed_logins=failed_logins)

    return authenticate


def identity_reverifier(
    couch: CouchServer, settings: Settings, cache: IdentityCache | None = None
) -> Reverify:
    """The re-check's verification: :func:`gateway.identity.reverify` with the REST cache.

    Args:
        couch: The server (any identity).
        settings: Gateway settings.
        cache: The REST API's identity cache (the answer is left there).
    """

    async def again(identity: Identity) -> Identity:
        return await reverify(identity, couch, settings, cache=cache)

    return again


def install_changes(
    app: Any, couch: CouchServer, settings: Settings, reactor: Any
) -> ChangesService:
    """Build the live-changes service and mount it on a ``GatewayApp`` at ``/api/v1/changes``.

    The WebSocket metrics are added to the app's ``/metrics``.

    Args:
        app: The REST application (``gateway.http.app.GatewayApp``): its ``mount``,
            ``identities`` cache, ``failed_logins`` guard and ``metrics`` are used.
        couch: The server as the gateway's service identity (reads the shared feeds).
        settings: Gateway settings.
        reactor: The reactor.

    Returns:
        The service (start it, and stop it before the HTTP service on shutdown).
    """
    authenticate = identity_authenticator(couch, settings, getattr(app, "identities", None),
                                          getattr(app, "failed_logins", None))
    service = ChangesService(
        couch.transport, settings, authenticate, reactor,
        reverify=identity_reverifier(couch, settings, getattr(app, "identities", None)))
    app.mount(CHANGES_PATH, service.resource())
    metrics = getattr(app, "metrics", None)
    if metrics is not None:
        metrics.add_collector(service.prometheus)
    return service
