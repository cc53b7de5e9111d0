"""Test harness: a real CouchDB-compatible server for the whole session.

Without ``COUCHDB_URL`` the suite starts ``pouchdb-server`` (from the project's
``node_modules``) on a free loopback port with an on-disk data folder and an admin user,
and stops it at the end. With ``COUCHDB_URL=http://admin:pw@127.0.0.1:5984`` it uses that
server (e.g. Apache CouchDB 3.x) instead. Every test gets its own fresh database.

``async def`` tests run on the Twisted reactor (pytest-twisted) without a decorator.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.web.client import HTTPConnectionPool

from gateway.couch import BasicAuth, CouchServer, Database
from gateway.couch.pool import connection_pool
from gateway.couch.urls import split_credentials
from gateway.embedded import EmbeddedCouch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run plain ``async def`` tests as Deferreds on the reactor."""
    for item in items:
        function = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(function):
            target = getattr(function, "__func__", function)
            pytest_twisted._set_mark(target, "async_test")


@dataclass
class CouchBackend:
    """The server the suite talks to.

    Attributes:
        url: Server URL without credentials.
        admin_username: An admin's name.
        admin_password: Its password.
        embedded: The managed pouchdb-server, or ``None`` for an external server.
    """

    url: str
    admin_username: str
    admin_password: str
    embedded: EmbeddedCouch | None = None
    vendor: str = field(default="")

    @property
    def admin_url(self) -> str:
        """URL with the admin credentials."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{self.admin_username}:{self.admin_password}@{rest}"

    @property
    def is_pouchdb(self) -> bool:
        """Whether the server is pouchdb-server (for narrowly stated skips)."""
        return "pouchdb" in self.vendor.lower()

    def require_killable(self) -> EmbeddedCouch:
        """The embedded server, or skip: an external server is not ours to kill."""
        if self.embedded is None:
            pytest.skip("fault test needs the embedded server: an external COUCHDB_URL is not ours to kill")
        return self.embedded


def _vendor(url: str, username: str, password: str) -> str:
    import base64
    import json
    import urllib.request

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request = urllib.request.Request(url + "/", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # loopback test server
        welcome = json.loads(answer.read())
    return str(welcome.get("vendor", {}).get("name", "")) + " " + str(welcome.get("express-pouchdb", ""))


@pytest.fixture(scope="session")
def couch_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CouchBackend]:
    """The real CouchDB-compatible server for this test session."""
    external = os.environ.get("COUCHDB_URL")
    if external:
        url, username, password = split_credentials(external)
        if not username:
            raise pytest.UsageError("COUCHDB_URL must carry admin credentials (http://user:pw@host:port)")
        yield CouchBackend(url, username, password or "", None, _vendor(url, username, password or ""))
        return
    data_dir = Path(tmp_path_factory.mktemp("pouchdb-data"))
    server = EmbeddedCouch(data_dir=data_dir, admin_username="admin", admin_password="test-admin-pw")
    server.start()
    try:
        yield CouchBackend(
            server.url, server.admin_username, server.admin_password, server,
            _vendor(server.url, server.admin_username, server.admin_password),
        )
    finally:
        server.stop()


@pytest.fixture
def reactor() -> Any:
    """The reactor the tests run on (tests are an entry point: the global one)."""
    return global_reactor


@pytest_twisted.async_yield_fixture
async def pool(reactor: Any) -> AsyncIterator[HTTPConnectionPool]:
    """A persistent connection pool, closed after the test."""
    shared = connection_pool(reactor)
    yield shared
    await shared.closeCachedConnections()


@pytest.fixture
def admin(couch_backend: CouchBackend, reactor: Any, pool: HTTPConnectionPool) -> CouchServer:
    """The server as its admin."""
    return CouchServer(
        couch_backend.url,
        reactor=reactor,
        pool=pool,
        auth=BasicAuth(couch_backend.admin_username, couch_backend.admin_password),
        timeout=30,
    )


#: ``_security`` with no admins and no members: a database every user may read and write.
OPEN_SECURITY: dict[str, Any] = {
    "admins": {"names": [], "roles": []},
    "members": {"names": [], "roles": []},
}


def unique_name(prefix: str = "test") -> str:
    """A fresh, valid database or user name."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest_twisted.async_yield_fixture
async def db(admin: CouchServer) -> AsyncIterator[Database]:
    """A fresh database (as the admin) that any user may read, removed after the test.

    CouchDB 3 gives a new database ``_security`` admitting admins only
    (``[couchdb] default_security = admin_only``); pouchdb-server admits everyone.
    Emptying ``_security`` is CouchDB's documented way to open a database, so tests
    that read as an ordinary user start from the same place on both.
    """
    database = admin.database(unique_name())
    await database.create()
    await database.set_security(OPEN_SECURITY)
    yield database
    await database.close()
    await database.destroy()


@dataclass
class TestUser:
    """A throwaway CouchDB user."""

    __test__ = False  # a data class, not a test class

    name: str
    password: str


@pytest_twisted.async_yield_fixture
async def make_user(admin: CouchServer) -> AsyncIterator[Callable[..., Awaitable[TestUser]]]:
    """A factory of throwaway users (deleted afterwards), so lockouts hit no one else."""
    created: list[str] = []

    async def make(roles: list[str] | None = None) -> TestUser:
        user = TestUser(unique_name("user"), uuid.uuid4().hex)
        await admin.create_user(user.name, user.password, roles or [])
        created.append(user.name)
        return user

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            await admin.delete_user(name)
