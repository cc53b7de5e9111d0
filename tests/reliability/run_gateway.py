"""The gateway process used by the reliability suite: ``python -m tests.reliability.run_gateway``.

It is ``python -m gateway run`` (same settings from the environment: ``COUCHDB_URL``,
``WALLABY_PORT`` …, same JSON log observer on stdout, same ``READY <port>`` line on stderr)
plus the live-changes endpoint at ``/api/v1/changes``, which ``gateway/__main__.py`` does
not mount yet (see ``test_entry_point_serves_websocket`` in ``test_faults.py``). Once the
entry point mounts it, this module simply runs the entry point.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any


def entry_point_mounts_changes() -> bool:
    """Whether ``python -m gateway run`` itself serves ``/api/v1/changes``."""
    import gateway.__main__ as entry

    return "install_changes" in inspect.getsource(entry)


def main() -> int:
    if entry_point_mounts_changes():
        from gateway.__main__ import main as entry_main

        return entry_main(["run"])

    from twisted.internet import reactor as global_reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.client import HTTPConnectionPool

    from gateway.config import Settings
    from gateway.couch import BasicAuth, CouchServer
    from gateway.couch.urls import split_credentials
    from gateway.http.accesslog import json_lines_observer
    from gateway.http.app import GatewayApp
    from gateway.http.service import GatewayService
    from gateway.ws.mount import install_changes

    reactor: Any = global_reactor
    settings = Settings.from_env(dict(os.environ))
    url, user, password = split_credentials(settings.couchdb_url)
    if user and not settings.couchdb_user:
        settings = settings.with_overrides(couchdb_url=url, couchdb_user=user,
                                           couchdb_password=password or "")
    observer = (json_lines_observer(sys.stdout) if settings.log_format == "json"
                else textFileLogObserver(sys.stdout))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    auth = (BasicAuth(settings.couchdb_user, settings.couchdb_password or "")
            if settings.couchdb_user else None)
    couch = CouchServer(settings.couchdb_url, reactor=reactor, pool=pool, auth=auth,
                        timeout=settings.request_timeout)
    app = GatewayApp(settings, couch=couch, reactor=reactor)
    changes = install_changes(app, couch, settings, reactor)
    service = GatewayService(app, reactor, settings.host, settings.port, pool=pool)

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
    sys.exit(main())
