"""The HTTP channel (GatewayChannel, FrontDoor): the head handling of session 21, as its
review found it, and the fields of the access lines the channel writes.

A real ``python -m gateway run`` process (its JSON access log read from its output) in
front of the session's CouchDB-compatible server; raw sockets, nothing mocked.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.conftest import CouchBackend
from tests.support.gatewayproc import GatewayProcess, spawn_gateway
from tests.ws.conftest import wait_until


@pytest_twisted.async_yield_fixture
async def proc(
    reactor: Any, tmp_path: Path, couch_backend: CouchBackend
) -> AsyncIterator[GatewayProcess]:
    env = {**os.environ, "COUCHDB_URL": couch_backend.admin_url, "WALLABY_LOG_FORMAT": "json",
           "WALLABY_RATE_LIMIT_PER_SECOND": "0", "WALLABY_PORT": "0"}
    child = await spawn_gateway(reactor, env, tmp_path / "gateway.log")
    yield child
    child.stop()


def _exchange(port: int, parts: list[bytes], pause: float = 0.3, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(pause)
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except OSError:
            pass
        return received


async def exchange(port: int, *parts: bytes) -> bytes:
    return await deferToThread(_exchange, port, list(parts))


def last_answer(answer: bytes) -> bytes:
    """The last response of several (an interim 100 Continue first)."""
    starts = [m.start(1) for m in re.finditer(rb"(?:^|\r\n\r\n)(HTTP/1\.1 \d{3} )", answer)]
    return answer[starts[-1]:] if starts else answer


def headers_of(answer: bytes) -> dict[bytes, bytes]:
    head = last_answer(answer).partition(b"\r\n\r\n")[0]
    found: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        found[name.strip().lower()] = value.strip()
    return found


async def access_line_of(reactor: Any, child: GatewayProcess, answer: bytes) -> dict[str, Any]:
    """The access line of the request ``answer`` answered (by its ``X-Request-Id``)."""
    request_id = headers_of(answer)[b"x-request-id"].decode()
    await wait_until(reactor, lambda: any(line["request_id"] == request_id
                                          for line in child.access_lines()))
    found = [line for line in child.access_lines() if line["request_id"] == request_id]
    assert found, f"no access line for {request_id}: {child.access_lines()}"
    return found[0]


def _admin(backend: CouchBackend) -> bytes:
    token = base64.b64encode(f"{backend.admin_username}:{backend.admin_password}".encode())
    return b"Authorization: Basic " + token + b"\r\n"


def _call(child: GatewayProcess, backend: CouchBackend, method: str, path: str,
          body: Any = None) -> Any:
    token = base64.b64encode(f"{backend.admin_username}:{backend.admin_password}".encode())
    request = urllib.request.Request(
        child.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Basic " + token.decode(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # loopback test gateway
        return json.loads(answer.read())


async def test_a_request_refused_at_its_head_has_an_access_line_with_its_request_id(
    reactor: Any, proc: GatewayProcess
) -> None:
    """docs/rest-api.md: "a structured access log line per request"; the 414 (and 431,
    400) written by GatewayChannel._refuse_head carries an X-Request-Id that no log line
    holds, and counts in no metric: an operator asked about a client's 414 (the browser
    client's own allDocs, see the other test of this review) finds nothing."""
    answer = await exchange(proc.port, b"GET /api/v1/db/x/all_docs?keys=" + b"a" * 17000
                            + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    request_id = headers_of(answer)[b"x-request-id"].decode()
    await wait_until(reactor, lambda: any(line["request_id"] == request_id
                                          for line in proc.access_lines()))
    lines = [line for line in proc.access_lines() if line["request_id"] == request_id]
    assert [line["status"] for line in lines] == [414], (
        f"no access line for the 414 answered with X-Request-Id {request_id}; "
        f"access lines: {proc.access_lines()}")
    assert lines[0]["client"] == "127.0.0.1", lines  # refused before a request was made


async def test_a_malformed_chunk_mid_upload_is_logged_as_the_400_that_was_served(
    reactor: Any, proc: GatewayProcess, couch_backend: CouchBackend
) -> None:
    """A chunked attachment PUT is dispatched at its headers; a malformed chunk later in
    its body makes the channel answer 400 and close. That 400 used to carry an id of its
    own, and the access log said the PUT was a 200 (aborted) under an id the client
    never saw: now both name the PUT's id and the 400."""
    db = f"review_{uuid.uuid4().hex[:10]}"
    await deferToThread(_call, proc, couch_backend, "PUT", f"/api/v1/db/{db}")
    try:
        written = await deferToThread(_call, proc, couch_backend, "PUT",
                                      f"/api/v1/db/{db}/docs/d", {})
        answer = await exchange(
            proc.port,
            b"PUT /api/v1/db/" + db.encode() + b"/docs/d/attachments/a?rev="
            + written["rev"].encode() + b" HTTP/1.1\r\nHost: gw\r\n" + _admin(couch_backend)
            + b"Content-Type: text/plain\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"3\r\nabc\r\n",
            b"zz\r\nnot a chunk\r\n0\r\n\r\n",
        )
        assert last_answer(answer).startswith(b"HTTP/1.1 400 "), answer[:400]
        request_id = headers_of(answer)[b"x-request-id"].decode()
        await wait_until(reactor, lambda: any(line["method"] == "PUT"
                                              for line in proc.access_lines()))
        puts = [(line["request_id"], line["status"]) for line in proc.access_lines()
                if line["method"] == "PUT" and "/attachments/" in line["path"]]
        assert puts == [(request_id, 400)], (
            f"the client got 400 with X-Request-Id {request_id}; the access log says {puts}")
    finally:
        await deferToThread(_call, proc, couch_backend, "DELETE", f"/api/v1/db/{db}")


async def test_a_lower_case_method_on_the_changes_endpoint_is_405_not_404(
    proc: GatewayProcess,
) -> None:
    """FrontDoor._check_head answers a lower-case method with 405 and the route's Allow
    (methods_of) -- but methods_of knows only the Klein routes, so on the mounted
    WebSocket endpoint, which exists and takes GET, 'get' is 404 "no such route"
    (RFC 9110 15.5.5: 404 says there is no such resource; every other route says 405)."""
    answer = await exchange(proc.port, b"get /api/v1/changes HTTP/1.1\r\nHost: gw\r\n"
                            b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:300]
    assert b"GET" in headers_of(answer).get(b"allow", b""), answer[:300]


async def test_a_lower_case_method_on_a_refused_path_does_not_advertise_get(
    proc: GatewayProcess,
) -> None:
    """FrontDoor.render runs _check_head (the method's case, with Allow from methods_of)
    before check_raw_path: 'get /static/%2e%2e/x' is a 405 whose Allow says GET, HEAD --
    but 'GET /static/%2e%2e/x' is 400 (a traversal), as is 'GET //'. RFC 9110 15.5.6: Allow
    lists the target's supported methods; this target supports none."""
    for target in (b"/static/%2e%2e/x", b"//"):
        plain = await exchange(proc.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                               b"Connection: close\r\n\r\n")
        lower = await exchange(proc.port, b"get " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                               b"Connection: close\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 400 "), plain[:200]
        assert b"GET" not in headers_of(lower).get(b"allow", b""), (target, lower[:300])


async def test_an_access_line_names_the_client_the_user_and_the_bytes_sent(
    reactor: Any, proc: GatewayProcess, couch_backend: CouchBackend
) -> None:
    """docs: one structured access line per request -- its client, user and bytes sent."""
    answer = await exchange(proc.port, b"GET /api/v1/session HTTP/1.1\r\nHost: x\r\n"
                            + _admin(couch_backend) + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    line = await access_line_of(reactor, proc, answer)
    body = answer.partition(b"\r\n\r\n")[2]
    assert line["user"] == couch_backend.admin_username, line
    assert line["client"] == "127.0.0.1", line
    assert line["bytes_sent"] == len(body) > 0, line
    assert line["aborted"] is False, line


async def test_the_in_flight_gauge_returns_to_its_level(proc: GatewayProcess) -> None:
    """wallaby_http_requests_in_flight: requests being served; the /metrics request that
    reads it is the only one, however many came before."""
    for _ in range(3):
        await exchange(proc.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await exchange(proc.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n")
    assert b"\nwallaby_http_requests_in_flight 1\n" in answer, answer[-2000:]


async def test_a_refused_handshake_s_access_line_counts_the_bytes_of_its_answer(
    reactor: Any, proc: GatewayProcess
) -> None:
    """gateway.ws.resource: a refused handshake is answered (and logged) as the REST API
    answers an error: its access line's bytes_sent is the envelope's length, as for any
    other 401."""
    answer = await exchange(proc.port, b"GET /api/v1/changes HTTP/1.1\r\nHost: x\r\n"
                            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    body = answer.partition(b"\r\n\r\n")[2]
    line = await access_line_of(reactor, proc, answer)
    assert line["status"] == 401, line
    assert line["bytes_sent"] == len(body) > 0, (line, len(body))
