"""A step of the system clock moves none of the gateway's deadlines (gateway/monotonic.py).

Each gateway here runs under Debian's libfaketime, which steps what the wall clock
(``CLOCK_REALTIME``) says on demand while the monotonic clock runs on
(``FAKETIME_DONT_FAKE_MONOTONIC``), as an NTP step at boot, a resumed virtual machine or
an operator's ``date -s`` do. Twisted schedules timers on the wall clock unless told
otherwise: a step back held every pending deadline back by the step, a step forward
fired them all at once. The test processes themselves keep the real clock.
"""

from __future__ import annotations

import glob
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, http, spawn_gateway

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install libfaketime)")


class SteppedClock:
    """The wall clock of the processes started with :attr:`env`, stepped by :meth:`step`."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "faketime-offset"
        self.file.write_text("+0\n")
        assert LIBFAKETIME is not None
        self.env = {
            "LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, offset: str) -> None:
        """Set the wall clock's offset from the real time (libfaketime: ``-1h``, ``+2h``)."""
        self.file.write_text(offset + "\n")


@pytest.fixture
def clock(tmp_path: Path) -> SteppedClock:
    return SteppedClock(tmp_path)


class _HeldUpstream(BaseHTTPRequestHandler):
    """Answers ``/held…`` (a database) only once released, anything else (``/_session``) at once."""

    release = threading.Event()

    def do_GET(self) -> None:
        if self.path.startswith("/held"):
            self.release.wait(15)
            answer: dict[str, object] = {"db_name": "held", "doc_count": 0}
        else:  # /_session, the caller's name
            answer = {"ok": True, "userCtx": {"name": "u", "roles": []}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def held_upstream() -> Iterator[tuple[str, threading.Event]]:
    """A loopback stand-in for CouchDB that holds some answers until told."""
    release = threading.Event()
    handler = type("Handler", (_HeldUpstream,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://admin:pw@127.0.0.1:{server.server_address[1]}", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_the_header_deadline_holds_after_the_clock_steps_back(
    couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
    clock: SteppedClock,
) -> None:
    """A slow-loris head is still cut at WALLABY_HEADER_TIMEOUT, not an hour later."""
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path, WALLABY_HEADER_TIMEOUT="1",
                            **clock.env)
    gateways.append(gateway)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(b"GET /health HTTP/1.1\r\n")  # the head's first line, and no more
    time.sleep(0.3)
    clock.step("-1h")
    sock.settimeout(6)
    started = time.monotonic()
    try:
        got = sock.recv(100)
    except TimeoutError:
        got = b"(still open)"
    except OSError as exc:  # the deadline aborts the connection
        got = repr(exc).encode()
    finally:
        sock.close()
    assert got != b"(still open)", "the head deadline did not fire within 6 s"
    assert time.monotonic() - started < 6


def test_an_upstream_deadline_holds_after_the_clock_steps_back(
    tmp_path: Path, gateways: list[GatewayProcess], clock: SteppedClock,
) -> None:
    """A request to a CouchDB that never answers is still 504 at WALLABY_REQUEST_TIMEOUT."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)  # connects, never answers
    try:
        gateway = spawn_gateway(f"http://admin:pw@127.0.0.1:{silent.getsockname()[1]}",
                                tmp_path, WALLABY_REQUEST_TIMEOUT="1", **clock.env)
        gateways.append(gateway)
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(http(
            "GET", gateway.url + "/api/v1/db/anything",
            headers={"Authorization": "Basic dTpw"}, timeout=8).status))
        thread.start()
        time.sleep(0.3)
        clock.step("-1h")
        thread.join(10)
        assert results == [504]
    finally:
        silent.close()


def test_a_login_lockout_ends_on_time_after_the_clock_steps_back(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path,
    gateways: list[GatewayProcess], clock: SteppedClock,
) -> None:
    """WALLABY_LOGIN_LOCKOUT_SECONDS of 2 is 2 s, whatever the wall clock did meanwhile."""
    gateway = spawn_gateway(couch_backend.admin_url, tmp_path, WALLABY_LOGIN_MAX_FAILURES="2",
                            WALLABY_LOGIN_LOCKOUT_SECONDS="2", **clock.env)
    gateways.append(gateway)
    name, password = couch.new_user()  # a throwaway: CouchDB 3.5 locks accounts itself

    def login(secret: str) -> int:
        return http("POST", gateway.url + "/api/v1/session",
                    {"name": name, "password": secret}).status

    assert [login("guess"), login("guess")] == [401, 401]
    assert login(password) == 429
    clock.step("-1h")
    time.sleep(2.5)
    assert login(password) == 200


def test_requests_in_flight_survive_the_clock_stepping_forward(
    tmp_path: Path, gateways: list[GatewayProcess], clock: SteppedClock,
    held_upstream: tuple[str, threading.Event],
) -> None:
    """A step forward fires no deadline early: a request whose upstream answers in 1.5 s
    gets its answer (not 504), and kept-alive idle connections stay open."""
    url, release = held_upstream
    gateway = spawn_gateway(url, tmp_path, WALLABY_REQUEST_TIMEOUT="30",
                            WALLABY_IDLE_TIMEOUT="60", **clock.env)
    gateways.append(gateway)
    idle = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        idle.append(sock)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(http(
        "GET", gateway.url + "/api/v1/db/held", headers={"Authorization": "Basic dTpw"},
        timeout=10).status))
    thread.start()
    time.sleep(0.3)
    clock.step("+2h")
    time.sleep(1.2)
    release.set()
    thread.join(10)
    assert results == [200]
    for sock in idle:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()
