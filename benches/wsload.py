"""A lean load client: many WebSocket subscribers (or direct ``_changes`` feeds) in one process.

Not run by hand: :mod:`benches.fanout` and :mod:`benches.reconnect` start it as a child
process and drive it with one JSON command per line on stdin; it answers one JSON line
per command on stdout. Raw asyncio (uvloop when installed), a minimal WebSocket client
(handshake, masked client frames, unmasked server frames, pong), no JSON decoding on the
hot path: every received frame or chunk is timestamped with ``time.monotonic()`` (the
same clock as the writer's acknowledgements, system-wide) and the writer's document
number is pulled out with one regex. Everything is bounded: connections time out, and
the process exits when stdin closes or after ``--max-seconds``.

Modes:
- ``ws``: ``GET /api/v1/changes`` upgrade with ``Authorization``, then ``subscribe``.
- ``http``: ``GET /<db>/_changes?feed=continuous&since=now`` straight to the upstream.

Commands: ``{"cmd": "open"}`` (connect and subscribe all), ``{"cmd": "drop", "gap": s}``
(abort every socket at once, wait ``gap`` seconds, reconnect all at once resuming from
each one's last seq), ``{"cmd": "dump", "path": p}`` (write deliveries as .npz),
``{"cmd": "stats"}``, ``{"cmd": "exit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import sys
import time
from array import array
from typing import Any

CHANGE = re.compile(rb'"seq":(\d+|"[^"]*"),"id":"f(\d+)"')
HTTP_ID = re.compile(rb'"id":"f(\d+)"')


class Stats:
    """Deliveries of all connections, as flat arrays (connection, generation, doc, time)."""

    def __init__(self) -> None:
        self.conn = array("i")
        self.gen = array("i")
        self.doc = array("q")
        self.time = array("d")
        self.errors: list[str] = []
        self.closed = 0
        self.pings = 0

    def add(self, conn: int, gen: int, doc: int, when: float) -> None:
        self.conn.append(conn)
        self.gen.append(gen)
        self.doc.append(doc)
        self.time.append(when)


class Client(asyncio.Protocol):
    """One subscriber connection (one generation of it)."""

    def __init__(self, index: int, gen: int, options: argparse.Namespace, stats: Stats,
                 since: bytes | None) -> None:
        self.index, self.gen, self.options, self.stats = index, gen, options, stats
        self.since = since
        self.last_seq: bytes | None = since
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.handshaken = False
        self.buffer = b""
        self.subscribe_sent = 0.0
        self.lost = False

    # -- connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        opts = self.options
        if opts.mode == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            request = (f"GET {opts.path} HTTP/1.1\r\nHost: {opts.host}:{opts.port}\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                       f"Authorization: {opts.auth}\r\n\r\n")
        else:
            request = (f"GET /{opts.db}/_changes?feed=continuous&since=now&heartbeat=1000 "
                       f"HTTP/1.1\r\nHost: {opts.host}:{opts.port}\r\n"
                       f"Authorization: {opts.auth}\r\n\r\n")
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.handshaken:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[:self.buffer.find(b"\r\n")]
            rest, self.buffer = self.buffer[end + 4:], b""
            expected = b" 101 " if self.options.mode == "ws" else b" 200 "
            if expected not in status:
                self._fail(f"handshake: {status.decode(errors='replace')}")
                return
            self.handshaken = True
            if self.options.mode == "ws":
                self._subscribe()
            elif not self.ready.done():
                self.ready.set_result(now)
            if not rest:
                return
            data = rest
        if self.options.mode == "ws":
            self._frames(data, now)
        else:
            self._http(data, now)

    def _fail(self, reason: str) -> None:
        if len(self.stats.errors) < 20:
            self.stats.errors.append(reason)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    # -- WebSocket -----------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + length.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + length.to_bytes(8, "big")
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(
            (mask * (length // 4 + 1))[:length], "big")).to_bytes(length, "big") if length else b""
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def _subscribe(self) -> None:
        message: dict[str, Any] = {"type": "subscribe", "id": "s", "db": self.options.db}
        if self.since is not None:
            message["since"] = json.loads(self.since)
        self.subscribe_sent = time.monotonic()
        self._send(0x1, json.dumps(message).encode())

    def _frames(self, data: bytes, now: float) -> None:
        buf = self.buffer + data if self.buffer else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self._text(payload, now)
            elif opcode == 0x9:
                self.stats.pings += 1
                self._send(0xA, payload)
            elif opcode == 0x8:
                self._fail(f"server closed: {payload[2:].decode(errors='replace')}")
                return
        self.buffer = buf[pos:]

    def _text(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"change"'):
            match = CHANGE.search(payload)
            if match:
                self.last_seq = match.group(1)
                self.stats.add(self.index, self.gen, int(match.group(2)), now)
        elif payload.startswith(b'{"type":"subscribed"'):
            if not self.ready.done():
                self.ready.set_result(now)
        elif payload.startswith(b'{"type":"error"') or payload.startswith(b'{"type":"closing"'):
            self._fail(payload.decode(errors="replace")[:300])

    # -- continuous _changes (baseline) --------------------------------------------

    def _http(self, data: bytes, now: float) -> None:
        buf = self.buffer + data if self.buffer else data
        for match in HTTP_ID.finditer(buf):
            if match.end() > len(self.buffer):
                self.stats.add(self.index, self.gen, int(match.group(1)), now)
        self.buffer = buf[-64:]


class Load:
    """All connections of this process."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.stats = Stats()
        self.clients: list[Client] = []
        self.gen = 0
        self.subscribe_times: dict[int, list[float]] = {}

    async def _connect(self, index: int, since: bytes | None,
                       limit: asyncio.Semaphore | None) -> Client | None:
        loop = asyncio.get_running_loop()
        client = Client(index, self.gen, self.options, self.stats, since)
        try:
            if limit is not None:
                await limit.acquire()
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: client, self.options.host, self.options.port), 60)
                await asyncio.wait_for(client.ready, 120)
            finally:
                if limit is not None:
                    limit.release()
        except (OSError, ConnectionError, TimeoutError) as exc:
            if len(self.stats.errors) < 20:
                self.stats.errors.append(f"connect {index}: {exc!r}")
            if client.transport is not None:
                client.transport.abort()
            return None
        return client

    async def open(self, concurrency: int | None) -> dict[str, Any]:
        started = time.monotonic()
        limit = asyncio.Semaphore(concurrency) if concurrency else None
        results = await asyncio.gather(*(self._connect(i, None, limit)
                                         for i in range(self.options.clients)))
        self.clients = [c for c in results if c is not None]
        return {"ready": len(self.clients), "failed": self.options.clients - len(self.clients),
                "seconds": time.monotonic() - started, "errors": self.stats.errors[:5]}

    async def drop(self, gap: float, concurrency: int | None) -> dict[str, Any]:
        old = self.clients
        dropped = time.monotonic()
        for client in old:
            if client.transport is not None:
                client.transport.abort()
        await asyncio.sleep(gap)
        self.gen += 1
        resumed = time.monotonic()
        limit = asyncio.Semaphore(concurrency) if concurrency else None
        results = await asyncio.gather(*(self._connect(c.index, c.last_seq, limit) for c in old))
        self.clients = [c for c in results if c is not None]
        return {"dropped_at": dropped, "resumed_at": resumed, "ready": len(self.clients),
                "failed": len(old) - len(self.clients),
                "resubscribed_seconds": time.monotonic() - resumed,
                "no_seq": sum(1 for c in old if c.last_seq is None),
                "errors": self.stats.errors[:5]}

    def dump(self, path: str) -> dict[str, Any]:
        import numpy as np

        subscribe = np.full(self.options.clients, np.nan)
        for client in self.clients:
            subscribe[client.index] = client.subscribe_sent
        np.savez(path, conn=np.frombuffer(self.stats.conn, dtype=np.int32),
                 gen=np.frombuffer(self.stats.gen, dtype=np.int32),
                 doc=np.frombuffer(self.stats.doc, dtype=np.int64),
                 time=np.frombuffer(self.stats.time, dtype=np.float64),
                 subscribe_sent=subscribe)
        return {"deliveries": len(self.stats.doc), "path": path}

    def stats_line(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"deliveries": len(self.stats.doc), "open": sum(1 for c in self.clients if not c.lost),
                "closed": self.stats.closed, "pings": self.stats.pings,
                "cpu": usage.ru_utime + usage.ru_stime, "errors": self.stats.errors[:5]}


async def serve(options: argparse.Namespace) -> None:
    load = Load(options)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.monotonic() + options.max_seconds
    print(json.dumps({"started": os.getpid()}), flush=True)
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(reader.readline(), deadline - time.monotonic())
        except TimeoutError:
            break
        if not line:
            break
        command = json.loads(line)
        name = command["cmd"]
        if name == "open":
            answer = await load.open(command.get("concurrency"))
        elif name == "drop":
            answer = await load.drop(command.get("gap", 0.0), command.get("concurrency"))
        elif name == "dump":
            answer = load.dump(command["path"])
        elif name == "stats":
            answer = load.stats_line()
        elif name == "exit":
            break
        else:
            answer = {"error": f"unknown command {name}"}
        print(json.dumps(answer), flush=True)
    for client in load.clients:
        if client.transport is not None:
            client.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["ws", "http"], default="ws")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/v1/changes")
    parser.add_argument("--db", required=True)
    parser.add_argument("--auth", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=900)
    options = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(options))
    else:
        uvloop.run(serve(options))


if __name__ == "__main__":
    main()
