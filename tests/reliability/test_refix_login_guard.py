"""gateway/http/login_guard.py, FailedLogins.attempt and abandoned attempts.

A client that sends a wrong password and closes its connection before the answer comes
makes Klein cancel the handler: CancelledError reaches ``await login()``, which is
neither AuthenticationRequired nor Unauthorized, so the failure is never counted. The
password was already sent to CouchDB and refused there (CouchDB 3.5 counts it in its own
lockout, which behind the gateway locks the user out for every client: README,
WALLABY_LOGIN_MAX_FAILURES). So one client sends any number of guesses of an account
to CouchDB without ever meeting the gateway's lockout.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, spawn_gateway


class SlowAnswers:
    """A loopback TCP relay to the real server that holds every answer ``delay`` s and
    records the requests that reached the server (``POST /_session`` lines) and the
    status lines the server answered."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.requests: list[bytes] = []
        self.statuses: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if answers:
                    self.statuses += [line for line in data.split(b"\r\n")
                                      if line.startswith(b"HTTP/1.1 ")]
                    time.sleep(self.delay)
                else:
                    self.requests += [line for line in data.split(b"\r\n")
                                      if line.startswith(b"POST /_session")]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _guess(port: int, name: str, password: str, client: str, *, abandon_after: float | None) -> int | None:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = json.dumps({"name": name, "password": password}).encode()
    s.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"X-Forwarded-For: {client}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body)
    try:
        if abandon_after is not None:
            time.sleep(abandon_after)
            return None
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1])
    finally:
        s.close()


def test_guesses_abandoned_before_couchdb_answers_still_count(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path
) -> None:
    victim, _password = couch.new_user()
    real = urlsplit(couch_backend.admin_url)
    relay = SlowAnswers((real.hostname or "127.0.0.1", real.port or 80), delay=0.6)
    admin = f"{real.scheme}://{real.username}:{real.password}@127.0.0.1:{relay.port}"
    gateway = spawn_gateway(
        admin, tmp_path, WALLABY_TRUSTED_PROXIES="127.0.0.1/32",
        WALLABY_LOGIN_MAX_FAILURES="5", WALLABY_LOGIN_LOCKOUT_SECONDS="300")
    try:
        attacker = "198.51.100.61"
        for i in range(12):
            _guess(gateway.port, victim, f"abandoned-guess-{i}", attacker, abandon_after=0.3)
        time.sleep(1.0)
        reached = len(relay.requests)
        refused = relay.statuses.count(b"HTTP/1.1 401 Unauthorized")
        last = _guess(gateway.port, victim, "one-more-guess", attacker, abandon_after=None)
        assert last == 429, (
            f"after 12 wrong guesses of {victim} from {attacker}, each abandoned before the "
            f"answer ({reached} POST /_session reached the server, which answered 401 "
            f"{refused} times), the next guess is {last}, not 429: the lockout "
            "(WALLABY_LOGIN_MAX_FAILURES=5) counted none of them")
    finally:
        gateway.stop()
        relay.close()
