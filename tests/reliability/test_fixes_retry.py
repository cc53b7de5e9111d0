"""A write that went out on a pooled connection whose answer was lost (review of session 20's
"not sent" classification, gateway/couch/transport.py ``_NOT_SENT`` / ``_with_timeout``).

Twisted's ``HTTPConnectionPool`` retries a request that failed on a *cached* connection
once, on a new connection, when its method is in Twisted's idempotent list, which includes
``DELETE`` (``twisted.web.client._RetryingHTTP11ClientProtocol._shouldRetry``). So for a
``DELETE`` whose first copy reached CouchDB (and was applied) but whose answer was lost:

* the retry's connect may fail or be cut (CouchDB restarting, a handshake that hangs):
  the failure the gateway sees is the *retry's* (``ConnectingCancelledError``,
  ``ConnectionRefusedError``, ``TLSHandshakeFailed``), which ``unsure_of_write`` takes for
  "certainly not sent": 503/504 *with* ``Retry-After`` and no "may have been applied";
* or the retry reaches CouchDB, which answers the second copy 409 (the rev is gone) or
  404 (the database is gone): the client is told its successful delete failed.

docs/rest-api.md "Errors": "a write whose answer was lost (the connection dropped after
the request went out …) → 502 ``upstream_answer_lost`` … and one not answered in time →
504 ``upstream_timeout``, both without ``Retry-After``: it may have been applied".

A small loopback proxy in front of the session's pouchdb-server forwards everything, but
for the first ``DELETE`` on a connection that already served a request (one the gateway's
pool reuses) it forwards the request, waits for CouchDB's answer (so it was applied), and
closes the gateway's connection without relaying it. What happens to new connections
then is the parameter: ``stall`` (SYNs unanswered: the accept queue is full),
``refuse`` (the port closed), ``forward`` (served normally).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, basic_header, http, spawn_gateway


class LosingProxy:
    """Forwards to ``upstream``; loses the answer to the first DELETE on a reused connection."""

    def __init__(self, upstream: tuple[str, int], after: str) -> None:
        self.upstream = upstream
        self.after = after
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.lost = threading.Event()
        self.deletes_seen = 0
        self._lock = threading.Lock()
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    # -- plumbing

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        requests_on_connection = 0
        drop = threading.Event()
        threading.Thread(target=self._back, args=(upstream, client, drop), daemon=True).start()
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                starts = [line for line in data.split(b"\r\n")
                          if line[:7] in (b"GET /", b"PUT /", b"POST /", b"HEAD /")
                          or line.startswith((b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ",
                                              b"COPY "))]
                for line in starts:
                    requests_on_connection += 1
                    with self._lock:
                        if (line.startswith(b"DELETE ") and requests_on_connection > 1
                                and not self.lost.is_set()):
                            self.deletes_seen += 1
                            drop.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _back(self, upstream: socket.socket, client: socket.socket,
              drop: threading.Event) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if drop.is_set() and not self.lost.is_set():
                    # CouchDB answered the DELETE (it is applied): lose that answer.
                    time.sleep(0.2)  # the rest of it
                    self._switch()
                    self.lost.set()
                    for sock in (client, upstream):  # shutdown: wakes the other thread
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    return
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _switch(self) -> None:
        """New connections from now on: ``after``."""
        if self.after == "forward":
            return
        self._stop_listening()
        if self.after == "refuse":
            return
        # stall: a listener that never accepts, its one-place queue filled: SYNs dropped
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stalled.bind(("127.0.0.1", self.port))
        stalled.listen(0)
        self.listener = stalled
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                filler.connect(("127.0.0.1", self.port))
            self._sockets.append(filler)
        time.sleep(0.2)

    def _stop_listening(self) -> None:
        # shutdown wakes the accept() blocked in the other thread (close alone would not,
        # and the kernel would go on accepting on the port)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def close(self) -> None:
        self._stop_listening()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _call(gateway: GatewayProcess, method: str, path: str, body: object = None,
          headers: dict[str, str] | None = None):
    return http(method, gateway.url + path, body, headers or {}, timeout=60)


@pytest.mark.parametrize("after", ["stall", "refuse", "forward"])
def test_a_delete_whose_answer_was_lost_is_never_said_not_applied(
    couch_backend: CouchBackend, couch: Couch, tmp_path: Path,
    gateways: list[GatewayProcess], after: str,
) -> None:
    db = couch.new_db(prefix="lostdel")
    created = couch.call("PUT", f"/{db}/victim", {"v": 1})
    assert created.status in (201, 202), created
    rev = created.json["rev"]
    host, port = couch_backend.url.split("://", 1)[1].rsplit(":", 1)
    proxy = LosingProxy((host, int(port)), after)
    try:
        url = (f"http://{couch_backend.admin_username}:{couch_backend.admin_password}"
               f"@127.0.0.1:{proxy.port}")
        gateway = spawn_gateway(url, tmp_path, WALLABY_REQUEST_TIMEOUT="3")
        gateways.append(gateway)
        admin = basic_header(couch_backend.admin_username, couch_backend.admin_password)
        # a request first, so that the DELETE goes out on a connection the pool kept
        warm = _call(gateway, "GET", f"/api/v1/db/{db}/docs/victim", headers=admin)
        assert warm.status == 200, warm
        answer = _call(gateway, "DELETE", f"/api/v1/db/{db}/docs/victim?rev={rev}",
                       headers=admin)
        assert proxy.lost.is_set(), "the proxy did not see the DELETE on a reused connection"
    finally:
        proxy.close()
    # the first copy was applied
    assert couch.call("GET", f"/{db}/victim").status == 404
    body = answer.json if isinstance(answer.json, dict) else {}
    reason = json.dumps(body)
    retry_after = {k.lower(): v for k, v in answer.headers.items()}.get("retry-after")
    assert answer.status in (200, 502, 504), (
        f"the DELETE was applied, its answer lost; the client was told "
        f"{answer.status} {reason} (Retry-After: {retry_after})")
    if answer.status != 200:
        assert retry_after is None, (
            f"{answer.status} {reason} invites sending again a DELETE that was applied")
        assert "may have been applied" in reason, reason
