"""Live changes over WebSocket: one shared upstream feed per (db, filter), many clients.

* :mod:`gateway.ws.protocol` — the message layer (schemas in ``api_schema/ws``), sans I/O;
* :mod:`gateway.ws.hub` — the refcounted shared feeds and their fan-out;
* :mod:`gateway.ws.catchup` — resuming from a seq without gap or duplicate;
* :mod:`gateway.ws.handshake` — what a handshake's ``Origin`` and cookies allow, and who
  it authenticates as;
* :mod:`gateway.ws.access` — shared identities and access re-checks per credential;
* :mod:`gateway.ws.outbox` — a connection's send queue, and the joining of runs of frames;
* :mod:`gateway.ws.subscription` — one subscription of one connection;
* :mod:`gateway.ws.resume` — a subscription's catch-up and its merge with the live feed;
* :mod:`gateway.ws.tasks` — background tasks, kept until they end;
* :mod:`gateway.ws.server` — the Autobahn endpoint: one client connection;
* :mod:`gateway.ws.factory` — what its connections share: the factory that builds them;
* :mod:`gateway.ws.metrics` — its counters;
* :mod:`gateway.ws.service` — the endpoint as a service, with its graceful shutdown;
* :mod:`gateway.ws.resource` — the upgrade through Twisted Web, and its refusals;
* :mod:`gateway.ws.mount` — wiring it into the REST gateway at ``/api/v1/changes``.
"""
