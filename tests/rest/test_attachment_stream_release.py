"""An attachment download releases its upstream stream on every path (code review, session 20).

Real pouchdb-server, a real listening gateway (in this process), real sockets.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.couch.transport import CouchTransport
from tests.rest.conftest import Scenario
from tests.ws.conftest import sleep


async def test_a_download_whose_stub_lookup_fails_releases_its_upstream_stream(
    scenario: Scenario, monkeypatch: Any, reactor: Any
) -> None:
    """``Attachments.download`` opens the attachment's stream, then (upstream sent no
    length, or ignored ``Range``: pouchdb-server) reads the document's stub in a second
    request. When that request fails (here: the document was deleted in between; the
    same for a timeout or a client that leaves meanwhile, which cancels the handler) the
    open stream is neither read nor aborted, although ``open_stream`` says the caller
    must: the upstream connection stays paused with its first 64 KiB buffered, held for
    good (never returned to the pool, never closed). One leaked connection per such
    request: a client that leaves while the stub is asked for does the same."""
    db = scenario.db
    doc: dict[str, Any] = {"_id": "holder"}
    await db.save(doc)
    payload = os.urandom(2 * 1024 * 1024)
    await db.put_attachment(doc, "big.bin", payload)
    opened: list[Any] = []
    raced: list[bool] = []
    original_open = CouchTransport.open_stream
    original_request = CouchTransport.request

    async def recording_open(self: CouchTransport, method: str, segments: Any,
                             *args: Any, **kwargs: Any) -> Any:
        response = await original_open(self, method, segments, *args, **kwargs)
        if list(segments)[-1:] == ["big.bin"]:
            opened.append(response)
        return response

    async def racing_request(self: CouchTransport, method: str, segments: Any,
                             *args: Any, **kwargs: Any) -> Any:
        if method == "GET" and list(segments) == [db.name, "holder"] and opened and not raced:
            raced.append(True)
            current = await db.get("holder")  # deleted between the two requests
            await db.delete(current)
        return await original_request(self, method, segments, *args, **kwargs)

    monkeypatch.setattr(CouchTransport, "open_stream", recording_open)
    monkeypatch.setattr(CouchTransport, "request", racing_request)
    reply = await scenario.member_client.get(
        f"/api/v1/db/{db.name}/docs/holder/attachments/big.bin",
        headers={"Range": "bytes=0-9"})
    assert reply.status == 404  # the document is gone: a fair answer
    assert len(opened) == 1
    response = opened[0]
    await sleep(reactor, 2.0)
    state = response._state  # Twisted's Response: INITIAL = body never delivered
    upstream = response._transport  # TransportProxyProducer of the upstream socket
    still_connected = getattr(upstream, "_producer", None) is not None and \
        getattr(upstream._producer, "connected", False)
    buffered = sum(len(chunk) for chunk in getattr(response, "_bodyBuffer", []) or [])
    if state == "INITIAL":
        response._transport.stopProducing()  # free what the gateway left behind
    assert state != "INITIAL" or not still_connected, (
        f"the attachment's upstream stream was left open, unread: state {state}, "
        f"{buffered} bytes buffered, connected {still_connected}")
