"""Closing and unsubscribing while a socket is backed up or CouchDB is being asked (code review, session 20).

Real pouchdb-server, real Autobahn server and clients on loopback sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

import gateway.ws.resume as resume_module
from gateway.couch import Database
from gateway.couch.transport import CouchTransport
from gateway.ws.protocol import CLOSE_GOING_AWAY
from tests.ws.conftest import (
    StopsReading,
    WsServer,
    replicate_in,
    sleep,
    wait_until,
    ws_settings,
)


async def _client_closing_while_its_socket_is_full(
    server: WsServer, db: Database, token: str, reactor: Any
) -> tuple[Any, Any]:
    """A client that stopped reading, then sent a Close frame.

    The server answers the Close and asks Twisted to lose the connection, which waits for
    a send buffer that never drains: the connection stays in ``factory.connections``,
    open for the gateway (``_open``), but CLOSING for Autobahn.
    """
    stuck = await server.connect(token, protocol=StopsReading)
    stuck.send({"type": "subscribe", "id": "s", "db": db.name, "include_docs": True})
    for _ in range(300):
        if any("s" in c.subs and c.subs["s"].feed is not None
               for c in server.service.factory.connections):
            break
        await sleep(reactor, 0.01)
    await sleep(reactor, 0.2)
    (conn,) = [c for c in server.service.factory.connections if "s" in c.subs]
    blob = "x" * 16000
    batch = 0
    while not conn._paused:  # the kernel's buffers and Twisted's are full
        await db.bulk_save([{"_id": f"pre{batch}-{i}", "blob": blob} for i in range(20)])
        batch += 1
        await sleep(reactor, 0.05)
        assert batch < 400
    # An attacker's client never gives up on the close handshake itself.
    stuck.protocol.closeHandshakeTimeout = 0
    stuck.protocol.sendClose(1000)  # writing still works: only reading stopped
    for _ in range(200):
        if conn.state != conn.STATE_OPEN:
            break
        await sleep(reactor, 0.01)
    assert conn.state != conn.STATE_OPEN and conn._open and conn in server.service.factory.connections
    return stuck, conn


async def test_shutdown_survives_a_connection_whose_client_closed_but_never_read(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """``ChangesService.stopService`` calls ``end()`` on every connection; ``end()`` calls
    Autobahn's ``sendMessage``, which raises ``Disconnected`` on a CLOSING connection.
    The shutdown then fails: the other clients never get ``closing`` with their resume
    seqs and 1001, and the upstream feeds are never stopped (docs/deployment.md: SIGTERM
    closes the open WebSockets with ``closing`` and 1001)."""
    server: WsServer = await make_server(
        ws_settings(ws_queue_bytes=64 * 1024 * 1024, shutdown_grace=1.0),
        socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    healthy = await server.connect(token)
    await healthy.subscribe("h", db.name)
    _stuck, conn = await _client_closing_while_its_socket_is_full(server, db, token, reactor)
    failure: list[BaseException] = []
    try:
        await server.service.stopService()
    except Exception as exc:
        failure.append(exc)
    finally:
        if failure:  # what the failed shutdown left behind, so the session goes on
            conn.transport.abortConnection()
            await server.service.hub.stopService()
    assert not failure, f"stopService failed: {failure[0]!r}"
    _clean, code, _reason = await healthy.protocol.closed
    closing = [m for m in healthy.messages if m["type"] == "closing"]
    assert code == CLOSE_GOING_AWAY and closing and "h" in closing[0]["resume"]
    # docs/websocket.md: sockets that do not finish the close handshake within
    # WALLABY_SHUTDOWN_GRACE are dropped.
    assert conn not in server.service.factory.connections and not conn.transport.connected


async def test_a_connection_its_client_closed_while_backed_up_is_still_released(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """The same connection keeps being fed changes. Once its queue passes the budget,
    ``_close_slow`` → ``end()`` clears the queue, then Autobahn's ``sendMessage`` raises
    ``Disconnected`` before ``_ending`` is set: logged as "subscriber failed to take
    changes" at every overflow, and nothing ever closes the socket (the server's
    ``loseConnection`` waits for a client that never reads; no close-handshake timer runs
    for a close the client started). A slow consumer is otherwise cut within ~2 s
    (docs/websocket.md "Slow consumers"); this one holds its socket, buffers,
    subscription and upstream feed for as long as the client likes."""
    budget = 256 * 1024
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=budget),
                                         socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    _stuck, conn = await _client_closing_while_its_socket_is_full(server, db, token, reactor)
    try:
        blob = "y" * 16000
        for batch in range(30):  # 9.6 MB of distinct documents: ~37 budgets
            await db.bulk_save([{"_id": f"post{batch}-{i}", "blob": blob} for i in range(20)])
            await sleep(reactor, 0.05)
        for _ in range(500):  # 5 s more: twice Autobahn's close-handshake timeout
            if conn not in server.service.factory.connections:
                break
            await sleep(reactor, 0.01)
        still_there = conn in server.service.factory.connections
        overflowed = server.service.metrics.slow_closed
    finally:
        conn.transport.abortConnection()
    assert overflowed >= 1
    assert not still_there, (
        f"still held {overflowed} budget overflows later (subscriptions: {list(conn.subs)})")




_AAA, _BBB = ("2-" + c * 32 for c in "ab")


async def test_no_change_follows_unsubscribed_while_a_resume_asks_couchdb(
    ws_server: WsServer, db: Database, make_user: Any, reactor: Any, monkeypatch: Any
) -> None:
    """``ChangesServerProtocol._settle`` asks CouchDB whether a buffered row of another
    revision is current (``_still_current``). When the answer is "no" it ``continue``s
    *before* re-checking that the subscription is still active, so the rows buffered
    behind it are delivered for a subscription the client has already ended:
    ``change`` messages after ``unsubscribed`` (and, the same way, after
    ``access_revoked``, when the access check refused between the re-check and the
    ``_all_docs`` answer)."""
    await db.save({"_id": "other"})
    token = await ws_server.login(await make_user())
    watcher = await ws_server.connect(token)
    await watcher.subscribe("w", db.name)  # the shared feed runs
    original_fetch, raced = resume_module.fetch_changes, []

    async def racing_fetch(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            # W@2-aaa then W@2-bbb (the winner) reach the join's buffer; the catch-up,
            # read after both, sends W@2-bbb: the buffered 2-aaa is to be checked.
            await replicate_in(db, watcher, "W", _AAA, _BBB)
            result = await original_fetch(*args, **kwargs)
            await db.save({"_id": "late"})  # buffered behind them: a new document
            assert (await watcher.next("change"))["id"] == "late"
            return result
        return await original_fetch(*args, **kwargs)

    asked: list[bool] = []
    release: Deferred[None] = Deferred()
    original_request = CouchTransport.request

    async def holding_request(self: CouchTransport, method: str, segments: Any,
                              *args: Any, **kwargs: Any) -> Any:
        if method == "POST" and list(segments)[-1:] == ["_all_docs"] and not asked:
            asked.append(True)
            await release  # the client unsubscribes meanwhile
        return await original_request(self, method, segments, *args, **kwargs)

    monkeypatch.setattr(resume_module, "fetch_changes", racing_fetch)
    monkeypatch.setattr(CouchTransport, "request", holding_request)
    client = await ws_server.connect(token)
    await client.subscribe("s", db.name, since=0)
    for _ in range(1000):
        if asked:
            break
        await sleep(reactor, 0.01)
    assert asked, "the join never asked CouchDB about the stale row"
    client.send({"type": "unsubscribe", "id": "s"})
    await client.next("unsubscribed")
    ended_at = len(client.messages)
    release.callback(None)
    await sleep(reactor, 1.0)
    after = [(m["id"], m["changes"][0]["rev"]) for m in client.messages[ended_at:]
             if m["type"] == "change"]
    assert after == [], f"changes sent after 'unsubscribed': {after}"


async def test_a_handshake_that_finishes_after_the_shutdown_began_is_closed_too(
    ws_server: WsServer, make_user: Any, reactor: Any
) -> None:
    """A handshake whose credentials were being checked when SIGTERM's shutdown listed
    the connections to close opened afterwards: it got no ``closing`` and no 1001, and
    was cut only when the process ended."""
    token = await ws_server.login(await make_user())
    factory = ws_server.service.factory
    checking, release = Deferred[None](), Deferred[None]()
    original = factory.authenticate

    async def slow_check(*args: Any) -> Any:
        checking.callback(None)
        await release
        return await original(*args)

    factory.authenticate = slow_check
    connecting = Deferred.fromCoroutine(ws_server.connect(token))
    await checking
    stopping = Deferred.fromCoroutine(ws_server.service._shutdown())
    release.callback(None)
    client = await connecting
    _clean, code, _reason = await client.protocol.closed
    await stopping
    assert code == CLOSE_GOING_AWAY
    assert [m["type"] for m in client.messages] == ["closing"]


async def test_a_client_that_closed_and_stopped_reading_is_cut_without_more_changes(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """The graceful drop after a close handshake the client began waits for a send
    buffer that never drains: past the close-handshake timeout (2 s) the connection must
    be aborted even when no more changes come (nothing calls ``end()``)."""
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=64 * 1024 * 1024),
                                         socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    _stuck, conn = await _client_closing_while_its_socket_is_full(server, db, token, reactor)
    try:
        await wait_until(reactor, lambda: conn not in server.service.factory.connections, 6.0)
        await wait_until(reactor, lambda: server.feeds() == 0, 3.0)
    finally:
        if conn.transport is not None:
            conn.transport.abortConnection()


async def test_shutdown_cuts_a_client_that_closed_and_stopped_reading_at_once(
    make_server: Any, db: Database, make_user: Any, reactor: Any
) -> None:
    """``end()`` on a connection whose client began the close handshake cannot send
    ``closing``: it aborts at once instead of leaving the shutdown waiting for the
    close-handshake timeout."""
    server: WsServer = await make_server(ws_settings(ws_queue_bytes=64 * 1024 * 1024),
                                         socket_send_buffer=16 * 1024)
    token = await server.login(await make_user())
    _stuck, conn = await _client_closing_while_its_socket_is_full(server, db, token, reactor)
    started = reactor.seconds()
    conn.end(1001, "server shutting down")
    await wait_until(reactor, lambda: conn not in server.service.factory.connections, 4.0)
    assert reactor.seconds() - started < 1.0


async def test_nothing_is_sent_after_the_close_frame(
    ws_server: WsServer, make_user: Any, db: Database, reactor: Any
) -> None:
    """RFC 6455 5.5.1: after sending a Close frame an endpoint must not send more data
    frames. A feed notice arriving while the server's close handshake is under way
    (here: right after ``end()``) must not be written."""
    client = await ws_server.connect(await ws_server.login(await make_user()))
    assert (await client.subscribe("s", db.name))["type"] == "subscribed"
    (conn,) = list(ws_server.service.factory.connections)
    feed = conn.subs["s"].feed
    conn.end(1001, "server shutting down")
    sent = ws_server.service.metrics.messages_sent
    ws_server.service.hub._on_state(feed, "interrupted", "CouchDB went away")
    assert ws_server.service.metrics.messages_sent == sent
    await wait_until(reactor, lambda: client.protocol.closed.called, 5.0)
    assert [m["type"] for m in client.messages] == ["subscribed", "closing"]
