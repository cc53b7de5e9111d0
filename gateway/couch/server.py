"""``CouchServer``: server-wide calls and a factory of databases sharing one pool."""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool

from gateway.couch._deferred import returns_deferred
from gateway.couch.auth import DEFAULT_SESSION_MAX_AGE, Auth, SessionAuth
from gateway.couch.database import Database
from gateway.couch.transport import CouchTransport, Reactor
from gateway.errors import CouchError

__all__ = ["CouchServer"]


class CouchServer:
    """A CouchDB server seen as one identity.

    Args:
        url: Server URL (``user:password@`` in it become Basic credentials).
        reactor: The reactor.
        pool: A shared persistent connection pool (created when omitted).
        auth: The identity; see :mod:`gateway.couch.auth`.
        timeout: Seconds each request may take.
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Reactor,
        pool: HTTPConnectionPool | None = None,
        auth: Auth | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.transport = CouchTransport(url, reactor, pool=pool, auth=auth, timeout=timeout)

    @classmethod
    def from_transport(cls, transport: CouchTransport) -> CouchServer:
        """Wrap an existing transport."""
        server = cls.__new__(cls)
        server.transport = transport
        return server

    @property
    def url(self) -> str:
        """The server URL without credentials."""
        return self.transport.base_url

    def as_identity(self, auth: Auth) -> CouchServer:
        """The same server as another identity, sharing the connection pool."""
        return CouchServer.from_transport(self.transport.with_auth(auth))

    def session_auth(
        self, username: str, password: str, max_age: float = DEFAULT_SESSION_MAX_AGE
    ) -> SessionAuth:
        """Cookie-session credentials that log in through this server.

        Args:
            username: The CouchDB user name.
            password: Its password.
            max_age: Seconds a cookie is used before a fresh login; keep it below the
                server's ``[chttpd_auth] timeout`` (600 s by default).
        """
        return SessionAuth(
            username, password, self.transport.login, clock=self.transport.reactor,
            max_age=max_age,
        )

    def database(self, name: str) -> Database:
        """A :class:`Database` using this server's transport."""
        return Database(name, transport=self.transport)

    @returns_deferred
    async def info(self) -> dict[str, Any]:
        """``GET /``: the welcome document."""
        result: dict[str, Any] = await self.transport.request("GET", [])
        return result

    @returns_deferred
    async def up(self) -> bool:
        """Whether the server answers (``GET /``; ``/_up`` is not on every server)."""
        answer = await self.transport.send("GET", [], raise_for_status=False)
        return answer.status == 200

    @returns_deferred
    async def ready(self) -> None:
        """Raise unless the server takes requests from this identity.

        ``GET /_up``: 200, or 404 with a ``status`` (``maintenance_mode``, ``nolb``) while
        a CouchDB node is drained. A server without ``/_up`` (pouchdb-server: a plain
        404) is asked ``GET /`` instead.

        Raises:
            Unauthorized: The identity's credentials are refused.
            CouchError: Another refusal, or not up (status and ``status``/``reason``).
        """
        answer = await self.transport.send("GET", ["_up"], raise_for_status=False)
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 404 and not isinstance(body.get("status"), str):
            answer = await self.transport.send("GET", [], raise_for_status=False)
            body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 200:
            return
        state = body.get("status")
        if isinstance(state, str) and "reason" not in body:
            body = {**body, "reason": f"the node is not serving ({state})"}
        raise CouchError.from_response(answer.status, body)

    @returns_deferred
    async def session(self) -> dict[str, Any]:
        """``GET /_session``: who this identity is (``userCtx``)."""
        result: dict[str, Any] = await self.transport.request("GET", ["_session"])
        return result

    @returns_deferred
    async def login(self, username: str, password: str) -> str:
        """``POST /_session``; returns the ``AuthSession`` cookie value.

        Raises:
            Unauthorized: Wrong name or password.
        """
        return await self.transport.login(username, password)

    @returns_deferred
    async def all_dbs(self) -> list[str]:
        """``GET /_all_dbs`` (admins only on CouchDB 3)."""
        result: list[str] = await self.transport.request("GET", ["_all_dbs"])
        return result

    @returns_deferred
    async def uuids(self, count: int = 1) -> list[str]:
        """``GET /_uuids``."""
        result: dict[str, list[str]] = await self.transport.request(
            "GET", ["_uuids"], params={"count": count}
        )
        return result["uuids"]

    @returns_deferred
    async def create_user(
        self, name: str, password: str, roles: list[str] | None = None
    ) -> dict[str, Any]:
        """Create a user in ``_users`` (needs admin rights)."""
        doc = {"_id": f"org.couchdb.user:{name}", "name": name, "type": "user",
               "roles": roles or [], "password": password}
        result: dict[str, Any] = await self.database("_users").save(doc)
        return result

    @returns_deferred
    async def delete_user(self, name: str) -> dict[str, Any]:
        """Delete a user from ``_users`` (needs admin rights)."""
        users = self.database("_users")
        doc = await users.get(f"org.couchdb.user:{name}")
        result: dict[str, Any] = await users.delete(doc)
        return result
