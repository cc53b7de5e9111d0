"""REST gateway harness: a real listening gateway and a contract-checking client.

``gateway`` starts a :class:`GatewayApp` on 127.0.0.1:0 (in this process, on the test
reactor) in front of the session's real CouchDB-compatible server; ``start_gateway``
starts more with other settings. Every response the :class:`ApiClient` sees is checked
against ``api_schema/openapi.yaml`` (declared status, JSON body schema, error
envelope), must carry an ``X-Request-Id``, and must never contain the service password
(the gateway's service credentials are the server admin's here, so a leak would show).
Requests go out with raw, unnormalised paths (``..``, ``%2F``, ``//`` reach the gateway
exactly as written).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
import treq
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

from gateway.config import Settings
from gateway.couch import BasicAuth, CouchServer, Database
from gateway.http.app import GatewayApp
from gateway.http.contract import Contract, load_contract
from gateway.http.service import GatewayService
from tests.conftest import CouchBackend, TestUser, unique_name
from tests.support.faultproxy import FaultProxy

CONTRACT = load_contract()


def basic(name: str, password: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header."""
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Reply:
    """A fully read response."""

    status: int
    headers: Headers
    body: bytes  # decoded when the answer was gzip-coded
    length: int | None = None  # Twisted's client moves Content-Length here
    wire_size: int = 0  # bytes of the body as sent


    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def headers_all(self, name: str) -> list[str]:
        return list(self.headers.getRawHeaders(name, []))

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ApiClient:
    """Requests to one gateway; every reply is checked against the contract."""

    base: str
    agent: Agent
    contract: Contract = CONTRACT
    default_headers: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def with_headers(self, headers: Mapping[str, str]) -> ApiClient:
        return ApiClient(self.base, self.agent, self.contract, {**self.default_headers, **headers},
                         self.secrets, self.seen)

    async def open(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | IBodyProducer | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send a request; return the unread ``IResponse``."""
        all_headers = {**self.default_headers, **(headers or {})}
        body: IBodyProducer | None = None
        if json_body is not None:
            all_headers.setdefault("Content-Type", "application/json")
            data = json.dumps(json_body).encode()
        if isinstance(data, bytes):
            import io

            body = FileBodyProducer(io.BytesIO(data))
        elif data is not None:
            body = data
        raw_headers = Headers({k: [v] for k, v in all_headers.items()})
        return await self.agent.request(
            method.encode(), (self.base + path).encode("ascii"), raw_headers, body
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        """Send a request, read the whole answer and check it against the contract."""
        response = await self.open(method, path, **kwargs)
        wire = await treq.content(response)
        length = response.length if isinstance(response.length, int) else None
        coded = response.headers.getRawHeaders("content-encoding", [None])[0] == "gzip"
        content = gzip.decompress(wire) if coded else wire
        reply = Reply(response.code, response.headers, content, length, len(wire))
        self.check(method, path, reply)
        return reply

    def check(self, method: str, path: str, reply: Reply) -> None:
        """The contract, request-id and no-secret checks every reply must pass."""
        self.seen.append((method, path, reply.status))
        assert reply.header("X-Request-Id"), f"{method} {path}: no X-Request-Id"
        # One Server, naming the product only: not Twisted's version, nor CouchDB's.
        assert reply.headers_all("Server") == ["Wallaby-Gateway"], (method, path)
        for secret in self.secrets:
            assert secret.encode() not in reply.body, f"{method} {path}: secret in body"
            for _name, values in reply.headers.getAllRawHeaders():
                assert all(secret.encode() not in v for v in values), "secret in a header"
        bare = path.split("?", 1)[0]
        operation = self.contract.match(method, bare)
        content_type = reply.header("Content-Type")
        unrouted = reply.status == 404 and b"route" in reply.body
        if operation is None or unrouted:
            if reply.status in (204, 304) or (method == "OPTIONS" and reply.status < 400):
                return
            assert reply.status >= 400, f"{method} {path}: no operation for a success"
            self.contract.validate(
                {"$ref": "#/components/schemas/Error"}, json.loads(reply.body), "error"
            )
            return
        self.contract.check_response(operation, reply.status, content_type, reply.body)
        if reply.status >= 400 and reply.body:
            envelope = json.loads(reply.body)
            assert envelope["status"] == reply.status

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)


@dataclass
class RunningGateway:
    """A gateway listening on loopback."""

    url: str
    app: GatewayApp
    service: GatewayService
    client: ApiClient
    settings: Settings

    def as_user(self, user: TestUser) -> ApiClient:
        return self.client.with_headers(basic(user.name, user.password))


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest_twisted.async_yield_fixture
async def start_gateway(
    couch_backend: CouchBackend, reactor: Any
) -> AsyncIterator[StartGateway]:
    """A factory of listening gateways (``couchdb_url`` and any setting can be overridden)."""
    started: list[tuple[GatewayService, HTTPConnectionPool]] = []
    client_pool = HTTPConnectionPool(reactor, persistent=True)
    agent = Agent(reactor, pool=client_pool, connectTimeout=10)

    async def start(**overrides: Any) -> RunningGateway:
        values: dict[str, Any] = {
            "couchdb_url": couch_backend.url, "couchdb_user": couch_backend.admin_username,
            "couchdb_password": couch_backend.admin_password, "host": "127.0.0.1", "port": 0,
            "rate_limit_per_second": 0.0, "request_timeout": 20.0, "log_format": "json",
        }
        values.update(overrides)
        settings = Settings(**values)
        pool = HTTPConnectionPool(reactor, persistent=True)
        couch = CouchServer(
            settings.couchdb_url, reactor=reactor, pool=pool,
            auth=BasicAuth(settings.couchdb_user or "", settings.couchdb_password or ""),
            timeout=settings.request_timeout,
        )
        app = GatewayApp(settings, couch=couch, reactor=reactor)
        service = GatewayService(app, reactor, "127.0.0.1", 0, pool=pool)
        service.startService()
        await service.ready
        started.append((service, pool))
        url = f"http://127.0.0.1:{service.port}"
        client = ApiClient(url, agent, secrets=(couch_backend.admin_password,))
        return RunningGateway(url, app, service, client, settings)

    yield start
    await client_pool.closeCachedConnections()
    for service, _pool in started:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def gateway(start_gateway: StartGateway) -> AsyncIterator[RunningGateway]:
    """A gateway in front of the session's CouchDB-compatible server."""
    yield await start_gateway()


@pytest_twisted.async_yield_fixture
async def proxy(couch_backend: CouchBackend, reactor: Any) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session's server (``couchdb_url=proxy.url``)."""
    fault = FaultProxy(reactor, int(couch_backend.url.rsplit(":", 1)[1]))
    fault.listen()
    yield fault
    await fault.close()


@dataclass
class Scenario:
    """A database with a member user and an admin client, for authorization tests."""

    db: Database
    member: TestUser
    outsider: TestUser
    admin: ApiClient
    member_client: ApiClient
    outsider_client: ApiClient


@pytest_twisted.async_yield_fixture
async def scenario(
    admin: CouchServer,
    couch_backend: CouchBackend,
    gateway: RunningGateway,
    make_user: Callable[..., Awaitable[TestUser]],
) -> AsyncIterator[Scenario]:
    """A fresh database whose ``_security`` admits one member (and not the outsider)."""
    database = admin.database(unique_name("rest"))
    await database.create()
    member, outsider = await make_user(), await make_user()
    await database.set_security({
        "admins": {"names": [], "roles": []},
        "members": {"names": [member.name], "roles": []},
    })
    yield Scenario(
        database, member, outsider,
        gateway.client.with_headers(basic(couch_backend.admin_username,
                                          couch_backend.admin_password)),
        gateway.as_user(member), gateway.as_user(outsider),
    )
    await database.destroy()
