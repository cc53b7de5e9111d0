"""A resumed subscription lets its catch-up's (doc id -> rev) table go when its window ends.

``gateway/ws/resume.py`` records every row of a resume's catch-up in ``Join.sent`` (one
entry per document read); after the merge the join stays on as ``sub.trailing`` "for at
most 30 s after the catch-up" (docs/websocket.md, Resume). It used to be let go only
when a live change arrived after that window (``ChangesServerProtocol.feed_changes``): on
a quiet database, never. A client resuming from an old seq on a large database left one
table entry per document in the gateway for as long as it kept the subscription (3.3 MB
for 20,000 documents, per subscription and connection). Found by a review of state held
per key; now the window's end lets it go (``ChangesServerProtocol._trail``).
"""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from gateway.ws import catchup
from tests.ws.conftest import WsServer, sleep

DOCS = 2000


async def test_the_catch_up_table_is_let_go_after_the_trailing_window(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any,
) -> None:
    monkeypatch.setattr(catchup, "TRAILING_SECONDS", 2.0)  # the documented 30 s, shortened
    await db.bulk_save([{"_id": f"doc{i:05d}"} for i in range(DOCS)])
    token = await ws_server.login(await make_user())
    client = await ws_server.connect(token)
    reply = await client.subscribe("s", db.name, since=0)
    assert reply["type"] == "subscribed", reply
    await client.collect_changes(DOCS, timeout=60)

    await sleep(reactor, 4.0)  # twice the window; nothing written meanwhile
    (connection,) = ws_server.service.factory.connections
    sub = connection.subs["s"]
    held = 0 if sub.trailing is None else len(sub.trailing.sent)
    assert held == 0, (
        f"{held} (doc id, rev) entries of the catch-up still held 2 s after the "
        f"{catchup.TRAILING_SECONDS:g} s trailing window ended (until the next live change)")
