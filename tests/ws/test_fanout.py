"""Subscribing, fan-out from one upstream feed, unsubscribe and feed lifetime."""

from __future__ import annotations

from typing import Any

from gateway.couch import Database
from gateway.send_threads import SendThreads
from tests.ws.conftest import (
    BLOB,
    WsServer,
    record_first_arguments,
    sleep,
    slow_and_healthy_subscribers,
)


async def test_subscribe_receives_live_changes(ws_server: WsServer, db: Database, make_user: Any) -> None:
    user = await make_user()
    client = await ws_server.connect(await ws_server.login(user))
    answer = await client.subscribe("s1", db.name)
    assert answer["type"] == "subscribed", answer
    assert answer["db"] == db.name
    await db.save({"_id": "a", "n": 1})
    change = await client.next("change")
    assert change["id"] == "a" and change["feed"] == answer["feed"]
    assert change["changes"][0]["rev"].startswith("1-") and change["deleted"] is False
    assert "doc" not in change
    await client.close()


async def test_many_subscribers_share_exactly_one_upstream_feed(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    user = await make_user()
    token = await ws_server.login(user)
    clients = [await ws_server.connect(token) for _ in range(25)]
    feeds = set()
    for i, client in enumerate(clients):
        answer = await client.subscribe(f"sub{i}", db.name, include_docs=True)
        assert answer["type"] == "subscribed", answer
        feeds.add(answer["feed"])
    assert len(feeds) == 1
    assert ws_server.feeds() == 1
    hub = ws_server.service.hub
    received_before = hub.changes_received
    lags_before = ws_server.service.metrics_snapshot()["ws_delivery_lag_seconds_count"]
    await db.bulk_save([{"_id": f"d{i}", "n": i} for i in range(10)])
    orders = []
    for client in clients:
        changes = await client.collect_changes(10)
        orders.append([c["id"] for c in changes])
        assert sorted(orders[-1]) == sorted(f"d{i}" for i in range(10))
        assert orders[-1] == orders[0]  # the same order for everyone
        assert all(c["doc"]["n"] == int(c["id"][1:]) for c in changes)
    # each change came from upstream once, however many clients got it
    assert hub.changes_received - received_before == 10
    assert ws_server.feeds() == 1
    metrics = ws_server.service.metrics_snapshot()
    assert metrics["ws_connections"] == 25 and metrics["ws_subscriptions"] == 25
    assert metrics["ws_upstream_feeds"] == 1
    # every delivery's lag is counted once
    assert metrics["ws_delivery_lag_seconds_count"] - lags_before == 250
    assert 0 < metrics["ws_delivery_lag_seconds_max"] < 30
    for client in clients:
        await client.close()
    for _ in range(200):
        if ws_server.feeds() == 0:
            break
        await sleep(reactor, 0.01)
    assert ws_server.feeds() == 0
    assert ws_server.service.metrics_snapshot()["ws_subscriptions"] == 0


async def test_prepared_once_per_change(ws_server: WsServer, db: Database, make_user: Any,
                                        monkeypatch: Any) -> None:
    user = await make_user()
    token = await ws_server.login(user)
    clients = [await ws_server.connect(token) for _ in range(5)]
    for i, client in enumerate(clients):
        await client.subscribe(f"s{i}", db.name)
    factory = ws_server.service.factory
    prepared = record_first_arguments(monkeypatch, factory, "prepareMessage")
    await db.save({"_id": "once"})
    for client in clients:
        await client.next("change")
    assert len([p for p in prepared if b'"once"' in p]) == 1


async def test_distinct_options_get_distinct_feeds_and_unsubscribe_closes(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any
) -> None:
    user = await make_user()
    client = await ws_server.connect(await ws_server.login(user))
    a = await client.subscribe("a", db.name)
    b = await client.subscribe("b", db.name, include_docs=True)
    assert a["feed"] != b["feed"] and ws_server.feeds() == 2
    dup = await client.subscribe("c", db.name)
    assert dup["type"] == "error" and dup["error"] == "duplicate_subscription"
    client.send({"type": "subscribe", "id": "a", "db": db.name, "include_docs": True})
    again = await client.next("error")
    # Without the id: an error with an id would end the live subscription "a".
    assert again["error"] == "duplicate_id" and "id" not in again
    client.send({"type": "unsubscribe", "id": "b"})
    assert (await client.next("unsubscribed"))["id"] == "b"
    for _ in range(200):
        if ws_server.feeds() == 1:
            break
        await sleep(reactor, 0.01)
    assert ws_server.feeds() == 1
    await db.save({"_id": "x"})
    change = await client.next("change")
    assert change["feed"] == a["feed"]
    client.send({"type": "unsubscribe", "id": "nope"})
    err = await client.next("error")
    assert err["error"] == "not_subscribed" and err["id"] == "nope"
    client.send({"type": "ping", "data": "hi"})
    assert (await client.next("pong"))["data"] == "hi"


async def test_prepared_frames_bypass_autobahn_send_path_when_idle(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """F1: an open, uncompressed socket with an empty Autobahn send queue gets its frames
    written straight to the transport (no per-frame ``sendData`` debug formatting); a
    socket with queued Autobahn writes falls back to ``sendPreparedMessage`` (order kept)."""
    from gateway.ws.server import ChangesServerProtocol

    calls: list[int] = []
    original = ChangesServerProtocol.sendPreparedMessage

    def counting(self: Any, prepared: Any) -> None:
        calls.append(len(prepared.payloadHybi))
        original(self, prepared)

    monkeypatch.setattr(ChangesServerProtocol, "sendPreparedMessage", counting)
    user = await make_user()
    client = await ws_server.connect(await ws_server.login(user))
    answer = await client.subscribe("s1", db.name)
    assert answer["type"] == "subscribed", answer
    server_side = next(iter(ws_server.service.factory.connections))
    octets = server_side.trafficStats.outgoingOctetsWireLevel
    await db.save({"_id": "a"})
    change = await client.next("change")
    assert change["id"] == "a"
    assert calls == []  # subscribed + change: straight to the transport
    assert server_side.trafficStats.outgoingOctetsWireLevel > octets
    # With Autobahn's own queue non-empty, frames must go behind it.
    server_side.send_queue.append((b"", False))
    server_side._send_prepared(server_side.factory.prepareMessage(b'{"type":"pong"}'))
    assert len(calls) == 1
    await client.close()


async def test_a_batch_of_changes_goes_out_in_one_write(
    ws_server: WsServer, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """The changes of one upstream read reach an idle subscriber in one socket write,
    in order, each counted and the resume seq moved to the last one."""
    from gateway.ws import server as server_module
    from gateway.ws.hub import ChangeBatch, PreparedChange
    from gateway.ws.protocol import change_message, encode

    user = await make_user()
    client = await ws_server.connect(await ws_server.login(user))
    answer = await client.subscribe("s1", db.name)
    server_side = next(iter(ws_server.service.factory.connections))
    feed = next(iter(server_side.by_feed))
    writes: list[bytes] = []
    original = server_module.write_now  # type: ignore[attr-defined]

    def counting(transport: Any, data: bytes) -> None:
        writes.append(data)
        original(transport, data)

    monkeypatch.setattr(server_module, "write_now", counting)
    batch = ChangeBatch()
    for n in range(5):
        seq, doc_id = f"{n + 1}-opaque", f"b{n}"
        row: dict[str, Any] = {"seq": seq, "id": doc_id, "changes": [{"rev": f"1-{n}"}]}
        payload = encode(change_message(feed.id, row))
        message = server_side.factory.prepareMessage(payload)
        batch.append(PreparedChange(doc_id, f"1-{n}", seq, message, len(payload), 0.0))
    sent_before = ws_server.service.metrics_snapshot()["ws_messages_sent_total"]
    server_side.feed_changes(feed, batch)
    assert len(writes) == 1 and writes[0] == b"".join(c.message.payloadHybi for c in batch)
    got = await client.collect_changes(5)
    assert [c["id"] for c in got] == [f"b{n}" for n in range(5)]
    assert all(c["feed"] == answer["feed"] for c in got)
    assert server_side.subs["s1"].last_seq == "5-opaque"
    assert ws_server.service.metrics_snapshot()["ws_messages_sent_total"] - sent_before == 5
    await client.close()


def _record_send_phases(monkeypatch: Any) -> list[tuple[int, list[int]]]:
    """Each broadcast send loop of the hubs of servers started from now on: (frame
    size, bytes each socket took)."""
    phases: list[tuple[int, list[int]]] = []
    original = SendThreads.send_each

    def recording(self: SendThreads, sockets: Any, frame: bytes) -> list[int]:
        sent = original(self, sockets, frame)
        phases.append((len(frame), list(sent)))
        return sent

    monkeypatch.setattr(SendThreads, "send_each", recording)
    return phases


async def test_a_broadcast_goes_out_in_one_send_loop(
    make_server: Any, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """Every idle subscriber's frame is sent in one loop, and each is settled after it:
    resume seq moved, delivery counted."""
    phases = _record_send_phases(monkeypatch)
    ws_server: WsServer = await make_server()
    token = await ws_server.login(await make_user())
    clients = [await ws_server.connect(token) for _ in range(6)]
    for n, client in enumerate(clients):
        assert (await client.subscribe(f"s{n}", db.name))["type"] == "subscribed"
    before = ws_server.service.metrics_snapshot()
    sent_before = before["ws_messages_sent_total"]
    await db.save({"_id": "one"})
    changes = [await client.next("change") for client in clients]
    after = ws_server.service.metrics_snapshot()
    assert after["ws_fanout_seconds_count"] - before["ws_fanout_seconds_count"] == 1
    assert after["ws_fanout_seconds_sum"] > before["ws_fanout_seconds_sum"]
    assert {c["id"] for c in changes} == {"one"} and len({c["seq"] for c in changes}) == 1
    assert len(phases) == 1
    size, sent = phases[0]
    assert sent == [size] * 6
    seqs = {sub.last_seq for conn in ws_server.service.factory.connections
            for sub in conn.subs.values()}
    assert seqs == {changes[0]["seq"]}
    assert ws_server.service.metrics_snapshot()["ws_messages_sent_total"] - sent_before == 6


async def test_what_a_full_socket_does_not_take_follows_in_order(
    make_server: Any, db: Database, make_user: Any, monkeypatch: Any
) -> None:
    """A subscriber whose socket fills up mid-broadcast gets the rest of the frame, and
    every later change behind it, intact and in the feed's order."""
    phases = _record_send_phases(monkeypatch)
    _, slow, healthy = await slow_and_healthy_subscribers(make_server, make_user, db, 6)
    assert any(0 <= taken < size for size, sent in phases for taken in sent), phases
    slow.protocol.transport.resumeProducing()
    got = await slow.collect_changes(30)
    expected = [m["id"] for m in healthy.messages if m["type"] == "change"]
    assert [c["id"] for c in got] == expected
    assert all(c["doc"]["blob"] == BLOB for c in got)
