"""``python -m gateway run`` with the live-changes endpoint mounted, plus bench counters.

Usage: ``python -m benches.gateway_ws run`` (same CLI and environment as the gateway).

The benchmarks start the gateway through this module so that they can read the
WebSocket layer's counters (``ChangesService.metrics_snapshot()``: open connections,
messages sent, upstream feeds) at ``GET /bench/ws-metrics`` (JSON), whether or not
``gateway/__main__.py`` mounts ``/api/v1/changes`` itself yet. If it does not, this module
mounts it with :func:`gateway.ws.mount.install_changes`, exactly as documented there.
Nothing in the gateway's request path is changed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import gateway.http.app as http_app
import gateway.http.service as http_service
import gateway.ws.mount as ws_mount
from gateway.__main__ import main

_state: dict[str, Any] = {}
_install = ws_mount.install_changes


def _install_and_keep(app: Any, couch: Any, settings: Any, reactor: Any) -> Any:
    service = _install(app, couch, settings, reactor)
    _state["changes"] = service
    return service


ws_mount.install_changes = _install_and_keep


class _MetricsResource:
    """``GET /bench/ws-metrics``: the WebSocket counters as JSON."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def render(self, request: Any) -> bytes:
        service = _state.get("changes")
        body = service.metrics_snapshot() if service is not None else {}
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode()

    def getChildWithDefault(self, name: Any, request: Any) -> Any:  # noqa: N802
        return self

    def putChild(self, path: Any, child: Any) -> None:  # noqa: N802
        raise NotImplementedError


_Service = http_service.GatewayService


class _BenchService(_Service):  # type: ignore[misc,valid-type]
    def __init__(self, app: Any, reactor: Any, *args: Any, **kwargs: Any) -> None:
        if ws_mount.CHANGES_PATH not in app.mounts:
            service = _install_and_keep(app, app.couch, app.settings, reactor)
            reactor.callWhenRunning(service.startService)
            reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        from twisted.web.resource import IResource
        from zope.interface import directlyProvides

        metrics = _MetricsResource()
        directlyProvides(metrics, IResource)
        app.mount(b"/bench/ws-metrics", metrics)
        super().__init__(app, reactor, *args, **kwargs)


http_service.GatewayService = _BenchService

assert http_app  # imported so that the patched names are the ones run() imports

if __name__ == "__main__":
    sys.exit(main())
