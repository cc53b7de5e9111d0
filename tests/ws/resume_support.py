"""Shared steps of the resume tests: a point to resume from, racing writes, a catch-up spy."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred

from gateway.couch import Database
from tests.ws.conftest import WsServer, sleep, spy_on_upstream


async def write_docs(db: Database, prefix: str, count: int, reactor: Any) -> list[str]:
    """Save ``count`` documents one by one, yielding to the reactor now and then."""
    ids = []
    for i in range(count):
        await db.save({"_id": f"{prefix}{i:04d}", "n": i})
        ids.append(f"{prefix}{i:04d}")
        if i % 5 == 0:
            await sleep(reactor, 0.001)
    return ids


async def resume_point(ws_server: WsServer, db: Database, token: str) -> tuple[Any, list[str]]:
    """A seq in the middle of 30 changes of a running shared feed, and the ids after it.

    A watcher stays subscribed, so that later resumes join a feed that is running.
    """
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)
    first = await ws_server.connect(token)
    await first.subscribe("s", db.name)
    await db.bulk_save([{"_id": f"a{i:04d}"} for i in range(30)])
    got = await first.collect_changes(30)
    await first.close()
    return got[14]["seq"], [c["id"] for c in got[15:]]


async def resume_while_writing(
    ws_server: WsServer, db: Database, token: str, reactor: Any,
    resume_from: Any, expected_after: list[str], rounds: int = 3,
) -> None:
    """Resume from ``resume_from`` while 60 writes race each join: no gap, no duplicate."""
    for round_ in range(rounds):
        writing = Deferred.fromCoroutine(write_docs(db, f"r{round_}-", 60, reactor))
        await sleep(reactor, 0.02)
        client = await ws_server.connect(token)
        answer = await client.subscribe("s", db.name, since=resume_from)
        assert answer["type"] == "subscribed" and answer["since"] == resume_from
        written = await writing
        wanted = expected_after + written
        changes = await client.collect_changes(len(wanted))
        # Each document once: CouchDB orders a feed per document, and a catch-up read of
        # a sharded database may interleave its shards otherwise than the live feed did.
        assert Counter(c["id"] for c in changes) == Counter(wanted), (
            f"gap or duplicate at the join (round {round_})")
        # nothing more (no duplicate arrives late)
        await db.save({"_id": f"end{round_}"})
        assert (await client.next("change"))["id"] == f"end{round_}"
        expected_after = [*wanted, f"end{round_}"]
        await client.close()


def spy_on_catch_ups(monkeypatch: Any, ws_server: WsServer) -> list[Any]:
    """Record the parameters of every catch-up ``_changes`` read (not the shared feed's)."""
    shared = ws_server.service.hub.transport
    return spy_on_upstream(monkeypatch, lambda transport, _method, segments, kwargs: (
        (kwargs.get("params") or {}) if segments[-1:] == ["_changes"] and transport is not shared
        else None))
