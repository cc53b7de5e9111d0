"""Live changes over WebSocket: one shared upstream feed per (db, filter), many clients.

* :mod:`gateway.ws.protocol` — the message layer (schemas in ``api_schema/ws``), sans I/O;
* :mod:`gateway.ws.hub` — the refcounted shared feeds and their fan-out;
* :mod:`gateway.ws.catchup` — resuming from a seq without gap or duplicate;
* :mod:`gateway.ws.server` — the Autobahn endpoint and its service.
"""
