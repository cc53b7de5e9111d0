"""Small stand-in HTTP servers for tests: a CouchDB that answers slowly, trickles, or
fails in one precise way, where a real server cannot be made to."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class JsonAnswers(http.server.BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler with a helper for JSON answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send_json(self, status: int, body: Any) -> None:
        """Answer ``status`` with ``body`` as JSON, framed by Content-Length."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port (one thread per connection).

    Yields:
        The port. The server stops when the block ends.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
