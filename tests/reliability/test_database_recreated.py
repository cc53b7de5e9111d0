"""A database deleted under its live feed, then created again. CouchDB ends a deleted
database's continuous feed and answers the reconnection 404, so the gateway's shared feed
stops for good (``error not_found`` to its subscribers) and must be forgotten
(hub.py ``_on_error``): the next subscriber follows the new database through a new feed,
not the dead one. pouchdb-server keeps a deleted database's feed open, sending heartbeats
and nothing else, so this runs against a stand-in that answers as CouchDB does.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import GatewayProcess, spawn_gateway
from tests.reliability.test_operator_logs import ws_open, ws_recv, ws_send
from tests.support.standin_http import JsonAnswers, serving

ROW = {"seq": "1-a", "id": "after", "changes": [{"rev": "1-b"}]}


class _RecreatedDatabaseCouch(JsonAnswers):
    """Database ``x``: empty (generation 1), deleted (0), created again with one
    document, ``after`` (2). A deletion ends the continuous feeds open on it."""

    generation = 1
    feed_refused = threading.Event()

    def do_GET(self) -> None:
        try:
            generation = type(self).generation
            if self.path.startswith("/_session"):
                self.send_json(200, {"ok": True, "userCtx": {"name": "u", "roles": []}})
            elif self.path.startswith("/_up"):
                self.send_json(200, {"status": "ok"})
            elif generation == 0:
                if "feed=continuous" in self.path:
                    self.feed_refused.set()
                self.send_json(404, {"error": "not_found", "reason": "Database does not exist."})
            elif "_changes" in self.path and "feed=continuous" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                if generation == 2:
                    self.wfile.write(json.dumps(ROW).encode() + b"\n")
                while type(self).generation == generation:  # until deleted
                    self.wfile.write(b"\n")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif "_changes" in self.path:
                rows = [ROW] if generation == 2 else []
                self.send_json(200, {"results": rows, "last_seq": "1-a" if rows else "0"})
            else:
                self.send_json(200, {"db_name": "x", "update_seq": "1-a" if generation == 2 else "0",
                                     "doc_count": generation - 1})
        except OSError:
            pass

    do_POST = do_GET  # noqa: N815 - BaseHTTPRequestHandler's name


def _next(sock: object, kind: str) -> dict[str, object]:
    for _ in range(20):
        message = json.loads(ws_recv(sock)[1])  # type: ignore[arg-type]
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind}")


def _open(gateway: GatewayProcess) -> socket.socket:
    return ws_open(gateway.port, {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()})


@pytest.mark.parametrize("first_socket", ["subscribed", "lost"])
def test_a_database_created_again_is_followed_by_a_new_feed(
        tmp_path: Path, gateways: list[GatewayProcess], first_socket: str) -> None:
    """``lost``: the first subscriber's connection is gone when the database is deleted,
    so the feed is lingering for it (hub.py: 10 s), with no subscriber to tell; it must
    be forgotten all the same, or the next subscriber takes over a dead feed."""
    _RecreatedDatabaseCouch.generation = 1
    _RecreatedDatabaseCouch.feed_refused.clear()
    with serving(_RecreatedDatabaseCouch) as couch_port:
        gateway = spawn_gateway(f"http://svc:pw@127.0.0.1:{couch_port}", tmp_path)
        gateways.append(gateway)
        sock = _open(gateway)
        try:
            ws_send(sock, {"type": "subscribe", "id": "s", "db": "x", "since": 0})
            first = _next(sock, "subscribed")
            if first_socket == "lost":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # a reset: the subscriber is lost, its feed lingers
                time.sleep(0.3)
            _RecreatedDatabaseCouch.generation = 0  # deleted: the live feed ends, 404 after
            if first_socket == "lost":
                assert _RecreatedDatabaseCouch.feed_refused.wait(15)
                time.sleep(0.3)  # the gateway has taken the 404
                sock = _open(gateway)
            else:
                error = _next(sock, "error")
                assert (error["id"], error["error"]) == ("s", "not_found"), error
            _RecreatedDatabaseCouch.generation = 2  # created again, with a document
            ws_send(sock, {"type": "subscribe", "id": "t", "db": "x", "since": 0})
            second = _next(sock, "subscribed")
            change = _next(sock, "change")
        finally:
            sock.close()
        gateway.stop()
    assert second["feed"] != first["feed"], (first, second)
    assert (change["feed"], change["id"], change["seq"]) == (second["feed"], "after", "1-a"), change
