"""Stored documents the live-changes layer once could not carry (each failed before session 21).

1. A document nested deeper than Python's recursion limit (CouchDB 3 and pouchdb-server
   store 1,200 levels without complaint; it may come by replication or from any other
   client). The shared feed's line parser (``gateway/couch/changes/parser.py``,
   ``json.loads``) raises ``RecursionError`` on its row: the feed reports
   ``interrupted`` ("connection to CouchDB lost (ResponseFailed: RecursionError …)"),
   reconnects from the last seq, meets the same row, and so on for ever. Every
   ``include_docs`` subscriber of that database stops receiving changes.

2. A string holding a lone surrogate escape (``"\\ud800"``). The gateway's REST API takes
   it (it refuses such ids since session 18, not such values) and pouchdb-server stores
   it; CouchDB 3 refuses it (jiffy: invalid string). ``gateway/ws/protocol.py``
   ``encode`` writes frames with ``ensure_ascii=False`` and then ``.encode("utf-8")``,
   which raises ``UnicodeEncodeError``: the live change is silently dropped for
   ``include_docs`` subscribers (a critical "changes handler … failed" in the log), and
   a subscription from ``since: 0`` ends with ``internal_error``.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import treq

from gateway.couch import CouchServer, Database
from tests.conftest import CouchBackend
from tests.ws.conftest import WsServer, gateway_with_changes, open_client

DEPTH = 1200


def _auth(couch_backend: CouchBackend) -> dict[str, str]:
    token = base64.b64encode(
        f"{couch_backend.admin_username}:{couch_backend.admin_password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def _put_raw(couch_backend: CouchBackend, db: str, doc_id: str, body: bytes,
                   reactor: Any) -> None:
    put = await treq.put(f"{couch_backend.url}/{db}/{doc_id}", data=body,
                         headers={"Content-Type": "application/json", **_auth(couch_backend)},
                         reactor=reactor)
    assert put.code == 201, await treq.content(put)


@pytest.mark.parametrize("depth", [DEPTH, 2000])  # 2,000: past Python 3.12's C parser too
async def test_a_deeply_nested_document_does_not_stall_include_docs_subscribers(
    ws_server: WsServer, db: Database, make_user: Any, couch_backend: CouchBackend,
    reactor: Any, depth: int,
) -> None:
    client = await ws_server.connect(await ws_server.login(await make_user()))
    subscribed = await client.subscribe("s1", db.name, since="now", include_docs=True)
    assert subscribed["type"] == "subscribed", subscribed
    deep = b'{"v":' + b"[" * depth + b"]" * depth + b"}"
    await _put_raw(couch_backend, db.name, "deep", deep, reactor)
    await db.save({"_id": "after", "n": 1})
    changes = await client.collect_changes(2, timeout=10)
    assert [c["id"] for c in changes] == ["deep", "after"]
    assert changes[1]["doc"]["n"] == 1


async def test_a_deeply_nested_document_does_not_end_a_catch_up(
    ws_server: WsServer, db: Database, make_user: Any, couch_backend: CouchBackend,
    reactor: Any,
) -> None:
    deep = b'{"v":' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    await _put_raw(couch_backend, db.name, "deep", deep, reactor)
    await db.save({"_id": "after", "n": 1})
    client = await ws_server.connect(await ws_server.login(await make_user()))
    subscribed = await client.subscribe("s1", db.name, since=0, include_docs=True)
    assert subscribed["type"] == "subscribed", subscribed
    changes = await client.collect_changes(2, timeout=10)
    assert [c["id"] for c in changes] == ["deep", "after"]


async def _rest_put(port: int, path: str, body: bytes, auth: dict[str, str],
                    reactor: Any) -> tuple[int, bytes]:
    reply = await treq.put(f"http://127.0.0.1:{port}{path}", data=body,
                           headers={"Content-Type": "application/json", **auth},
                           reactor=reactor)
    return reply.code, await treq.content(reply)


async def test_a_value_the_gateway_accepted_reaches_include_docs_subscribers(
    admin: CouchServer, db: Database, couch_backend: CouchBackend, reactor: Any,
) -> None:
    """What the REST API accepts must reach subscribers (or be refused, as CouchDB does)."""
    auth = _auth(couch_backend)
    async with gateway_with_changes(reactor, admin, ws_ping_interval=0.0,
                                    rate_limit_per_second=0.0) as gw:
        url = f"ws://127.0.0.1:{gw.port}/api/v1/changes"
        live = await open_client(reactor, url, headers=auth)
        assert (await live.subscribe("s1", db.name, since="now", include_docs=True))[
            "type"] == "subscribed"
        status, answer = await _rest_put(
            gw.port, f"/api/v1/db/{db.name}/docs/lone", b'{"v":"\\ud800 text"}', auth, reactor)
        if status == 400:
            return  # refused, as CouchDB 3 refuses it: nothing to deliver
        assert status == 201, answer
        await db.save({"_id": "after"})
        changes = await live.collect_changes(2, timeout=8)
        assert [c["id"] for c in changes] == ["lone", "after"]
        assert changes[0]["doc"]["v"] == "\ud800 text"

        resumed = await open_client(reactor, url, headers=auth)
        reply = await resumed.subscribe("s2", db.name, since=0, include_docs=True)
        assert reply["type"] == "subscribed", reply
        assert [c["id"] for c in await resumed.collect_changes(2, timeout=8)] == [
            "lone", "after"]
        for client in (live, resumed):
            await client.close()
