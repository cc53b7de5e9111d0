"""Run the gateway (REST app + live changes) against an existing CouchDB, for browser tests.

Usage: ``python -m tests.browser.run_gateway PORT`` with ``COUCHDB_URL``,
``COUCHDB_USER`` and ``COUCHDB_PASSWORD`` set. Prints ``READY <port>`` once listening;
SIGTERM shuts down gracefully (WebSockets closed with 1001).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    from gateway.config import Settings
    from gateway.couch import BasicAuth, CouchServer
    from gateway.http.app import GatewayApp
    from gateway.http.service import GatewayService
    from gateway.ws.mount import install_changes

    port = int(sys.argv[1])
    settings = Settings.from_env().with_overrides(
        port=port, log_format="text", shutdown_grace=2.0, ws_ping_interval=5.0
    )
    pool = HTTPConnectionPool(reactor, persistent=True)
    couch = CouchServer(
        settings.couchdb_url, reactor=reactor, pool=pool,
        auth=BasicAuth(settings.couchdb_user or "", settings.couchdb_password or ""),
        timeout=settings.request_timeout,
    )
    app = GatewayApp(settings, couch=couch, reactor=reactor)
    changes = install_changes(app, couch, settings, reactor)
    service = GatewayService(app, reactor, "127.0.0.1", port, pool=pool)

    def announce(_: object) -> None:
        sys.stderr.write(f"READY {service.port}\n")
        sys.stderr.flush()

    service.ready.addCallback(announce)
    reactor.callWhenRunning(changes.startService)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", changes.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WALLABY_LOG_FORMAT", "text")
    sys.exit(main())
