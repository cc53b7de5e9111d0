"""Zero-copy downloads (gateway.http.splice_relay): the loop on socket pairs, and the
gateway's attachment route against the real server, with real client sockets."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from gateway.errors import ClientStalled, CouchTimeout, CouchUnreachable
from gateway.http.splice_loop import (
    ClientGone,
    Progress,
    SpliceStalled,
    SpliceStopped,
    UpstreamClosed,
    available,
    splice_loop,
)
from gateway.http.splice_relay import _download_error, _Upload
from tests.rest.conftest import RunningGateway, Scenario, StartGateway, basic
from tests.support.faultproxy import FaultProxy
from tests.ws.conftest import wait_until

pytestmark = pytest.mark.skipif(not available(), reason="splice(2) is Linux-only")

MIB = 1 << 20


# -- the loop, on socket pairs -------------------------------------------------


def _pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(upstream writer, upstream end read by the loop, client end written, client reader)."""
    up_writer, up_end = socket.socketpair()
    client_end, client_reader = socket.socketpair()
    up_end.setblocking(False)
    client_end.setblocking(False)
    up_writer.settimeout(10)
    client_reader.settimeout(10)
    return up_writer, up_end, client_end, client_reader


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_the_loop_runs_without_a_reactor() -> None:
    """The loop is plain descriptor I/O for a worker thread: importing it loads no
    network framework, so it tests (as below) on bare socket pairs."""
    probe = ("import sys, gateway.http.splice_loop; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'twisted', 'autobahn', 'klein', 'treq', 'zope'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]", loaded


def test_loop_moves_exactly_the_length_and_leaves_the_rest() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    payload = os.urandom(5 * MIB + 123)
    extra = b"next response"
    writer, _ = _in_thread(lambda: up_writer.sendall(payload + extra))
    reader, received = _in_thread(lambda: _read_all(client_reader))
    progress = Progress()
    try:
        assert splice_loop(up_end.fileno(), client_end.fileno(), len(payload),
                           progress=progress) == len(payload)
        client_end.close()
        reader.join(10)
        writer.join(10)
        assert received[0] == payload
        assert progress.sent == progress.received == len(payload)
        up_end.setblocking(True)
        assert up_end.recv(100) == extra  # not read past the length
    finally:
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()


def test_loop_fails_when_the_upstream_ends_early() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    try:
        up_writer.sendall(b"x" * 1000)
        up_writer.close()
        progress = Progress()
        with pytest.raises(UpstreamClosed):
            splice_loop(up_end.fileno(), client_end.fileno(), 5000, progress=progress)
        assert progress.sent == 1000
    finally:
        for sock in (up_end, client_end, client_reader):
            sock.close()


@contextlib.contextmanager
def _source_reset_midway() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(source end, destination end): 100 kB came on the source TCP socket, then a reset."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname(), timeout=10)
    src_end, _ = listener.accept()
    dst_end, dst_reader = socket.socketpair()
    try:
        src_end.setblocking(False)
        dst_end.setblocking(False)
        sender.sendall(os.urandom(100_000))
        time.sleep(0.1)
        # The sender (CouchDB, a proxy in between, or the client) resets in the middle.
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sender.close()
        time.sleep(0.1)
        yield src_end, dst_end
    finally:
        for sock in (listener, src_end, dst_end, dst_reader):
            sock.close()


def test_an_upstream_reset_midway_is_the_upstream_breaking_off() -> None:
    """Mapped as the Python relay maps the same fault (spill.lost_midway)."""
    with _source_reset_midway() as (up_end, client_end), pytest.raises(Exception) as raised:
        splice_loop(up_end.fileno(), client_end.fileno(), 5_000_000, stall_timeout=3)
    assert isinstance(raised.value, UpstreamClosed), repr(raised.value)
    mapped = _download_error(Failure(raised.value)).value  # type: ignore[no-untyped-call]
    assert isinstance(mapped, CouchUnreachable) and mapped.error == "upstream_unavailable"


def test_a_client_reset_midway_of_an_upload_is_the_client_going() -> None:
    """An upload's source is the client: its reset is not the upstream's (_Upload aborts
    the client connection for it, and answers nothing)."""
    with _source_reset_midway() as (client_end, up_end), pytest.raises(Exception) as raised:
        splice_loop(client_end.fileno(), up_end.fileno(), 5_000_000, stall_timeout=3,
                    src_peer=_Upload.src_peer, dst_peer=_Upload.dst_peer)
    assert type(raised.value) is ClientGone, repr(raised.value)
    assert isinstance(raised.value.__cause__, ConnectionResetError)
    assert str(raised.value).startswith("the client failed after 100000 of 5000000 bytes")


def test_loop_fails_when_the_client_goes_away() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    writer, _ = _in_thread(lambda: _send_quietly(up_writer, os.urandom(8 * MIB)))
    try:
        client_reader.close()
        with pytest.raises((ClientGone, BrokenPipeError, ConnectionResetError)):
            splice_loop(up_end.fileno(), client_end.fileno(), 8 * MIB)
    finally:
        for sock in (up_writer, up_end, client_end):
            sock.close()
        writer.join(10)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_loop_stops_when_woken() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    timer = threading.Timer(0.2, os.eventfd_write, (wake, 1))
    timer.start()
    try:
        started = time.monotonic()
        with pytest.raises(SpliceStopped):
            splice_loop(up_end.fileno(), client_end.fileno(), MIB, wake=wake)
        assert time.monotonic() - started < 5
    finally:
        timer.join()
        os.close(wake)
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()


def test_loop_gives_up_without_progress() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    try:
        up_writer.sendall(b"y" * 100)
        with pytest.raises(SpliceStalled) as stalled:
            splice_loop(up_end.fileno(), client_end.fileno(), MIB, stall_timeout=0.2)
        assert not stalled.value.destination  # the client took all; the upstream went quiet
        assert stalled.value.seconds == 0.2
    finally:
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()


def test_loop_tells_a_client_that_takes_nothing_from_a_quiet_upstream() -> None:
    up_writer, up_end, client_end, client_reader = _pairs()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer, _ = _in_thread(lambda: _send_quietly(up_writer, os.urandom(8 * MIB)))
    try:
        with pytest.raises(SpliceStalled) as stalled:
            splice_loop(up_end.fileno(), client_end.fileno(), 8 * MIB, stall_timeout=0.2)
        assert stalled.value.destination
    finally:
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()
        writer.join(10)


def test_a_busy_loop_stops_once_woken() -> None:
    """A transfer whose sockets are always ready never reaches poll(): the wake-up
    (a cancel, the shutdown's deadline) must be looked at after every move, or a fast
    transfer of gigabytes cannot be stopped until it ends."""
    up_writer, up_end, client_end, client_reader = _pairs()
    wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        data = os.urandom(64 * 1024)
        up_writer.sendall(data)  # all of it is ready, and the client has room for it
        os.eventfd_write(wake, 1)  # stopped before the loop even began
        progress = Progress()
        with pytest.raises(SpliceStopped):
            splice_loop(up_end.fileno(), client_end.fileno(), len(data), wake=wake,
                        stall_timeout=5, progress=progress)
        assert progress.sent < len(data)
    finally:
        os.close(wake)
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()


def test_waiting_for_a_full_client_does_not_spin_on_a_readable_upstream() -> None:
    """While bytes wait in the pipe for the client, only the client's writability may
    wake the loop: an upstream that has more to give must not turn the wait into a busy
    loop burning a core until the stall timeout."""
    up_writer, up_end, client_end, client_reader = _pairs()  # client_reader never reads
    out: dict[str, object] = {}

    def run() -> None:
        start = time.thread_time()
        try:
            splice_loop(up_end.fileno(), client_end.fileno(), 64 << 20, stall_timeout=1.5)
        except Exception as exc:
            out["error"] = exc
        out["cpu"] = time.thread_time() - start

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    time.sleep(0.2)  # the loop waits for the upstream first (it registers it for reading)
    feeder, _ = _in_thread(lambda: _send_quietly(up_writer, os.urandom(8 << 20)))
    loop.join(20)
    try:
        assert not loop.is_alive()
        assert isinstance(out.get("error"), SpliceStalled), out
        assert out["error"].destination is True  # type: ignore[attr-defined]
        assert out["cpu"] < 0.2, f"the wait burnt {out['cpu']:.2f} s of CPU"  # type: ignore[operator]
    finally:
        for sock in (up_writer, up_end, client_end, client_reader):
            sock.close()
        feeder.join(5)


def test_a_client_leaving_while_the_upstream_is_quiet_ends_the_loop_at_once() -> None:
    """Waiting for the upstream, the loop still watches the client for a hang-up: a
    client gone during CouchDB's pause is ClientGone now, not a busy wait (poll reports
    the hang-up at once, every time) until the stall timeout."""
    up_writer, up_end, client_end, client_reader = _pairs()
    out: dict[str, object] = {}

    def run() -> None:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            splice_loop(up_end.fileno(), client_end.fileno(), 1 << 20, stall_timeout=5)
        except Exception as exc:
            out["error"] = exc
        out["seconds"], out["cpu"] = time.monotonic() - start, time.thread_time() - cpu

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    try:
        up_writer.sendall(b"x" * 1000)  # a little, then CouchDB pauses
        time.sleep(0.3)
        client_reader.close()  # the client leaves meanwhile
        loop.join(10)
        assert not loop.is_alive()
        assert isinstance(out.get("error"), ClientGone), out
        assert out["seconds"] < 2 and out["cpu"] < 0.2, out  # type: ignore[operator]
    finally:
        for sock in (up_writer, up_end, client_end):
            sock.close()


def test_a_spliced_downloads_failures_are_the_python_relays() -> None:
    """The access log and the error metrics name the same culprit on both paths."""

    def mapped(exc: Exception) -> BaseException:
        return _download_error(Failure(exc)).value  # type: ignore[no-untyped-call]

    client = mapped(SpliceStalled("x", seconds=3, destination=True))
    assert isinstance(client, ClientStalled) and client.error == "client_stalled"
    assert "3 s" in str(client)
    quiet = mapped(SpliceStalled("x", seconds=3, destination=False))
    assert isinstance(quiet, CouchTimeout) and quiet.error == "upstream_timeout"
    lost = mapped(UpstreamClosed("closed"))
    assert type(lost) is CouchUnreachable and lost.error == "upstream_unavailable"
    assert isinstance(lost.__cause__, UpstreamClosed)
    gone = ClientGone("hung up")
    assert mapped(gone) is gone


# -- through the gateway ---------------------------------------------------------


def _fds() -> Counter[str]:
    """This process's descriptors by kind (pipe, eventfd, socket, ...)."""
    kinds: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0].replace("anon_inode", "anon:" + target[-9:-1])] += 1
    return kinds


def _connections_to(port: int) -> set[int]:
    """Inodes of this process's established TCP connections to ``port`` on loopback."""
    mine = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(int(target[8:-1]))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                inode = int(fields[9])
                if fields[3] == "01" and remote_port == port and inode in mine:
                    found.add(inode)
    return found


def _thread(reactor: Any, call: Callable[[], Any]) -> Deferred[Any]:
    return deferToThreadPool(reactor, reactor.getThreadPool(), call)


async def _attachment(scenario: Scenario, name: str, payload: bytes) -> str:
    base = f"/api/v1/db/{scenario.db.name}/docs/{name}"
    made = await scenario.member_client.put(base, json_body={"kind": "splice"})
    url = f"{base}/attachments/blob"
    up = await scenario.member_client.put(
        f"{url}?rev={made.json['rev']}", data=payload,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert up.status == 201
    return url


def _auth(scenario: Scenario) -> dict[str, str]:
    return basic(scenario.member.name, scenario.member.password)


def _raw_get(scenario: Scenario, url: str) -> bytes:
    """The member's GET of ``url``, to send on a socket of one's own."""
    return (f"GET {url} HTTP/1.1\r\nHost: gateway\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in _auth(scenario).items()) + "\r\n").encode()


def _port(gateway: RunningGateway) -> int:
    return urlsplit(gateway.url).port or 80


async def test_large_download_is_spliced_intact_and_keep_alive_goes_on(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    payload = os.urandom(6 * MIB + 7)
    url = await _attachment(scenario, "big", payload)
    splicer = gateway.app.splicer
    before = splicer.spliced

    def twice() -> tuple[int, str | None, bytes, int, bytes, bool]:
        conn = http.client.HTTPConnection("127.0.0.1", _port(gateway), timeout=30)
        try:
            conn.request("GET", url, headers=_auth(scenario))
            first = conn.getresponse()
            body = first.read()
            sock = conn.sock
            conn.request("GET", url.rsplit("/attachments", 1)[0], headers=_auth(scenario))
            second = conn.getresponse()
            return (first.status, first.getheader("Content-Length"), body, second.status,
                    second.read(), conn.sock is sock)
        finally:
            conn.close()

    status, length, body, status2, doc, same_connection = await _thread(reactor, twice)
    assert status == 200 and length == str(len(payload))
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    assert splicer.spliced == before + 1 and splicer.failed == 0
    assert status2 == 200 and b'"kind":"splice"' in doc.replace(b" ", b"")
    assert same_connection, "the keep-alive connection was closed after the spliced body"
    await wait_until(reactor, lambda: splicer.active == 0, 15.0)
    assert splicer.bytes_spliced > 0
    metrics = await gateway.client.get("/metrics")
    assert f"wallaby_spliced_downloads_total {splicer.spliced}" in metrics.body.decode()


async def test_small_bodies_and_offset_ranges_use_the_python_relay(
    scenario: Scenario, gateway: RunningGateway
) -> None:
    client, splicer = scenario.member_client, gateway.app.splicer
    small = os.urandom(200_000)
    small_url = await _attachment(scenario, "small", small)
    big = os.urandom(3 * MIB)
    big_url = await _attachment(scenario, "big", big)
    before = splicer.spliced

    down = await client.get(small_url)
    assert down.status == 200 and down.body == small
    part = await client.get(big_url, headers={"Range": f"bytes=10-{2 * MIB}"})
    assert part.status == 206 and part.body == big[10 : 2 * MIB + 1]
    assert splicer.spliced == before  # neither was worth (or able) to splice

    # A range from the start is the body cut short: spliced, then the upstream dropped.
    head = await client.get(big_url, headers={"Range": f"bytes=0-{2 * MIB - 1}"})
    assert head.status == 206 and head.body == big[: 2 * MIB]
    assert head.header("Content-Range") == f"bytes 0-{2 * MIB - 1}/{len(big)}"
    assert splicer.spliced == before + 1 and splicer.failed == 0
    again = await client.get(big_url)
    assert again.status == 200 and again.body == big


async def test_client_leaving_midway_ends_the_transfer_and_leaks_nothing(
    scenario: Scenario, gateway: RunningGateway, reactor: Any, couch_backend: Any
) -> None:
    payload = os.urandom(48 * MIB)
    url = await _attachment(scenario, "huge", payload)
    splicer = gateway.app.splicer
    couch_port = urlsplit(couch_backend.url).port or 80
    await scenario.member_client.get(url.rsplit("/attachments", 1)[0])  # warm the pool
    fds_before = _fds()
    spliced, failed = splicer.spliced, splicer.failed
    during: set[int] = set()
    request = _raw_get(scenario, url)

    def read_a_little_then_leave() -> int:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(request)
            got = 0
            while got < 2 * MIB:
                got += len(sock.recv(1 << 16))
            during.update(_connections_to(couch_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return got

    assert await _thread(reactor, read_a_little_then_leave) >= 2 * MIB
    await wait_until(reactor, lambda: splicer.active == 0, 15.0)
    assert splicer.spliced == spliced + 1 and splicer.failed == failed + 1
    assert during, "no upstream connection seen during the download"
    # abortConnection closes the socket on the next reactor turn, not at once.
    await wait_until(reactor, lambda: not during <= _connections_to(couch_port), 15.0)
    await wait_until(reactor, lambda: _fds()["pipe"] == fds_before["pipe"]
                     and _fds()["anon:eventfd"] == fds_before["anon:eventfd"], 15.0)
    # The gateway goes on serving, spliced downloads included.
    again = await scenario.member_client.get(url)
    assert again.status == 200 and len(again.body) == len(payload)
    assert hashlib.sha256(again.body).digest() == hashlib.sha256(payload).digest()
    assert splicer.spliced == spliced + 2


async def test_an_upstream_reset_midway_is_logged_and_counted_as_upstream_unavailable(
    scenario: Scenario, start_gateway: StartGateway, proxy: FaultProxy, reactor: Any
) -> None:
    """CouchDB (or a proxy in between) resets the connection in the middle of a spliced
    download: the access line and ``wallaby_errors_total`` say ``upstream_unavailable``,
    as for the same fault in the Python relay."""
    from twisted.logger import capturedLogs

    payload = os.urandom(8 * MIB)
    url = await _attachment(scenario, "reset", payload)
    gateway = await start_gateway(couchdb_url=proxy.url)
    splicer = gateway.app.splicer
    assert (await gateway.as_user(scenario.member).get(
        url.rsplit("/attachments", 1)[0])).status == 200  # the user is checked
    proxy.stall_after(2 * MIB)  # CouchDB sends 2 MiB, then the connection resets
    request = _raw_get(scenario, url)
    halfway, go = threading.Event(), threading.Event()

    def read_until_cut() -> int:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.sendall(request)
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 16):
                    got += len(chunk)
                    if got > MIB:
                        halfway.set()
                        go.wait(20)
        return got

    with capturedLogs() as events:
        reading = _thread(reactor, read_until_cut)
        await wait_until(reactor, lambda: halfway.is_set() and splicer.active == 1, 15.0)
        proxy.reset_all()
        go.set()
        got = await reading
        await wait_until(reactor, lambda: any(
            isinstance(e.get("access"), dict) and e["access"]["path"] == url for e in events),
            15.0)
    assert got < len(payload)  # headers included: the body was cut short
    assert splicer.spliced == 1 and splicer.failed == 1
    [line] = [e["access"] for e in events
              if isinstance(e.get("access"), dict) and e["access"]["path"] == url]
    assert line["aborted"] is True and line["error"] == "upstream_unavailable", line
    metrics = (await gateway.client.get("/metrics")).body.decode()
    assert 'wallaby_errors_total{route="getAttachment",error="upstream_unavailable"} 1' in metrics, [
        row for row in metrics.splitlines() if row.startswith("wallaby_errors_total")]


async def test_a_stalled_client_is_cut_off_and_the_request_ends(
    scenario: Scenario, gateway: RunningGateway, reactor: Any
) -> None:
    payload = os.urandom(48 * MIB)
    url = await _attachment(scenario, "stalled", payload)
    splicer = gateway.app.splicer
    splicer.stall_timeout = 0.5
    failed = splicer.failed
    go = threading.Event()
    request = _raw_get(scenario, url)

    def send_then_wait() -> int:
        with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sock.sendall(request)
            go.wait(20)
            got = 0
            try:
                while chunk := sock.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            return got

    reading = _thread(reactor, send_then_wait)
    await wait_until(reactor, lambda: splicer.failed == failed + 1, 15.0)
    go.set()
    got = await reading
    assert got < len(payload)  # headers included, the body was cut short
    assert splicer.active == 0
    splicer.stall_timeout = 60.0
    ok = await scenario.member_client.get(url)
    assert ok.status == 200 and len(ok.body) == len(payload)


async def test_splice_can_be_turned_off(
    scenario: Scenario, start_gateway: StartGateway
) -> None:
    """``WALLABY_SPLICE_DOWNLOADS=false``: the same large download, all through Python."""
    plain = await start_gateway(splice_downloads=False)
    payload = os.urandom(2 * MIB + 3)
    url = await _attachment(scenario, "plain", payload)
    down = await plain.as_user(scenario.member).get(url)
    assert down.status == 200 and down.body == payload
    assert plain.app.splicer.spliced == 0 and plain.app.splicer.failed == 0
