"""GatewayChannel (gateway/http/channel.py; session 20): the header deadline starts at a
request's first byte. An empty line between requests (RFC 9112 section 2.2: a server
"SHOULD ignore at least one empty line (CRLF) received prior to the request-line"; old
browsers sent one after a POST body) starts it too, on a keep-alive connection that then
sits idle, and the connection is aborted at WALLABY_HEADER_TIMEOUT instead of closed at
WALLABY_IDLE_TIMEOUT."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import CouchBackend
from tests.reliability.conftest import GatewayProcess, spawn_gateway


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(4096)
    return head


def test_an_empty_line_after_a_request_does_not_start_the_header_deadline(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
) -> None:
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path, WALLABY_HEADER_TIMEOUT="1",
                            WALLABY_IDLE_TIMEOUT="6")
    gateways.append(gateway)
    results = {}
    for name, tail in (("control", b""), ("crlf", b"\r\n")):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        # a request with a body (answered 405, which does not matter: the connection stays open)
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" + tail)
        first = _answer(sock)
        time.sleep(3)  # idle, well within the idle timeout
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            second = _answer(sock).split(b"\r\n")[0]
        except OSError as exc:
            second = repr(exc).encode()
        sock.close()
        results[name] = (first.split(b"\r\n")[0], second)
    print(results)
    assert results["control"][1].startswith(b"HTTP/1.1 "), results
    assert results["crlf"][1] == results["control"][1], results
