"""Access checks the gateway makes itself, before calls CouchDB might not guard.

Defence in depth: CouchDB 3 enforces ``_security`` on every endpoint, but not every
CouchDB-compatible server does (pouchdb-server 4.2, the embedded default, leaves
``_find``, ``_bulk_get`` and ``_index`` open). These endpoints first ask CouchDB,
as the user, what CouchDB itself would have answered.
"""

from __future__ import annotations

from typing import Any

from gateway.couch import CouchServer
from gateway.errors import AccessDenied
from gateway.http.upstream_timing import TimedCall
from gateway.identity import Identity

__all__ = ["require_db_admin", "require_reader", "require_server_admin"]


async def require_reader(request: Any, couch: CouchServer, db: str, timed: TimedCall) -> None:
    """Raise unless the user may read ``db`` (``GET /db`` as the user).

    Args:
        request: The client's request.
        couch: The upstream server, as the user.
        db: The database.
        timed: Awaits the upstream call and records its latency.
    """
    await timed(request, couch.transport.request("GET", [db]))


def require_server_admin(request: Any) -> None:
    """Raise unless the user is a server admin.

    CouchDB 3's rule for creating and deleting databases; pouchdb-server crashes on
    such a request from anyone else.

    Args:
        request: The client's request, with its ``identity``.

    Raises:
        AccessDenied: The user is not a server admin.
    """
    if not request.identity.is_admin:
        raise AccessDenied("only server admins may create or delete databases")


async def require_db_admin(request: Any, couch: CouchServer, db: str, timed: TimedCall) -> None:
    """Raise unless the user administers ``db`` (server admin or ``_security`` admin).

    Args:
        request: The client's request, with its ``identity``.
        couch: The upstream server, as the user.
        db: The database.
        timed: Awaits the upstream call and records its latency.

    Raises:
        AccessDenied: The user administers neither the server nor ``db``.
    """
    identity: Identity = request.identity
    security = await timed(request, couch.transport.request("GET", [db, "_security"]))
    admins = (security or {}).get("admins") or {}
    if identity.is_admin or identity.name in (admins.get("names") or []) or any(
        role in (admins.get("roles") or []) for role in identity.roles
    ):
        return
    raise AccessDenied("only database admins may manage indexes")
