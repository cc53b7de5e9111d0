"""include_docs subscribers and a document deeper than Python 3.12's C parser reaches.

tests/ws/test_stored_values.py checks 1,200 levels; deep_json.py promises 10,000. At
2,000 levels (pouchdb-server stores it) the shared feed must still deliver it and the
changes after it. On Python 3.12 (the Docker image's), it stalls every include_docs
subscriber of the database, as before fccbf5c.
"""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from tests.conftest import CouchBackend
from tests.ws.conftest import WsServer
from tests.ws.test_stored_values import _put_raw

DEPTH = 2000


async def test_a_2000_level_document_does_not_stall_include_docs_subscribers(
    ws_server: WsServer, db: Database, make_user: Any, couch_backend: CouchBackend,
    reactor: Any,
) -> None:
    client = await ws_server.connect(await ws_server.login(await make_user()))
    subscribed = await client.subscribe("s1", db.name, since="now", include_docs=True)
    assert subscribed["type"] == "subscribed", subscribed
    deep = b'{"v":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    await _put_raw(couch_backend, db.name, "deep", deep, reactor)
    await db.save({"_id": "after", "n": 1})
    changes = await client.collect_changes(2, timeout=10)
    assert [c["id"] for c in changes] == ["deep", "after"]
