"""Harness of the live-changes tests: a real Autobahn server on loopback, wired to the hub.

Every message a client receives is validated against its JSON Schema in
``api_schema/ws`` (a failure is raised when the test awaits the next message).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.web.client import HTTPConnectionPool

from gateway import deep_json
from gateway.config import Settings
from gateway.couch import CouchServer, Database
from gateway.couch.auth import ForwardedAuth
from gateway.couch.transport import CouchTransport
from gateway.errors import AuthenticationRequired
from gateway.ws.handshake import WsIdentity
from gateway.ws.protocol import SERVER_TYPES, validator
from gateway.ws.service import ChangesService
from tests.support.faultproxy import FaultProxy

DEFAULT_TIMEOUT = 15.0


def validate_server_message(message: Any) -> None:
    """Assert a server message matches its schema."""
    assert isinstance(message, dict), message
    kind = message.get("type")
    assert kind in SERVER_TYPES, message
    errors = list(validator(kind).iter_errors(message))
    assert not errors, f"{kind} violates its schema: {errors[0].message} in {message}"


def session_authenticator(admin: CouchServer, cookie_name: str = "wallaby_session") -> Callable[..., Awaitable[Any]]:
    """The handshake check of the tests: a session token (bearer, ?token= or cookie)."""

    async def authenticate(
        headers: Mapping[str, str], cookies: Mapping[str, str], client: str = "unknown"
    ) -> WsIdentity:
        token = None
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        token = token or cookies.get(cookie_name)
        if not token:
            raise AuthenticationRequired("no credentials")
        auth = ForwardedAuth({"Cookie": f"AuthSession={token}"})
        session = await admin.as_identity(auth).session()
        ctx = session.get("userCtx", {})
        if not ctx.get("name"):
            raise AuthenticationRequired("invalid session")
        return WsIdentity(ctx["name"], tuple(ctx.get("roles", [])), auth)

    return authenticate


class ClientProtocol(WebSocketClientProtocol):
    """A test client: collects (validated) messages, lets the test await them."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.errors: list[str] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.cursor = 0

    def onOpen(self) -> None:
        self.factory.client = self
        if not self.opened.called:
            self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        self.raw.append(payload)
        try:
            message = deep_json.loads(payload)  # as deep as the gateway sends
            validate_server_message(message)
        except Exception as exc:  # surfaced in the test
            self.errors.append(f"{exc}: {payload[:300]!r}")
            return
        self.messages.append(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N803
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    def send(self, message: Any) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.sendMessage(payload)


class StopsReading(ClientProtocol):
    """Stops reading from its socket right after the handshake (until
    ``transport.resumeProducing()``), so that the server's socket to it fills up."""

    def onOpen(self) -> None:
        super().onOpen()
        self.transport.pauseProducing()


@dataclass
class Client:
    """Test-side handle of one connection."""

    protocol: ClientProtocol
    reactor: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.protocol.messages

    def send(self, message: Any) -> None:
        self.protocol.send(message)

    def check(self) -> None:
        assert not self.protocol.errors, self.protocol.errors

    async def next(self, kind: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                   where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next unconsumed message (of a type / matching a predicate), in order."""
        deadline = self.reactor.seconds() + timeout
        while True:
            self.check()
            while self.protocol.cursor < len(self.protocol.messages):
                message = self.protocol.messages[self.protocol.cursor]
                self.protocol.cursor += 1
                if (kind is None or message["type"] == kind) and (where is None or where(message)):
                    return message
            if self.reactor.seconds() > deadline:
                raise DeferredTimeout(f"no {kind or 'message'} within {timeout} s; got {self.messages[-5:]}")
            if self.protocol.closed.called:
                raise ConnectionError(f"closed while waiting for {kind}: {self.protocol.closed.result}")
            await sleep(self.reactor, 0.01)

    async def collect_changes(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        changes = []
        while len(changes) < count:
            changes.append(await self.next("change", timeout=timeout))
        return changes

    async def subscribe(self, sub_id: str, db: str, **options: Any) -> dict[str, Any]:
        self.send({"type": "subscribe", "id": sub_id, "db": db, **options})
        message = await self.next(where=lambda m: m.get("id") == sub_id and m["type"] in ("subscribed", "error"))
        return message

    async def close(self) -> None:
        if not self.protocol.closed.called:
            self.protocol.sendClose(1000)
            await self.protocol.closed


async def open_client(reactor: Any, url: str, *, headers: dict[str, str] | None = None,
                      protocol: type[ClientProtocol] = ClientProtocol) -> Client:
    """Connect a test client to ``ws://127.0.0.1:<port>/…`` and wait for the handshake.

    Raises:
        ConnectionError: The handshake was refused.
    """
    factory = WebSocketClientFactory(url, headers=dict(headers or {}), reactor=reactor)
    factory.protocol = protocol
    built: list[ClientProtocol] = []
    original = factory.buildProtocol

    def build(addr: Any) -> Any:
        proto = original(addr)
        built.append(proto)
        return proto

    factory.buildProtocol = build
    factory.setProtocolOptions(autoPingInterval=0)
    reactor.connectTCP("127.0.0.1", factory.port, factory, timeout=10)
    while not built:
        await sleep(reactor, 0.005)
    await built[0].opened
    return Client(built[0], reactor)


#: ``(transport, method, segments, kwargs) -> what to record`` (``None``: nothing).
Recorder = Callable[[CouchTransport, str, list[str], dict[str, Any]], Any]


def spy_on_upstream(monkeypatch: Any, record: Recorder) -> list[Any]:
    """Watch every JSON request to CouchDB; returns the list ``record`` fills."""
    seen: list[Any] = []
    original = CouchTransport.request

    async def spying(self: CouchTransport, method: str, segments: Any, *args: Any,
                     **kwargs: Any) -> Any:
        entry = record(self, method, list(segments), kwargs)
        if entry is not None:
            seen.append(entry)
        return await original(self, method, segments, *args, **kwargs)

    monkeypatch.setattr(CouchTransport, "request", spying)
    return seen


async def replicate_in(db: Database, watcher: Client, doc_id: str, *revs: str) -> None:
    """Revisions of ``doc_id`` replicated in one after the other (``new_edits=false``,
    as CouchDB's replicator writes them), each seen by ``watcher``'s subscription."""
    for rev in revs:
        await db.bulk_save([{"_id": doc_id, "_rev": rev, "v": rev[-1]}], new_edits=False)
    seen = [await watcher.next("change") for _ in revs]
    assert [m["changes"][0]["rev"] for m in seen] == list(revs)


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    deferred: Deferred[None] = Deferred()
    reactor.callLater(seconds, deferred.callback, None)
    return deferred


async def wait_until(reactor: Any, condition: Callable[[], Any], seconds: float = 5.0) -> None:
    """Poll ``condition`` every 20 ms for up to ``seconds``; assert it holds then."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await sleep(reactor, 0.02)
    assert condition()


@dataclass
class WsServer:
    """A running live-changes endpoint."""

    service: ChangesService
    port: Any
    reactor: Any
    admin: CouchServer
    clients: list[Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}/api/v1/changes"

    async def connect(self, token: str | None = None, *, headers: dict[str, str] | None = None,
                      query: bool = False, protocol: type[ClientProtocol] = ClientProtocol) -> Client:
        url = self.url + (f"?token={token}" if token and query else "")
        all_headers = dict(headers or {})
        if token and not query:
            all_headers["Authorization"] = f"Bearer {token}"
        client = await open_client(self.reactor, url, headers=all_headers, protocol=protocol)
        self.clients.append(client)
        return client

    async def login(self, user: Any) -> str:
        return await self.admin.login(user.name, user.password)

    def feeds(self) -> int:
        return len(self.service.hub.feeds)


@dataclass
class MountedGateway:
    """A listening gateway (see :func:`gateway_with_changes`)."""

    port: int
    changes: Any  # the ChangesService of its WebSocket endpoint


@asynccontextmanager
async def gateway_with_changes(
    reactor: Any, admin: CouchServer, **settings: Any
) -> AsyncIterator[MountedGateway]:
    """The whole gateway (REST app with the WebSocket endpoint mounted, as the entry point
    builds it) listening on a loopback port."""
    from gateway.http.app import GatewayApp
    from gateway.ws.mount import install_changes

    config = Settings(couchdb_url=admin.url, **settings)
    app = GatewayApp(config, couch=admin, reactor=reactor)
    changes = install_changes(app, admin, config, reactor)
    changes.startService()
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
    try:
        yield MountedGateway(int(port.getHost().port), changes)
    finally:
        await changes.stopService()
        await port.stopListening()


def record_first_arguments(monkeypatch: Any, owner: Any, name: str) -> list[Any]:
    """The first argument of every call of ``owner.name`` from now on (it still runs)."""
    seen: list[Any] = []
    original = getattr(owner, name)

    def recording(first: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(first)
        return original(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return seen


def ws_settings(**overrides: Any) -> Settings:
    base = dict(ws_ping_interval=0.0, ws_auth_recheck=0.0, feed_heartbeat_ms=1000, shutdown_grace=3.0)
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


async def start_server(reactor: Any, admin: CouchServer, settings: Settings, **kwargs: Any) -> WsServer:
    service = ChangesService(admin.transport, settings, session_authenticator(admin), reactor, **kwargs)
    service.startService()
    port = reactor.listenTCP(0, service.factory, interface="127.0.0.1")
    return WsServer(service, port, reactor, admin)


async def stop_server(server: WsServer) -> None:
    for client in server.clients:
        if not client.protocol.closed.called:
            client.protocol.dropConnection(abort=True)
    if server.service.running:
        await server.service.stopService()
    if server.port.connected:
        await server.port.stopListening()


#: Body of each document :func:`slow_and_healthy_subscribers` writes.
BLOB = "x" * 8000


async def slow_and_healthy_subscribers(
    make_server: Callable[..., Awaitable[WsServer]], make_user: Callable[..., Awaitable[Any]],
    db: Database, batches: int,
) -> tuple[WsServer, Client, Client]:
    """A server with small socket buffers, a subscriber that stops reading and one that
    reads, both with documents; then ``batches`` batches of 5 documents of :data:`BLOB`, each batch
    read by the healthy subscriber (enough batches fill the slow one's buffers)."""
    server = await make_server(socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    slow = await server.connect(token, protocol=StopsReading)
    slow.send({"type": "subscribe", "id": "s", "db": db.name, "include_docs": True})
    healthy = await server.connect(token)
    await healthy.subscribe("s", db.name, include_docs=True)
    for batch in range(batches):
        await db.bulk_save([{"_id": f"b{batch}-{i}", "blob": BLOB} for i in range(5)])
        await healthy.collect_changes(5)
    return server, slow, healthy


@asynccontextmanager
async def server_behind_fault_proxy(
    reactor: Any, couch_backend: Any, admin: CouchServer, settings: Settings,
) -> AsyncIterator[tuple[WsServer, FaultProxy]]:
    """A live-changes server whose CouchDB connections pass through a :class:`FaultProxy`
    (close it to make CouchDB unreachable; stopped, with the proxy, when the block ends)."""
    proxy = FaultProxy(reactor, int(couch_backend.url.rsplit(":", 1)[1]))
    proxy.listen()
    pool = HTTPConnectionPool(reactor, persistent=True)
    through = CouchServer(proxy.url, reactor=reactor, pool=pool, auth=admin.transport.auth,
                          timeout=5)
    server = await start_server(reactor, through, settings)
    try:
        yield server, proxy
    finally:
        await stop_server(server)
        await proxy.close()
        await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def make_server(reactor: Any, admin: CouchServer) -> AsyncIterator[Callable[..., Awaitable[WsServer]]]:
    """A factory of live-changes servers (stopped after the test)."""
    servers: list[WsServer] = []

    async def make(settings: Settings | None = None, **kwargs: Any) -> WsServer:
        server = await start_server(reactor, admin, settings or ws_settings(), **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await stop_server(server)


@pytest_twisted.async_yield_fixture
async def ws_server(make_server: Callable[..., Awaitable[WsServer]]) -> AsyncIterator[WsServer]:
    """One live-changes server with test-friendly settings."""
    yield await make_server()
