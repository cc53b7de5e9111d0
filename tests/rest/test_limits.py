"""Production behaviour: size limits, rate limits, CORS, upstream failures, no secrets."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol

from tests.conftest import CouchBackend
from tests.rest.conftest import RunningGateway, Scenario, StartGateway, basic


async def test_request_size_limits_answer_413(
    start_gateway: StartGateway, couch_backend: CouchBackend
) -> None:
    gateway = await start_gateway(max_body_bytes=2_000, max_attachment_bytes=50_000)
    admin = gateway.client.with_headers(basic(couch_backend.admin_username,
                                              couch_backend.admin_password))
    big_json = await admin.post("/api/v1/db/anydb/docs", json_body={"x": "y" * 5_000})
    assert big_json.status == 413 and big_json.json["error"] == "too_large"
    # The cap is the largest body a JSON route takes: one byte more is refused.
    headers = {"Content-Type": "application/json"}
    at_cap = await admin.post("/api/v1/db/anydb/docs", data=_json_of_size(2_000),
                              headers=headers)
    assert at_cap.status != 413, at_cap.body[:300]
    over = await admin.post("/api/v1/db/anydb/docs", data=_json_of_size(2_001), headers=headers)
    assert over.status == 413, over.body[:300]
    huge = await admin.put("/api/v1/db/anydb/docs/d/attachments/a?rev=1-x", data=b"z" * 60_000,
                           headers={"Content-Type": "application/octet-stream"})
    assert huge.status == 413
    login = await gateway.client.post("/api/v1/session",
                                      json_body={"name": "n", "password": "p" * 3_000})
    assert login.status == 413


async def test_rate_limit_answers_429_with_retry_after(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(rate_limit_per_second=0.5, rate_limit_burst=3)
    statuses = [(await gateway.client.get("/api/v1/session")).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    limited = await gateway.client.get("/api/v1/session")
    assert limited.status == 429 and limited.json["error"] == "too_many_requests"
    raw = await treq.get(f"{gateway.url}/api/v1/session")
    assert raw.phrase == b"Too Many Requests"  # not Twisted's "Unknown Status"
    await raw.content()
    assert int(limited.header("Retry-After") or 0) >= 1
    health = await gateway.client.get("/health")  # probes are never limited
    assert health.status == 200


async def test_cors_preflight_and_simple_requests(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(cors_origins=("https://app.example",))
    preflight = await gateway.client.request("OPTIONS", "/api/v1/db/x/docs/y", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type,authorization",
    })
    assert preflight.status == 204
    assert preflight.header("Access-Control-Allow-Origin") == "https://app.example"
    assert "PUT" in (preflight.header("Access-Control-Allow-Methods") or "")
    assert "Authorization" in (preflight.header("Access-Control-Allow-Headers") or "")
    assert preflight.header("Access-Control-Allow-Credentials") == "true"
    simple = await gateway.client.get("/health", headers={"Origin": "https://app.example"})
    assert simple.header("Access-Control-Allow-Origin") == "https://app.example"
    assert "X-Request-Id" in (simple.header("Access-Control-Expose-Headers") or "")
    denied = await gateway.client.request("OPTIONS", "/api/v1/db/x", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET",
    })
    assert denied.status == 403
    foreign = await gateway.client.get("/health", headers={"Origin": "https://evil.example"})
    assert foreign.header("Access-Control-Allow-Origin") is None


async def test_an_idn_origin_is_matched_as_the_browser_sends_it(
    start_gateway: StartGateway,
) -> None:
    """Configured as written, sent by browsers in punycode (UTS #46): it never matched."""
    gateway = await start_gateway(cors_origins=("https://faß.de",))
    reply = await gateway.client.get("/health", headers={"Origin": "https://xn--fa-hia.de"})
    assert reply.header("Access-Control-Allow-Origin") == "https://xn--fa-hia.de"
    assert reply.header("Access-Control-Allow-Credentials") == "true"


async def test_preflight_allows_every_request_header_the_contract_documents(
    start_gateway: StartGateway,
) -> None:
    """A header the API takes but the preflight leaves out is one no other origin can
    send: the browser refuses the request before it leaves (``If-Range`` was)."""
    from gateway.http.contract import load_contract

    document = load_contract().document
    shared = document["components"]["parameters"]
    documented = set()
    for item in document["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    parameter = shared[parameter["$ref"].rsplit("/", 1)[1]]
                if parameter.get("in") == "header":
                    documented.add(parameter["name"].lower())
    assert {"range", "if-range", "if-none-match", "if-match"} <= documented
    gateway = await start_gateway(cors_origins=("https://app.example",))
    preflight = await gateway.client.request(
        "OPTIONS", "/api/v1/db/x/docs/y/attachments/a", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": ",".join(sorted(documented)),
        })
    assert preflight.status == 204
    allowed = {h.strip().lower()
               for h in (preflight.header("Access-Control-Allow-Headers") or "").split(",")}
    assert documented - allowed == set()


async def test_unreachable_upstream_is_503_with_retry_after(
    start_gateway: StartGateway, make_user: Any
) -> None:
    from gateway.embedded import free_port

    gateway = await start_gateway(couchdb_url=f"http://127.0.0.1:{free_port()}")
    for reply in (
        await gateway.client.get("/ready"),
        await gateway.client.get("/api/v1/db/x", headers=basic("u", "p")),
        await gateway.client.post("/api/v1/session", json_body={"name": "u", "password": "p"}),
    ):
        assert reply.status == 503, reply.body
        assert reply.json["error"] == "upstream_unavailable"
        assert reply.header("Retry-After") == "5"
        assert b"Traceback" not in reply.body


async def test_silent_upstream_times_out_with_504(
    start_gateway: StartGateway, reactor: Any
) -> None:
    class Silent(Protocol):
        def dataReceived(self, data: bytes) -> None:
            pass  # never answer

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        gateway = await start_gateway(
            couchdb_url=f"http://127.0.0.1:{port.getHost().port}", request_timeout=0.5
        )
        started = reactor.seconds()
        reply = await gateway.client.get("/api/v1/db/x", headers=basic("u", "p"))
        assert reply.status == 504 and reply.json["error"] == "upstream_timeout"
        assert reactor.seconds() - started < 5
        ready = await gateway.client.get("/ready")
        assert ready.status == 504
    finally:
        await defer.maybeDeferred(port.stopListening)


async def test_client_disconnect_cancels_the_upstream_call(
    start_gateway: StartGateway, reactor: Any
) -> None:
    connections: list[Protocol] = []
    lost: defer.Deferred[None] = defer.Deferred()

    class Silent(Protocol):
        def connectionMade(self) -> None:
            connections.append(self)

        def connectionLost(self, reason: Any = None) -> None:
            if not lost.called:
                lost.callback(None)

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        gateway = await start_gateway(
            couchdb_url=f"http://127.0.0.1:{port.getHost().port}", request_timeout=30
        )
        # A bearer token: Basic credentials go through the failed-login guard, whose
        # check of the password is answered and counted even after the client left
        # (it ends at the request timeout at the latest).
        pending = defer.ensureDeferred(
            gateway.client.open("GET", "/api/v1/db/x",
                                headers={"Authorization": "Bearer dG9rZW4"})
        )
        pending.addErrback(lambda _: None)
        while not connections:
            await deferLater(reactor, 0.05)
        pending.cancel()  # the client goes away
        await defer.gatherResults([lost]).addTimeout(5, reactor)
    finally:
        await defer.maybeDeferred(port.stopListening)


def deferLater(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


async def test_service_credentials_never_answer_for_a_user(
    gateway: RunningGateway, scenario: Scenario, couch_backend: CouchBackend
) -> None:
    """The gateway's service identity is the server admin here: a user must not inherit it."""
    session = await scenario.member_client.get("/api/v1/session")
    assert "_admin" not in session.json["roles"]
    ddoc = await scenario.member_client.put(
        f"/api/v1/db/{scenario.db.name}/docs/_design%2Fx", json_body={}
    )
    assert ddoc.status in (401, 403)
    anonymous = await gateway.client.get(f"/api/v1/db/{scenario.db.name}")
    assert anonymous.status == 401
    everything = json.dumps(gateway.client.seen)
    assert couch_backend.admin_password not in everything


async def test_only_attachment_routes_take_attachment_sized_bodies(
    start_gateway: StartGateway,
) -> None:
    """A body over the JSON limit is refused from its declared length on every other route,
    for anyone: it is never stored up to the attachment limit first (which let anonymous
    clients make the gateway spool gigabytes to disk before their 401). Only an attachment
    ``PUT`` is streamed and gets the attachment cap: a ``POST`` to that path gets the JSON
    cap (``GatewayRequest._body_limit``)."""
    gateway = await start_gateway(max_body_bytes=2_000, max_attachment_bytes=500_000)
    for path in ("/api/v1/db/anydb/docs", "/api/v1/session", "/api/v1/db/anydb/bulk_docs",
                 "/api/v1/no/such/route", "/api/v1/db/anydb/docs/d/attachments/a"):
        reply = await gateway.client.post(path, data=b"{" + b" " * 100_000 + b"}",
                                          headers={"Content-Type": "application/json"})
        assert reply.status == 413, (path, reply.status)
        assert reply.json["error"] == "too_large"
    # Within the JSON limit, the anonymous caller gets the usual 401.
    small = await gateway.client.post("/api/v1/db/anydb/docs", json_body={"v": 1})
    assert small.status == 401


async def test_cors_star_lets_any_origin_read_but_never_with_credentials(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(cors_origins=("https://app.example", "*"))
    listed = await gateway.client.get("/health", headers={"Origin": "https://app.example"})
    assert listed.header("Access-Control-Allow-Origin") == "https://app.example"
    assert listed.header("Access-Control-Allow-Credentials") == "true"
    for origin in ("https://evil.example", "null"):
        other = await gateway.client.get("/health", headers={"Origin": origin})
        assert other.header("Access-Control-Allow-Origin") == "*"
        assert other.header("Access-Control-Allow-Credentials") is None
        assert other.header("Vary") == "Origin"
        preflight = await gateway.client.request("OPTIONS", "/api/v1/db/x/docs/y", headers={
            "Origin": origin, "Access-Control-Request-Method": "PUT"})
        assert preflight.status == 204
        assert preflight.header("Access-Control-Allow-Origin") == "*"
        assert preflight.header("Access-Control-Allow-Credentials") is None
    only_listed = await start_gateway(cors_origins=("https://app.example",))
    refused = await only_listed.client.get("/health", headers={"Origin": "https://evil.example"})
    assert refused.header("Access-Control-Allow-Origin") is None
    assert refused.header("Vary") == "Origin"


async def test_headers_that_trickle_forever_are_cut(start_gateway: StartGateway) -> None:
    """A slow-loris client sends a header line every few seconds: the idle timeout never
    fires, but the deadline from the request line to the end of the headers does."""
    import time

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    gateway = await start_gateway(header_timeout=1.0)
    port = int(gateway.url.rstrip("/").rsplit(":", 1)[1])
    closed: defer.Deferred[None] = defer.Deferred()

    class Trickle(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            closed.callback(None)

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    protocol = Trickle()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    started = time.monotonic()
    sent = 0
    while not closed.called and time.monotonic() - started < 8:
        await deferLater(reactor, 0.2, lambda: None)
        if not closed.called:
            protocol.transport.write(b"X-Drip-%d: y\r\n" % sent)  # type: ignore[union-attr]
            sent += 1
    assert closed.called, "the trickling connection was never closed"
    assert 0.9 <= time.monotonic() - started < 5
    assert sent >= 3  # it was not idle
    complete = await gateway.client.get("/health")  # a normal client is unaffected
    assert complete.status == 200


async def test_silent_connections_are_closed_after_the_idle_timeout(
    start_gateway: StartGateway, scenario: Scenario
) -> None:
    """Kept alive between requests, or stopped in the middle of an upload, a connection
    is closed after WALLABY_IDLE_TIMEOUT (Twisted's 60 s, now a setting); one that keeps
    sending is not."""
    import time

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from tests.rest.test_attachments import _connect

    gateway = await start_gateway(idle_timeout=1.0)

    async def connect() -> Any:
        return await _connect(gateway.url)

    kept_alive = await connect()
    assert kept_alive.transport is not None
    kept_alive.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answered = time.monotonic()
    closed_at = await kept_alive.closed
    assert b"HTTP/1.1 200" in kept_alive.data and 0.8 <= closed_at - answered < 4

    auth = basic(scenario.member.name, scenario.member.password)["Authorization"]
    doc = f"/api/v1/db/{scenario.db.name}/docs/idle"
    rev = (await gateway.as_user(scenario.member).put(doc, json_body={})).json["rev"]
    stalled = await connect()
    assert stalled.transport is not None
    stalled.transport.write(
        f"PUT {doc}/attachments/a.bin?rev={rev} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode()
        + b"s" * 10_000)
    sent = time.monotonic()
    closed_at = await stalled.closed
    assert 0.8 <= closed_at - sent < 4
    assert (await gateway.as_user(scenario.member).get(f"{doc}/attachments/a.bin")).status == 404

    steady = await connect()
    assert steady.transport is not None
    for _ in range(4):  # a request every 0.6 s: never silent for a whole second
        steady.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await deferLater(reactor, 0.6, lambda: None)
    assert not steady.closed.called and steady.data.count(b"HTTP/1.1 200") == 4
    steady.transport.loseConnection()


async def test_rate_limit_per_client_behind_a_trusted_proxy(start_gateway: StartGateway) -> None:
    """Behind the cluster's load balancer every request comes from one address: with it
    trusted, each client named by X-Forwarded-For has its own bucket; untrusted, the
    header is ignored (a client cannot pick its own bucket)."""
    trusting = await start_gateway(rate_limit_per_second=0.1, rate_limit_burst=2,
                                   trusted_proxies=("127.0.0.1",))
    for client in ("198.51.100.1", "198.51.100.2"):
        statuses = [(await trusting.client.get(
            "/api/v1/session", headers={"X-Forwarded-For": client})).status for _ in range(3)]
        assert statuses == [401, 401, 429], (client, statuses)
    ignoring = await start_gateway(rate_limit_per_second=0.1, rate_limit_burst=2)
    statuses = [(await ignoring.client.get(
        "/api/v1/session", headers={"X-Forwarded-For": f"198.51.100.{i}"})).status
        for i in range(3)]
    assert statuses == [401, 401, 429]


async def test_a_json_body_declared_over_the_cap_is_refused_at_its_headers(
    start_gateway: StartGateway,
) -> None:
    """A client waiting for ``100 Continue`` was invited to send a declared 1 GB body,
    and any client got its 413 only after every declared byte had been read and
    dropped; attachment uploads were already refused at the headers."""
    from tests.rest.test_attachments import _connect, _until

    gateway = await start_gateway(max_body_bytes=2_000)
    auth = basic("nobody", "x")["Authorization"].encode()
    head = (b"PUT /api/v1/db/anydb/docs/d HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n"
            b"Authorization: " + auth + b"\r\n")

    waiting = await _connect(gateway.url)
    waiting.transport.write(head + b"Expect: 100-continue\r\n\r\n")
    await _until(lambda: waiting.closed.called, raw=waiting)  # answered, then closed
    assert waiting.data.startswith(b"HTTP/1.1 413 "), waiting.data
    assert b"100 Continue" not in waiting.data
    assert b"connection: close" in waiting.data.lower()
    assert json.loads(waiting.data.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"

    sending = await _connect(gateway.url)
    sending.transport.write(head + b"\r\n" + b"[" * 65536)  # 64 KiB of the declared 1 GB
    await _until(lambda: b"\r\n\r\n" in sending.data, raw=sending)
    assert sending.data.startswith(b"HTTP/1.1 413 "), sending.data
    sending.transport.loseConnection()
    assert (await gateway.client.get("/health")).status == 200


async def test_an_answered_refusal_is_done_and_a_body_still_sent_is_cut_off(
    start_gateway: StartGateway, monkeypatch: Any,
) -> None:
    """The 413 at the headers is written at once, but the request finished only once the
    declared body had been read: it stayed in flight (shutdown waited for it), its access
    line came only when the connection ended, logged aborted, and a client that went on
    sending was read for as long as it liked."""
    from twisted.logger import globalLogPublisher

    import gateway.http.request
    from tests.rest.test_attachments import _connect, _until

    monkeypatch.setattr(gateway.http.request, "DRAIN_SECONDS", 1.0)
    running = await start_gateway(max_body_bytes=2_000)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        raw = await _connect(running.url)
        raw.transport.write(b"POST /api/v1/db/anydb/bulk_docs HTTP/1.1\r\nHost: gw\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        await _until(lambda: raw.data.endswith(b"}"), raw=raw)
        assert raw.data.startswith(b"HTTP/1.1 413 ")
        await _until(lambda: running.app.in_flight.count == 0)
        lines = [e["access"] for e in events if e.get("log_namespace") == "gateway.access"]
        assert [(line["status"], line["aborted"]) for line in lines] == [(413, False)]
        for _ in range(30):  # the client goes on sending what was refused
            if raw.closed.called:
                break
            raw.transport.write(b"[" * 10_000)
            await _pause(0.1)
        assert raw.closed.called  # cut off after DRAIN_SECONDS
    finally:
        globalLogPublisher.removeObserver(events.append)


async def _pause(seconds: float) -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


async def test_a_chunked_json_body_over_the_cap_is_answered_before_its_end(
    start_gateway: StartGateway,
) -> None:
    """It was read and dropped to its end (for ever, if it never ends) before its 413."""
    from tests.rest.test_attachments import _chunk, _connect, _until

    running = await start_gateway(max_body_bytes=2_000)
    raw = await _connect(running.url)
    raw.transport.write(b"POST /api/v1/db/anydb/bulk_docs HTTP/1.1\r\nHost: gw\r\n"
                        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):  # 5 kB of a body that has not ended
        raw.transport.write(_chunk(b"[" * 1_000))
        await _pause(0.05)
    await _until(lambda: raw.data.endswith(b"}"), seconds=3, raw=raw)
    assert raw.data.startswith(b"HTTP/1.1 413 ")
    raw.transport.write(_chunk(b"[" * 1_000) + b"0\r\n\r\n")  # it ends: still in step
    raw.transport.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    await _until(lambda: raw.data.count(b"HTTP/1.1 ") == 2 and raw.data.endswith(b"}"), raw=raw)
    assert b"HTTP/1.1 200 " in raw.data
    raw.transport.loseConnection()


def _json_of_size(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes."""
    skeleton = json.dumps({"x": ""}).encode()
    body = json.dumps({"x": "y" * (size - len(skeleton))}).encode()
    assert len(body) == size
    return body


async def test_a_chunked_json_body_of_exactly_the_cap_is_taken(
    start_gateway: StartGateway, couch_backend: CouchBackend
) -> None:
    """The same bound when the body comes chunked (its length counted as it arrives)."""
    from tests.rest.test_attachments import _chunk, _connect, _until

    running = await start_gateway(max_body_bytes=2_000, max_attachment_bytes=50_000)
    auth = basic(couch_backend.admin_username, couch_backend.admin_password)["Authorization"]

    async def status_of(size: int) -> bytes:
        body = _json_of_size(size)
        raw = await _connect(running.url)
        raw.transport.write(
            b"POST /api/v1/db/anydb/docs HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: " + auth.encode() + b"\r\n\r\n"
            + b"".join(_chunk(body[start:start + 500]) for start in range(0, size, 500))
            + b"0\r\n\r\n")
        await _until(lambda: b"\r\n\r\n" in raw.data, raw=raw)
        raw.transport.loseConnection()
        return raw.data.partition(b"\r\n")[0]

    at_cap = await status_of(2_000)
    assert not at_cap.startswith(b"HTTP/1.1 413 "), at_cap
    over = await status_of(2_001)
    assert over.startswith(b"HTTP/1.1 413 "), over
