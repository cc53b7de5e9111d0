"""A fast attachment sink/source speaking just enough CouchDB for the streaming benchmark.

Usage: ``python -m benches.stub_upstream --port P --seed-file F`` (started by
:mod:`benches.stream`). pouchdb-server ingests attachments at a few MiB/s (it is
the bottleneck long before any proxy), so the 1 GiB runs put this in its place to
measure the gateway's own streaming cost: direct = client → stub, gateway = client →
gateway → stub. It answers:

- ``GET /_session``: the admin ``userCtx`` (the gateway's identity check);
- ``PUT /<db>/<doc>/<att>``: reads the body (Content-Length or chunked), keeps its
  length and CRC-32, answers 201 with a rev;
- ``GET /<db>/<doc>/<att>``: the same bytes a client uploading ``size`` bytes sends
  (:func:`benches.stream.blocks` from the shared seed), with ``Content-Length``;
- ``GET /<db>/<doc>``: the document with its attachment stub; anything else: 404.

Loopback only; exits when its parent closes stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import zlib
from pathlib import Path
from typing import Any

from benches.stream import BLOCK, blocks_in_place

STORED: dict[str, tuple[int, int]] = {}


def reply(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    reason = {200: "OK", 201: "Created", 404: "Not Found"}.get(status, "OK")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seed: bytes) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:] if line)}
            path = target.split("?", 1)[0]
            parts = [p for p in path.split("/") if p]
            if method == "PUT" and len(parts) == 3:
                size, crc = 0, 0
                if "content-length" in headers:
                    remaining = int(headers["content-length"])
                    while remaining:
                        chunk = await reader.read(min(remaining, 4 * BLOCK))
                        if not chunk:
                            return
                        remaining -= len(chunk)
                        size += len(chunk)
                        crc = zlib.crc32(chunk, crc)
                else:
                    while True:
                        length = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if length == 0:
                            await reader.readuntil(b"\r\n")
                            break
                        chunk = await reader.readexactly(length)
                        await reader.readexactly(2)
                        size += length
                        crc = zlib.crc32(chunk, crc)
                STORED["/".join(parts[:2])] = (size, crc)
                reply(writer, 201, {"ok": True, "id": parts[1], "rev": f"1-{crc:08x}",
                                    "size": size, "crc": crc})
            elif method in ("GET", "HEAD") and len(parts) == 3 and "/".join(parts[:2]) in STORED:
                size = STORED["/".join(parts[:2])][0]
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             f"Content-Length: {size}\r\n\r\n".encode())
                if method == "GET":
                    # Views of one buffer: asyncio sends at once or copies what is left
                    # into its own buffer, so rewriting it for the next block is safe.
                    for block in blocks_in_place(size, seed):
                        writer.write(block)
                        await writer.drain()
            elif method == "GET" and len(parts) == 2 and "/".join(parts) in STORED:
                size, crc = STORED["/".join(parts)]
                reply(writer, 200, {"_id": parts[1], "_rev": f"1-{crc:08x}", "_attachments": {
                    parts[1]: {"content_type": "application/octet-stream", "length": size,
                               "stub": True}}})
            elif method == "GET" and path == "/_session":
                reply(writer, 200, {"ok": True, "userCtx": {"name": "admin", "roles": ["_admin"]},
                                    "info": {"authenticated": "default"}})
            elif method == "GET" and path == "/":
                reply(writer, 200, {"couchdb": "Welcome", "version": "stub"})
            else:
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                reply(writer, 404, {"error": "not_found", "reason": "missing"})
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, seed: bytes) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, seed), "127.0.0.1", port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()  # the parent closed stdin (or exited)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed-file", required=True)
    args = parser.parse_args()
    seed = Path(args.seed_file).read_bytes()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, seed))
    else:
        uvloop.run(serve(args.port, seed))


if __name__ == "__main__":
    main()
