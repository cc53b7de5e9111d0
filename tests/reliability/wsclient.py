"""A browser-style live-changes client for fault tests (what ``gateway/static/wallaby.js`` does).

It connects with ``?token=`` (browsers cannot set headers on a WebSocket), subscribes,
remembers the seq of the last change it processed, and after any close reconnects with
jittered exponential backoff and subscribes again with ``since=<last seq>``. Tests start
it from a concrete seq (``last_seq=0`` on a fresh database): a client that subscribed
with ``"now"`` and drops before its first change has no seq to resume from (see
``test_resume_before_the_first_change_loses_nothing``). It records
every change it receives so a test can check that nothing is lost and nothing comes twice.
With ``renew``, a handshake refused 401 (its token, a CouchDB session, expired) gets a new
token from it, as an app logs in again, and the client resumes from where it was.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.ws.conftest import ClientProtocol, sleep


async def open_socket(reactor: Any, port: int, url: str, headers: dict[str, str] | None = None,
                      protocol: type[ClientProtocol] = ClientProtocol) -> ClientProtocol:
    """Open one WebSocket (raises on refusal or a failed handshake)."""
    factory = WebSocketClientFactory(url, headers=headers or {}, reactor=reactor)
    factory.protocol = protocol
    factory.setProtocolOptions(autoPingInterval=0)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    proto: ClientProtocol = await endpoint.connect(factory)
    await proto.opened
    return proto


@dataclass
class ResumingClient:
    """One browser-style subscriber of one database."""

    reactor: Any
    port: int
    token: str
    db: str
    name: str = "c"
    last_seq: Any = "now"
    received: list[tuple[str, str]] = field(default_factory=list)  # (doc id, rev)
    errors: list[str] = field(default_factory=list)
    connects: int = 0
    protocol: ClientProtocol | None = None
    _cursor: int = 0
    stopped: bool = False
    resumes: list[Any] = field(default_factory=list)  # the since of every subscribe
    #: A new token when the gateway refuses the current one (none: keep retrying it).
    renew: Callable[[], Awaitable[str]] | None = None
    renewals: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/changes?token={self.token}"

    async def connect(self, deadline_s: float = 60.0) -> None:
        """Connect and subscribe from ``last_seq``, retrying with jittered backoff."""
        backoff = 0.1
        give_up = self.reactor.seconds() + deadline_s
        while True:
            try:
                proto = await open_socket(self.reactor, self.port, self.url)
                break
            except Exception as exc:  # refused while the gateway restarts
                if self.reactor.seconds() > give_up:
                    raise AssertionError(f"{self.name}: cannot reconnect: {exc}") from exc
                if self.renew is not None and "401" in str(exc):
                    self.token = await self.renew()
                    self.renewals += 1
                    continue
                await sleep(self.reactor, backoff * (0.5 + random.random()))
                backoff = min(2.0, backoff * 2)
        self.protocol, self._cursor = proto, 0
        self.connects += 1
        self.resumes.append(self.last_seq)
        proto.send({"type": "subscribe", "id": "s", "db": self.db, "since": self.last_seq})
        while True:
            self.pump()
            if any(m.get("id") == "s" and m["type"] == "subscribed" for m in proto.messages):
                return
            errors = [m for m in proto.messages if m["type"] == "error"]
            if errors:
                raise AssertionError(f"{self.name}: subscribe failed: {errors}")
            if proto.closed.called:
                return  # closed at once: the caller's loop reconnects
            await sleep(self.reactor, 0.01)

    def pump(self) -> None:
        """Process messages received so far (record changes, advance last_seq)."""
        proto = self.protocol
        if proto is None:
            return
        self.errors.extend(proto.errors)
        proto.errors.clear()
        while self._cursor < len(proto.messages):
            message = proto.messages[self._cursor]
            self._cursor += 1
            if message["type"] == "change":
                for change in message["changes"]:
                    self.received.append((message["id"], change["rev"]))
                self.last_seq = message["seq"]
            elif (message["type"] == "subscribed" and self.last_seq == "now"
                  and message.get("since") not in (None, "now")):
                self.last_seq = message["since"]  # the concrete starting point, if given
            elif message["type"] == "closing" and message.get("resume", {}).get("s"):
                self.last_seq = message["resume"]["s"]

    async def run(self) -> None:
        """Stay subscribed until :meth:`stop`: reconnect whenever the socket closes."""
        while not self.stopped:
            if self.protocol is None or self.protocol.closed.called:
                self.pump()
                await self.connect()
            self.pump()
            await sleep(self.reactor, 0.02)

    def ids(self) -> list[str]:
        self.pump()
        return [doc_id for doc_id, _rev in self.received]

    async def stop(self) -> None:
        self.stopped = True
        proto = self.protocol
        if proto is not None and not proto.closed.called:
            proto.sendClose(1000)
            await proto.closed
