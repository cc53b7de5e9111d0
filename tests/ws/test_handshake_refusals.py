"""Refused WebSocket handshakes are answered as the REST API answers an error.

Each test sends a real handshake request over a raw TCP connection to a gateway
listening on loopback (the REST app with ``/api/v1/changes`` mounted, as the entry point
builds it) and reads the whole answer until the gateway closes the connection: the
status of the equivalent REST error, the JSON error envelope (``error``, ``reason``,
``status``), ``Content-Type: application/json``, ``X-Request-Id``, ``Retry-After`` for
503 and 429, and the front door's CORS headers — never Autobahn's bare status line.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from gateway.couch import BasicAuth, CouchServer
from gateway.embedded import free_port
from tests.ws.conftest import WsServer, gateway_with_changes

#: A valid ``Sec-WebSocket-Key`` (RFC 6455's example).
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: What a refused handshake's body must never name.
LIBRARY = b"autobahn"


@dataclass
class RawAnswer:
    """An HTTP answer as it came off the socket."""

    status: int
    phrase: str
    headers: dict[str, list[str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def envelope(self) -> dict[str, Any]:
        assert self.header("content-type") == "application/json", self.raw[:400]
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


class _Collect(Protocol):
    """Sends the request; ``done`` fires with the bytes once the connection is closed
    (by the gateway), or once the answer is complete when ``wait_close`` is off."""

    def __init__(self, request: bytes, done: Deferred[bytes], wait_close: bool) -> None:
        self.request = request
        self.done = done
        self.wait_close = wait_close
        self.data = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.wait_close and _complete(self.data) and not self.done.called:
            self.done.callback(self.data)
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(self.data)


def _complete(data: bytes) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    if head.startswith(b"HTTP/1.1 101 "):
        return True  # what follows is the WebSocket's
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


class _Connect(ClientFactory):
    def __init__(self, request: bytes, done: Deferred[bytes], wait_close: bool) -> None:
        self.request = request
        self.done = done
        self.wait_close = wait_close

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Collect(self.request, self.done, self.wait_close)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


def parse_answer(raw: bytes) -> RawAnswer:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete HTTP answer: {raw[:400]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, phrase = [*status_line.split(" ", 2), ""][:3]
    assert version == "HTTP/1.1", status_line
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    answer = RawAnswer(int(status), phrase, headers, body, raw)
    if answer.status == 101:
        return answer
    length = answer.header("content-length")
    assert length is not None and int(length) == len(body), raw[:600]
    return answer


async def raw_handshake(
    reactor: Any, port: int, *, method: str = "GET", target: str = "/api/v1/changes",
    headers: dict[str, str | None] | None = None, timeout: float = 10.0,
    wait_close: bool = True, repeated: tuple[tuple[str, str], ...] = (),
) -> RawAnswer:
    """Send one handshake request and read everything until the gateway closes.

    ``headers`` add to (or, with ``None``, remove from) a valid RFC 6455 handshake;
    ``repeated`` are field lines sent after them (a name of ``headers`` again, say).
    ``wait_close`` off: until the answer is complete (a keep-alive answer).

    Raises:
        AssertionError: The gateway did not close the connection within ``timeout``.
    """
    fields: dict[str, str | None] = {
        "Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13",
    }
    fields.update(headers or {})
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.items() if value is not None]
    lines += [f"{name}: {value}" for name, value in repeated]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    done: Deferred[bytes] = Deferred()
    connector = reactor.connectTCP("127.0.0.1", port, _Connect(request, done, wait_close),
                                   timeout=timeout)
    timed_out: list[bool] = []
    timer = reactor.callLater(timeout, lambda: timed_out.append(True) or connector.disconnect())
    try:
        raw = await done
    finally:
        if timer.active():
            timer.cancel()
    assert not timed_out, f"the gateway kept the connection open: {raw[:400]!r}"
    return parse_answer(raw)


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def assert_refused(answer: RawAnswer, status: int, error: str, *, closes: bool = True
                   ) -> dict[str, Any]:
    """The envelope of a refusal with the REST layer's headers; returns the envelope.

    ``closes``: the answer says the gateway closes the connection after it (as it does:
    :func:`raw_handshake` waits for that).
    """
    assert answer.status == status, answer.raw[:600]
    envelope = answer.envelope
    assert set(envelope) == {"error", "reason", "status"}, envelope
    assert envelope["status"] == status and envelope["error"] == error, envelope
    assert isinstance(envelope["reason"], str) and envelope["reason"], envelope
    assert answer.header("x-request-id"), answer.headers
    assert answer.header("x-content-type-options") == "nosniff", answer.headers
    assert answer.header("cache-control") == "no-store", answer.headers
    if closes:
        assert answer.header("connection") == "close", answer.headers
    assert "sec-websocket-accept" not in answer.headers, answer.headers
    assert LIBRARY not in answer.raw.lower(), answer.raw
    if status in (429, 503):
        retry = answer.header("retry-after")
        assert retry is not None and retry.isdigit() and int(retry) >= 1, answer.headers
    return envelope


async def test_bad_credentials_get_the_401_envelope_with_the_request_id(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    user = await make_user()
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        wrong = await raw_handshake(reactor, gateway.port, headers={
            "Authorization": basic(user.name, "not-" + user.password),
            "X-Request-Id": "refused-handshake-1"})
        envelope = assert_refused(wrong, 401, "unauthorized")
        assert envelope["reason"] == "invalid credentials"
        assert wrong.header("x-request-id") == "refused-handshake-1"
        assert "retry-after" not in wrong.headers
        assert user.password.encode() not in wrong.raw
        # none at all
        missing = await raw_handshake(reactor, gateway.port)
        assert assert_refused(missing, 401, "unauthorized")["reason"] == \
            "authentication required"
        assert len(missing.header("x-request-id") or "") == 32  # minted by the front door
        # a forged bearer token passed as ?token= (browsers cannot set headers)
        forged = await raw_handshake(reactor, gateway.port,
                                     target="/api/v1/changes?token=forged-token-value")
        assert_refused(forged, 401, "unauthorized")
        assert b"forged-token-value" not in forged.raw
        assert gateway.changes.metrics.rejected_handshakes == 3


async def test_a_refusal_carries_the_headers_of_the_same_rest_error(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    """Same status, envelope and header set (CORS and Vary included) as a REST 401 for
    the same credentials from the same listed origin."""
    user = await make_user()
    origin = "http://app.example"
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0, ws_auth_recheck=0,
                                    cors_origins=(origin,)) as gateway:
        credentials = basic(user.name, "not-" + user.password)
        refused = await raw_handshake(reactor, gateway.port, headers={
            "Authorization": credentials, "Origin": origin})
        envelope = assert_refused(refused, 401, "unauthorized")
        rest = await treq.get(f"http://127.0.0.1:{gateway.port}/api/v1/db/anything",
                              headers={"Authorization": credentials, "Origin": origin})
        rest_body = json.loads(await rest.content())
        assert (rest.code, rest_body) == (refused.status, envelope)
        ignored = {"date", "content-length", "connection", "x-request-id", "server"}
        # (treq's content decoding leaves an empty Content-Encoding behind)
        rest_headers = {name.decode().lower(): [value.decode() for value in values]
                        for name, values in rest.headers.getAllRawHeaders()
                        if values != [b""]}
        assert {k: v for k, v in rest_headers.items() if k not in ignored} == \
            {k: v for k, v in refused.headers.items() if k not in ignored}
        assert refused.header("access-control-allow-origin") == origin
        assert refused.header("vary") == "Origin"


async def test_a_foreign_origin_gets_the_403_envelope(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    user = await make_user()
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0, ws_auth_recheck=0,
                                    cors_origins=("http://app.example",)) as gateway:
        token = await admin.login(user.name, user.password)
        answer = await raw_handshake(reactor, gateway.port, headers={
            "Origin": "http://evil.example", "Authorization": f"Bearer {token}"})
        envelope = assert_refused(answer, 403, "forbidden")
        assert envelope["reason"] == "origin not allowed"
        assert answer.header("vary") == "Origin"  # as the REST layer: allowed or not
        assert "access-control-allow-origin" not in answer.headers
        assert token.encode() not in answer.raw


async def test_couchdb_unreachable_gets_503_with_retry_after(
    reactor: Any, pool: Any, couch_backend: Any
) -> None:
    dead = CouchServer(f"http://127.0.0.1:{free_port()}", reactor=reactor, pool=pool,
                       auth=BasicAuth(couch_backend.admin_username,
                                      couch_backend.admin_password), timeout=5)
    async with gateway_with_changes(reactor, dead, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        answer = await raw_handshake(reactor, gateway.port,
                                     headers={"Authorization": basic("ann", "secret")})
        assert_refused(answer, 503, "upstream_unavailable")
        assert answer.header("retry-after") == "5"
        assert gateway.changes.metrics.rejected_handshakes == 0  # not the client's fault


async def test_malformed_upgrades_get_the_400_envelope(
    reactor: Any, admin: CouchServer
) -> None:
    """Checked before the credentials (none are sent); Autobahn's reasons, which may
    echo the request (its query too), are not repeated."""
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        target = "/api/v1/changes?token=secret-token-value"
        cases: list[tuple[dict[str, str | None], str]] = [
            ({"Sec-WebSocket-Version": None}, "Sec-WebSocket-Version header missing"),
            ({"Sec-WebSocket-Key": None}, "Sec-WebSocket-Key header missing"),
            ({"Sec-WebSocket-Key": "not-a-key-at-all"}, "malformed Sec-WebSocket-Key"),
            ({"Sec-WebSocket-Version": "99"}, "unsupported Sec-WebSocket-Version"),
            # RFC 6455 is version 13; 8 was a draft's (Autobahn would take it).
            ({"Sec-WebSocket-Version": "8"}, "unsupported Sec-WebSocket-Version"),
            ({"Sec-WebSocket-Version": "thirteen"}, "malformed Sec-WebSocket-Version"),
            ({"Connection": "keep-alive"}, 'the Connection header must include "upgrade"'),
        ]
        for headers, says in cases:
            answer = await raw_handshake(reactor, gateway.port, target=target,
                                         headers=headers)
            envelope = assert_refused(answer, 400, "bad_request")
            assert says in envelope["reason"], (headers, envelope)
            assert b"secret-token-value" not in answer.raw and b"not-a-key" not in answer.raw
            assert b"thirteen" not in answer.raw
            if headers.get("Sec-WebSocket-Version") in ("99", "8"):
                # RFC 6455 4.4: the versions the server speaks
                assert answer.header("sec-websocket-version") == "13", answer.headers
        posted = await raw_handshake(reactor, gateway.port, method="POST")
        assert_refused(posted, 405, "method_not_allowed")
        assert gateway.changes.metrics.connections_total == 0


async def test_two_authorization_headers_get_the_400_envelope(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    """As a REST request with two: the gateway and a proxy in front could take different
    ones for the caller (RFC 9110 11.6.2: ``Authorization`` is a singleton field)."""
    user = await make_user()
    valid, bogus = basic(user.name, user.password), basic(user.name, "not-" + user.password)
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        for first, second in ((valid, bogus), (bogus, valid)):
            answer = await raw_handshake(reactor, gateway.port, wait_close=False,
                                         headers={"Authorization": first},
                                         repeated=(("Authorization", second),))
            envelope = assert_refused(answer, 400, "bad_request", closes=False)
            assert "Authorization" in envelope["reason"], envelope
            assert user.password.encode() not in answer.raw
        assert gateway.changes.metrics.connections_total == 0


async def test_answers_name_the_product_but_not_its_versions(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    """Twisted's and Autobahn's Server headers told their versions to any scanner."""
    user = await make_user()
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        token = await admin.login(user.name, user.password)
        upgraded = await raw_handshake(reactor, gateway.port, wait_close=False,
                                       headers={"Authorization": f"Bearer {token}"})
        refused = await raw_handshake(reactor, gateway.port)
        health = await treq.get(f"http://127.0.0.1:{gateway.port}/health")
        await treq.content(health)
    assert upgraded.status == 101
    for server in (upgraded.header("server"), refused.header("server"),
                   health.headers.getRawHeaders("server", [None])[0]):
        assert server == "Wallaby-Gateway", server


async def test_a_handshake_during_shutdown_gets_503_with_retry_after(
    reactor: Any, admin: CouchServer, make_user: Any
) -> None:
    user = await make_user()
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        token = await admin.login(user.name, user.password)
        gateway.changes.factory.accepting = False  # what stopService does first
        answer = await raw_handshake(reactor, gateway.port,
                                     headers={"Authorization": f"Bearer {token}"})
        assert_refused(answer, 503, "shutting_down")
        assert answer.header("retry-after") == "5"


async def test_a_failing_check_gets_an_opaque_500_envelope(
    reactor: Any, admin: CouchServer
) -> None:
    """Autobahn answered ``500 Internal server error: <the exception's text>``."""
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0,
                                    ws_auth_recheck=0) as gateway:
        async def broken(headers: Any, cookies: Any, client: Any) -> Any:
            raise RuntimeError("internal detail that must not leak")

        gateway.changes.factory.authenticate = broken
        answer = await raw_handshake(reactor, gateway.port,
                                     headers={"Authorization": basic("ann", "secret")})
        envelope = assert_refused(answer, 500, "internal_error")
        assert envelope["reason"] == "internal server error"
        assert b"internal detail" not in answer.raw


async def test_rate_limited_handshakes_get_429_with_retry_after(
    reactor: Any, admin: CouchServer
) -> None:
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0, ws_auth_recheck=0,
                                    rate_limit_per_second=0.01, rate_limit_burst=1) as gateway:
        first = await raw_handshake(reactor, gateway.port)
        assert first.status == 401, first.raw[:400]
        # refused by the front door, as any request: an ordinary keep-alive answer
        limited = await raw_handshake(reactor, gateway.port, wait_close=False)
        assert_refused(limited, 429, "too_many_requests", closes=False)


async def test_a_refusal_on_the_factorys_own_port_is_the_envelope_too(
    reactor: Any, ws_server: WsServer
) -> None:
    """Without the front door (the factory listening itself, as in these tests): the
    envelope and the error's headers, without the request id only the front door mints."""
    port = ws_server.port.getHost().port
    answer = await raw_handshake(reactor, port)
    assert answer.status == 401, answer.raw[:400]
    assert answer.envelope == {"error": "unauthorized", "reason": "no credentials",
                               "status": 401}
    assert answer.header("connection") == "close"
    ws_server.service.factory.accepting = False
    closing = await raw_handshake(reactor, port)
    assert closing.status == 503 and closing.envelope["error"] == "shutting_down"
    assert closing.header("retry-after") == "5"
    malformed = await raw_handshake(reactor, port, headers={"Sec-WebSocket-Key": None})
    assert malformed.status == 400 and malformed.envelope["error"] == "bad_request"
