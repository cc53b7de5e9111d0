"""The machine's floor for a broadcast: one small frame written to N idle loopback sockets.

Usage: ``.venv/bin/python -m benches.send_floor --clients 10000`` (part of ``make
bench-fanout``). No gateway, no Python framework: the sender is a bare loop of
``socket.send`` over N accepted sockets, the receiver a separate process holding the N
client sockets in one ``epoll`` (``selectors``) and timestamping each frame's arrival
(``time.monotonic()``, one clock for both processes). Per round it reports the wall and
CPU time of the send loop and the latency of every arrival (receipt minus start of the send
loop): what any single-threaded process on this machine pays to put one frame on N
sockets, against which the gateway's broadcast latency (benchmark 2) is read.
``--threads 1 2`` measures it also with the sockets split between two threads, as the
gateway's ``WALLABY_WS_SEND_THREADS`` does (``send`` runs outside the GIL).
Loopback only, bounded (a few rounds of a few seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import resource
import selectors
import socket
import statistics
import struct
import time
from pathlib import Path

from benches.procs import ROOT

RESULTS = ROOT / "benches" / "results"
FRAME = b"\x81\x7e\x00\xc8" + b"x" * 200  # a 200-byte unmasked WebSocket text frame


def _receiver(port: int, clients: int, report: int, stop: int) -> None:
    """Child: connect N sockets, then send back (round, arrivals) per round."""
    selector = selectors.DefaultSelector()
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    selector.register(stop, selectors.EVENT_READ)
    os.write(report, b"R")
    arrivals: list[float] = []
    while True:
        for key, _ in selector.select():
            if key.fileobj == stop:
                command = os.read(stop, 1)
                if command != b"F":
                    os._exit(0)
                payload = struct.pack(f"<I{len(arrivals)}d", len(arrivals), *arrivals)
                os.write(report, struct.pack("<I", len(payload)) + payload)
                arrivals = []
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(65536):
                    arrivals.append(time.monotonic())
            except BlockingIOError:
                pass


def _send_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.send(FRAME)


def _send_split(sockets: list[socket.socket], pool: concurrent.futures.ThreadPoolExecutor,
                threads: int) -> None:
    """Send on equal slices of ``sockets`` at once: this thread the first, the pool the rest."""
    bounds = [len(sockets) * index // threads for index in range(threads + 1)]
    others = [pool.submit(_send_all, sockets[start:stop])
              for start, stop in itertools.pairwise(bounds[1:])]
    _send_all(sockets[:bounds[1]])
    for other in others:
        other.result()


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("receiver died")
        data += chunk
    return data


def measure(clients: int, rounds: int, threads: int = 1) -> dict[str, object]:
    """Run the floor measurement; returns per-round and summary figures."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    report_r, report_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        listener.close()
        _receiver(port, clients, report_w, stop_r)
    senders = []
    for _ in range(clients):
        sock, _ = listener.accept()
        sock.setblocking(False)
        senders.append(sock)
    _read_exact(report_r, 1)
    time.sleep(1.0)
    runs = []
    pool = concurrent.futures.ThreadPoolExecutor(max(1, threads - 1))
    pool.submit(time.sleep, 0).result()  # its thread exists before the first round
    try:
        for _ in range(rounds):
            started, cpu = time.monotonic(), time.process_time()
            _send_split(senders, pool, threads)
            loop_s, loop_cpu = time.monotonic() - started, time.process_time() - cpu
            time.sleep(1.0)
            os.write(stop_w, b"F")
            size = struct.unpack("<I", _read_exact(report_r, 4))[0]
            payload = _read_exact(report_r, size)
            count = struct.unpack_from("<I", payload)[0]
            arrivals = struct.unpack_from(f"<{count}d", payload, 4)
            latencies = sorted((t - started) * 1000 for t in arrivals)
            runs.append({
                "loop_ms": loop_s * 1000, "loop_cpu_us_per_send": loop_cpu / clients * 1e6,
                "received": count, "p50_ms": latencies[len(latencies) // 2],
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1], "max_ms": latencies[-1],
            })
    finally:
        pool.shutdown()
        os.write(stop_w, b"Q")
        os.waitpid(pid, 0)
        for sock in senders:
            sock.close()
        listener.close()
    return {
        "clients": clients, "threads": threads, "rounds": runs,
        "median": {key: statistics.median(r[key] for r in runs)  # type: ignore[misc]
                   for key in ("loop_ms", "loop_cpu_us_per_send", "p50_ms", "p99_ms", "max_ms")},
    }


def main() -> None:
    """Measure and write ``results/send_floor.json``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="sender threads (each count measured in turn)")
    parser.add_argument("--output", default=str(RESULTS / "send_floor.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = [measure(n, args.rounds, threads) for n in args.clients for threads in args.threads]
    Path(args.output).write_text(json.dumps(
        {"benchmark": "send_floor", "loadavg_before": load_before,
         "loadavg_after": os.getloadavg(), "results": results}, indent=2))
    print("| clients | sender threads | send loop ms | CPU µs/send | arrival p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        m = result["median"]
        assert isinstance(m, dict)
        print(f"| {result['clients']} | {result['threads']} | {m['loop_ms']:.1f} | {m['loop_cpu_us_per_send']:.1f} | "
              f"{m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['max_ms']:.1f} |")


if __name__ == "__main__":
    main()
