"""Edges of spliced downloads (gateway.http.splice_relay) the README and the docstrings
state: the 1 MiB boundary, at most 4 at once, the access line's byte count, a range cut
inside the first read, and the shutdown's grace and close."""

from __future__ import annotations

import http.client
import os
import socket
from typing import Any

import pytest
from twisted.logger import capturedLogs

from gateway.http.splice_loop import MIN_SPLICE_BYTES, available
from tests.rest.conftest import RunningGateway, Scenario
from tests.rest.test_splice_relay import (
    MIB,
    _attachment,
    _auth,
    _port,
    _raw_get,
    _thread,
)
from tests.ws.conftest import wait_until

pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")


async def test_a_body_of_exactly_one_mib_is_spliced_and_one_byte_less_is_not(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """README: downloads "of 1 MiB or more" are spliced (the boundary itself included)."""
    assert MIN_SPLICE_BYTES == MIB
    splicer = gateway.app.splicer
    exact = os.urandom(MIB)
    below = os.urandom(MIB - 1)
    exact_url = await _attachment(scenario, "exact", exact)
    below_url = await _attachment(scenario, "below", below)
    before = splicer.spliced

    down = await scenario.member_client.get(below_url)
    assert down.status == 200 and down.body == below
    assert splicer.spliced == before, "a body under 1 MiB was spliced"

    down = await scenario.member_client.get(exact_url)
    assert down.status == 200 and down.body == exact
    assert splicer.spliced == before + 1, "a body of exactly 1 MiB was not spliced"
    await wait_until(reactor, lambda: splicer.active == 0, seconds=15)


async def test_at_most_four_downloads_splice_at_once(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """README: "at most 4 at once; others go through the Python relay"."""
    splicer = gateway.app.splicer
    assert splicer.max_active == 4
    payload = os.urandom(24 * MIB)
    url = await _attachment(scenario, "held", payload)
    request = _raw_get(scenario, url)
    before = splicer.spliced
    held: list[socket.socket] = []
    try:
        for _ in range(4):  # four clients that take (almost) nothing: four running splices
            sock = socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
            sock.sendall(request)
            held.append(sock)
        await wait_until(reactor, lambda: splicer.active == 4 and splicer.spliced == before + 4, seconds=15)

        fifth = await scenario.member_client.get(url)
        assert fifth.status == 200 and fifth.body == payload
        assert splicer.spliced == before + 4, "a fifth download was spliced while 4 ran"
    finally:
        for sock in held:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
    await wait_until(reactor, lambda: splicer.active == 0, seconds=15)


async def test_a_spliced_download_is_logged_with_all_its_bytes_and_not_aborted(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """The access log's ``bytes_sent`` counts the spliced bytes too (Request.sentLength),
    so a complete spliced download is not logged as cut short (request._truncated)."""

    payload = os.urandom(4 * MIB + 5)
    url = await _attachment(scenario, "logged", payload)
    splicer = gateway.app.splicer
    before = splicer.spliced
    with capturedLogs() as events:
        down = await scenario.member_client.get(url)
        await wait_until(reactor, lambda: any(
            isinstance(e.get("access"), dict) and e["access"]["path"].endswith("/blob")
            and e["access"]["method"] == "GET" for e in events), seconds=15)
    assert down.status == 200 and down.body == payload
    assert splicer.spliced == before + 1
    [line] = [e["access"] for e in events if isinstance(e.get("access"), dict)
              and e["access"]["path"].endswith("/blob") and e["access"]["method"] == "GET"]
    assert line["status"] == 200 and line["aborted"] is False, line
    assert line["bytes_sent"] == len(payload), line


async def test_a_spliced_range_shorter_than_the_first_read_sends_only_the_range(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """pouchdb-server ignores Range: the gateway cuts the body at ``limit``. With a
    small ``min_bytes`` (a constructor argument of Splicer) the cut falls inside the
    bytes Twisted read with the headers: only the range may go out, and the keep-alive
    connection must stay in step."""
    big = os.urandom(3 * MIB)
    url = await _attachment(scenario, "ranged", big)
    splicer = gateway.app.splicer
    before = splicer.spliced
    splicer.min_bytes = 1
    try:
        def ranged_then_doc() -> tuple[int, bytes, int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", _port(gateway), timeout=30)
            try:
                conn.request("GET", url, headers={**_auth(scenario), "Range": "bytes=0-99"})
                first = conn.getresponse()
                body = first.read()
                conn.request("GET", url.rsplit("/attachments", 1)[0], headers=_auth(scenario))
                second = conn.getresponse()
                return first.status, body, second.status, second.read()
            finally:
                conn.close()

        status, body, status2, doc = await _thread(reactor, ranged_then_doc)
    finally:
        splicer.min_bytes = MIB
    assert splicer.spliced == before + 1  # the splice path was taken
    assert status == 206 and body == big[:100]
    assert status2 == 200 and b'"kind":"splice"' in doc.replace(b" ", b"")
    await wait_until(reactor, lambda: splicer.active == 0, seconds=15)


async def test_a_transfer_begun_during_the_shutdown_grace_is_stopped_at_its_end(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """Splicer.start_grace: "so do transfers that begin later" -- a spliced download that
    starts after the grace began is stopped ``shutdown_grace`` seconds later, or the
    shutdown waits (Splicer.idle) for a client that reads nothing."""
    payload = os.urandom(24 * MIB)
    url = await _attachment(scenario, "late", payload)
    splicer = gateway.app.splicer
    failed, grace = splicer.failed, splicer.shutdown_grace
    request = _raw_get(scenario, url)
    splicer.shutdown_grace = 0.5
    splicer.start_grace()  # nothing runs yet
    sock = socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        sock.sendall(request)  # a client that takes (almost) nothing
        await wait_until(reactor, lambda: splicer.failed == failed + 1, seconds=10)
        await wait_until(reactor, lambda: splicer.active == 0, seconds=15)
        idle = splicer.idle()
        await wait_until(reactor, lambda: idle.called, seconds=2)
    finally:
        splicer._grace_started = False
        splicer.shutdown_grace = grace
        sock.close()


async def test_no_splice_thread_starts_once_the_splicer_is_closed(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    """Splicer.close: "a transfer not yet spliced is not, from now on" (its thread would
    run while the reactor stops)."""
    payload = os.urandom(3 * MIB)
    url = await _attachment(scenario, "closed", payload)
    splicer = gateway.app.splicer
    moved = splicer.bytes_spliced
    splicer.close()
    try:
        await scenario.member_client.get(url)  # cut short or not: no thread may run
    except Exception:
        pass
    finally:
        await wait_until(reactor, lambda: splicer.active == 0, seconds=15)
        splicer.closed = False
    assert splicer.bytes_spliced == moved, "a splice thread ran after Splicer.close()"
