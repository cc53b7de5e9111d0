"""Request headers with a byte outside ASCII (``obs-text``) are never a 500.

RFC 9110 5.5 allows ``obs-text`` (0x80-0xFF) in field values, and a browser sends
``fetch(url, {headers: {"Content-Type": 'text/plain; name="é"'}})`` as the single byte
0xE9 (header values are ByteStrings). CouchDB 3 and pouchdb-server store such a type.
Twisted's ``request.getHeader`` decodes values as UTF-8, so every header the gateway
read with it was a ``UnicodeDecodeError``, a 500 ``internal_error`` and a critical
traceback when a client put such a byte in it. The gateway now reads headers as
ISO-8859-1 (every byte a character: such a value simply fails to match, or is refused
with a 400 where it must name something), and sends the headers it relays upstream as
the client's bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from twisted.internet import protocol
from twisted.internet.defer import Deferred

from tests.rest.conftest import Scenario, StartGateway


class _Raw(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data:
            head, _, body = self.data.partition(b"\r\n\r\n")
            length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0] and not self.done.called:
                self.done.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.data)


async def _exchange(reactor: Any, base: str, method: str, path: str,
                    headers: list[bytes], body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send one request with exactly these header lines; its status, head and body."""
    port = urlsplit(base).port
    assert port is not None
    request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    request += b"".join(line + b"\r\n" for line in headers) + b"\r\n" + body
    raw = _Raw()
    await protocol.ClientCreator(reactor, lambda: raw).connectTCP("127.0.0.1", port)
    raw.transport.write(request)
    answer = await raw.done
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, content


def _auth(scenario: Scenario) -> bytes:
    token = base64.b64encode(
        f"{scenario.member.name}:{scenario.member.password}".encode()).decode()
    return f"Authorization: Basic {token}".encode()


async def test_an_attachment_type_with_a_latin_1_byte_is_stored(
    scenario: Scenario, reactor: Any,
) -> None:
    client = scenario.member_client
    path = f"/api/v1/db/{scenario.db.name}/docs/d/attachments/a.txt"
    status, head, _ = await _exchange(
        reactor, client.base, "PUT", path,
        [_auth(scenario), b'Content-Type: text/plain; name="\xe9"'], b"hello")
    assert status == 201, head
    read = await client.get(f"/api/v1/db/{scenario.db.name}/docs/d")
    assert read.json["_attachments"]["a.txt"]["length"] == 5
    # Stored as the client's bytes (CouchDB keeps the header's bytes), not re-encoded.
    status, head, body = await _exchange(reactor, client.base, "GET", path, [_auth(scenario)])
    assert status == 200 and body == b"hello"
    assert b'Content-Type: text/plain; name="\xe9"' in head.split(b"\r\n"), head


@pytest.mark.parametrize(("header", "route"), [
    (b"If-None-Match", "doc"),
    (b"If-None-Match", "attachment"),
    (b"Range", "attachment"),
    (b"If-Range", "attachment"),
    (b"Accept-Encoding", "doc"),
    (b"X-Request-Id", "doc"),
    (b"Origin", "doc"),
    (b"Cookie", "doc"),
])
async def test_a_latin_1_byte_in_a_read_header_is_tolerated(
    scenario: Scenario, reactor: Any, header: bytes, route: str,
) -> None:
    client = scenario.member_client
    base = f"/api/v1/db/{scenario.db.name}/docs/d"
    put = await client.put(f"{base}/attachments/a.txt", data=b"hello world",
                           headers={"Content-Type": "text/plain"})
    assert put.status == 201
    # Large enough to be gzip-coded (Accept-Encoding is read only then).
    big = f"/api/v1/db/{scenario.db.name}/docs/big"
    assert (await client.put(big, json_body={"pad": "x" * 4000})).status == 201
    path = f"{base}/attachments/a.txt" if route == "attachment" else big
    value = b"bytes=0-\xe9" if header == b"Range" else b'"\xe9"'
    extra = [b"Range: bytes=0-1"] if header == b"If-Range" else []
    status, head, body = await _exchange(
        reactor, client.base, "GET", path, [_auth(scenario), header + b": " + value, *extra])
    assert status in (200, 206, 416), head + body
    if header == b"If-Range":
        assert status == 200 and body == b"hello world"  # another tag: the whole body
    if header == b"X-Request-Id":
        assert b"\xe9" not in head  # a fresh id instead


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_a_latin_1_byte_in_if_match_names_no_revision(
    scenario: Scenario, reactor: Any, method: str,
) -> None:
    """As on CouchDB, a tag that is no current revision: a 4xx envelope, nothing written."""
    client = scenario.member_client
    path = f"/api/v1/db/{scenario.db.name}/docs/d"
    assert (await client.put(path, json_body={"n": 1})).status == 201
    status, head, body = await _exchange(
        reactor, client.base, method, path,
        [_auth(scenario), b'If-Match: "1-\xe9"', b"Content-Type: application/json"],
        b'{"n": 2}' if method == "PUT" else b"")
    assert 400 <= status < 500, head + body
    assert json.loads(body)["status"] == status
    assert (await client.get(path)).json["n"] == 1


async def test_a_latin_1_byte_in_a_json_content_type_parameter_is_tolerated(
    scenario: Scenario, reactor: Any,
) -> None:
    """The media type is what is checked (CouchDB's ``validate_ctype`` likewise)."""
    client = scenario.member_client
    status, head, body = await _exchange(
        reactor, client.base, "POST", f"/api/v1/db/{scenario.db.name}/docs",
        [_auth(scenario), b"Content-Type: application/json; charset=\xe9"], b"{}")
    assert status == 201, head + body
    status, head, body = await _exchange(
        reactor, client.base, "POST", f"/api/v1/db/{scenario.db.name}/docs",
        [_auth(scenario), b"Content-Type: application/js\xe9n"], b"{}")
    assert status == 415 and json.loads(body)["status"] == 415, head + body


async def test_a_latin_1_byte_in_a_cors_preflight_is_refused_not_a_500(
    start_gateway: StartGateway, reactor: Any,
) -> None:
    gateway = await start_gateway(cors_origins=("https://app.example",))
    for headers in ([b"Origin: https://\xe9.example", b"Access-Control-Request-Method: GET"],
                    [b"Origin: https://app.example", b"Access-Control-Request-Method: G\xe9T"]):
        status, head, body = await _exchange(
            reactor, gateway.client.base, "OPTIONS", "/api/v1/db/x", headers)
        assert status in (204, 403), head + body


async def test_a_latin_1_byte_in_upgrade_is_the_426_envelope(
    scenario: Scenario, reactor: Any,
) -> None:
    status, head, body = await _exchange(
        reactor, scenario.member_client.base, "GET", "/api/v1/changes",
        [_auth(scenario), b"Upgrade: websock\xe9t", b"Connection: Upgrade"])
    assert status in (404, 426), head + body
    assert json.loads(body)["status"] == status
