"""Changing server configuration in tests, the CouchDB 3 way (with pouchdb-server's path)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.couch import CouchServer


def config_path(is_pouchdb: bool, section: str, key: str) -> list[str]:
    """The path segments of ``[section] key`` on the server (CouchDB 3, or pouchdb-server)."""
    if is_pouchdb:  # pouchdb-server keeps CouchDB 1.x's /_config and section names
        return ["_config", {"chttpd_auth": "couch_httpd_auth"}.get(section, section), key]
    return ["_node", "_local", "_config", section, key]


@asynccontextmanager
async def config_value(
    admin: CouchServer, is_pouchdb: bool, section: str, key: str, value: str
) -> AsyncIterator[None]:
    """Set ``[section] key = value`` for the duration of a block, then restore it."""
    path = config_path(is_pouchdb, section, key)
    previous = await admin.transport.request("PUT", path, data=json.dumps(value).encode(),
                                             headers={"Content-Type": "application/json"})
    try:
        yield
    finally:
        if previous in ("", None):  # it was unset: remove it again
            await admin.transport.request("DELETE", path)
        else:
            await admin.transport.request("PUT", path, data=json.dumps(previous).encode(),
                                          headers={"Content-Type": "application/json"})
