"""Benchmark 4: streaming a large attachment through the gateway vs directly.

Usage: ``make bench-stream`` (or ``.venv/bin/python -m benches.stream --size-mb 1024``).

Uploads an attachment of ``--size-mb`` MiB (1 GiB by default) with a streamed
``Content-Length`` body, straight to the upstream, through nginx (keep-alive reverse
proxy, unbuffered, 1 MiB buffers: what a good conventional proxy achieves on the same
machine), through the gateway's ``PUT /api/v1/db/{db}/docs/{id}/attachments/{name}``
and through a second gateway with ``WALLABY_SPLICE_DOWNLOADS=false`` and
``WALLABY_SPLICE_UPLOADS=false`` (bodies relayed in Python), then downloads each the
same four ways, in rounds with the order rotated. The client never holds the body: it
sends 1 MiB blocks (views of one buffer) and compares what comes back with what it sent,
block by block (``memcmp``; a CRC-32 of every byte had kept it at a full core). A
sampler reads the gateway's RSS every 20 ms: its peak growth over the RSS before the
transfer is reported. Throughput ratio = gateway MiB/s ÷ direct MiB/s in
the same run. Results: ``benches/results/stream.json`` and ``stream.png``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from benches.procs import (
    ROOT,
    Gateway,
    Nginx,
    basic,
    children,
    couch_request,
    cpu_seconds,
    rss_bytes,
    start_upstream,
    stop_on_sigterm,
)
from benches.rest_proxy import machine

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 1 << 20

#: Every transfer goes: straight to the upstream, through nginx (a keep-alive reverse
#: proxy, unbuffered, 1 MiB buffers), through the gateway, and through a gateway with
#: the splice relays off (uploads and downloads through Python, as before splice).
TARGETS = ("direct", "nginx", "gateway", "gateway (Python relay)")


class RssSampler(threading.Thread):
    """Samples a process's RSS until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = rss_bytes(pid)
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            rss = rss_bytes(self.pid)
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic() - start, rss))
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


def blocks(size: int, seed: bytes) -> Any:
    """``size`` bytes as 1 MiB blocks (a fixed random block, each one varied)."""
    for block in blocks_in_place(size, seed):
        yield bytes(block)


def blocks_in_place(size: int, seed: bytes) -> Any:
    """:func:`blocks` as views of one buffer, rewritten for each block (no copies).

    A view is valid until the next one is taken: for a consumer that is done with each
    block before asking for the next (a blocking ``sendall``, a comparison).
    """
    base = bytearray(os.urandom(BLOCK) if not seed else (seed * (BLOCK // len(seed) + 1))[:BLOCK])
    view = memoryview(base)
    sent = 0
    index = 0
    while sent < size:
        n = min(BLOCK, size - sent)
        base[:8] = index.to_bytes(8, "big")
        yield view[:n]
        sent += n
        index += 1


def content_crc(size: int, seed: bytes) -> int:
    """CRC-32 of the ``size`` bytes :func:`blocks` makes (computed before any timing)."""
    crc = 0
    for block in blocks_in_place(size, seed):
        crc = zlib.crc32(block, crc)
    return crc


def upload(port: int, path: str, auth: str, size: int, seed: bytes) -> tuple[float, dict[str, Any]]:
    """PUT a streamed body; return (seconds, answer).

    The body's blocks are views of one buffer (no copy per block, no checksum while
    timing): the client spends its CPU on ``send`` alone.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    connection.request("PUT", path, body=blocks_in_place(size, seed), headers={
        "Authorization": auth, "Content-Type": "application/octet-stream",
        "Content-Length": str(size)}, encode_chunked=False)
    answer = connection.getresponse()
    text = answer.read()
    seconds = time.monotonic() - started
    connection.close()
    if answer.status not in (201, 202):
        raise RuntimeError(f"PUT {path}: {answer.status} {text[:300]!r}")
    return seconds, json.loads(text)


def download(port: int, path: str, auth: str, size: int, seed: bytes) -> tuple[float, int, bool]:
    """GET and check against the content uploaded; return (seconds, bytes, intact).

    Reads into one 1 MiB buffer and compares it with the expected block (``memcmp``):
    a fraction of the CPU of a CRC-32, so that the client is not what limits a direct
    download (it was, at a full core, with a CRC-32 of every byte).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.monotonic()
    connection.request("GET", path, headers={"Authorization": auth})
    answer = connection.getresponse()
    if answer.status != 200:
        raise RuntimeError(f"GET {path}: {answer.status} {answer.read()[:300]!r}")
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    expected = blocks_in_place(size, seed)
    total, intact = 0, True
    while True:
        got = 0
        while got < BLOCK:
            n = answer.readinto(view[got:])
            if not n:
                break
            got += n
        if not got:
            break
        total += got
        want = next(expected, None)
        if want is None or len(want) != got:
            intact = False
        elif intact:
            intact = (buffer == want) if got == BLOCK else (view[:got].tobytes() == want.tobytes())
        if got < BLOCK:
            break
    seconds = time.monotonic() - started
    connection.close()
    return seconds, total, intact and total == size


class StubUpstream:
    """:mod:`benches.stub_upstream` as a child process."""

    def __init__(self, workdir: Path, seed: bytes) -> None:
        seed_file = workdir / "seed.bin"
        seed_file.write_bytes(seed)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benches.stub_upstream", "--seed-file", str(seed_file)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"stub upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://admin:stub@127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run(kind: str, size_mb: int, rounds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every transfer against one upstream kind (``pouchdb`` or ``stub``)."""
    size = size_mb * BLOCK
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-stream-{kind}-", dir=ROOT / "var"))
    seed = os.urandom(4096)
    expected_crc = content_crc(size, seed)
    upstream: Any = StubUpstream(workdir, seed) if kind == "stub" else start_upstream(workdir)
    auth = basic("admin", "stub") if kind == "stub" else basic(
        upstream.admin_username, upstream.admin_password)
    gateway = python_gateway = nginx = None
    runs: list[dict[str, Any]] = []
    traces: dict[str, Any] = {}
    try:
        if kind == "pouchdb":
            couch_request(upstream.url, "PUT", "/files", auth)
            up_pids = [upstream.process.pid, *children(upstream.process.pid)]
        else:
            up_pids = upstream.pids()
        gateway = Gateway.start(upstream.admin_url)
        python_gateway = Gateway.start(upstream.admin_url, {
            "WALLABY_SPLICE_DOWNLOADS": "false", "WALLABY_SPLICE_UPLOADS": "false"})
        nginx = Nginx.start(workdir / "nginx", upstream.port, buffer_size="1m")
        attachment = "/api/v1/db/files/docs/{doc}/attachments/blob"
        paths = {
            "direct": (upstream.port, "/files/{doc}/blob", []),
            "nginx": (nginx.port, "/files/{doc}/blob", nginx.pids()),
            "gateway": (gateway.port, attachment, [gateway.process.pid]),
            "gateway (Python relay)": (python_gateway.port, attachment,
                                       [python_gateway.process.pid]),
        }
        for round_no in range(rounds):
            order = list(TARGETS[round_no % len(TARGETS):] + TARGETS[:round_no % len(TARGETS)])
            for op in ("upload", "download"):
                for target in order:
                    port, template, proxy_pids = paths[target]
                    gw_pid = proxy_pids[0] if target.startswith("gateway") else gateway.process.pid
                    doc = f"{target.split()[0]}-{round_no}-{len(target)}"
                    rss_before = rss_bytes(gw_pid)
                    sampler = RssSampler(gw_pid)
                    sampler.start()
                    cpu0 = (cpu_seconds(proxy_pids), cpu_seconds(up_pids), _self_cpu())
                    if op == "upload":
                        seconds, answer = upload(port, template.format(doc=doc), auth, size, seed)
                        total = size
                        # The stub reports the CRC of what it received; pouchdb-server's
                        # copy is checked by downloading it.
                        checks = {"intact": answer.get("crc", expected_crc) == expected_crc}
                    else:
                        seconds, total, intact = download(
                            port, template.format(doc=doc), auth, size, seed)
                        checks = {"intact": intact}
                    peak = sampler.stop()
                    cpu1 = (cpu_seconds(proxy_pids), cpu_seconds(up_pids), _self_cpu())
                    row = {"upstream": kind, "round": round_no, "op": op, "target": target,
                           "bytes": total, "seconds": seconds, "mib_per_s": total / BLOCK / seconds,
                           "gateway_rss_before_mb": rss_before / 2**20,
                           "gateway_peak_rss_growth_mb": (peak - rss_before) / 2**20,
                           "proxy_cpu_s": cpu1[0] - cpu0[0], "upstream_cpu_s": cpu1[1] - cpu0[1],
                           "client_cpu_share": (cpu1[2] - cpu0[2]) / seconds, **checks}
                    if target.startswith("gateway"):
                        traces[f"{kind}: {op} via {target}, round {round_no}"] = sampler.samples
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for proxy in (gateway, python_gateway, nginx):
            if proxy:
                proxy.stop()
        upstream.stop()
    return runs, traces


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    """Upload and download through both paths, per upstream kind; write JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="size against the stub")
    parser.add_argument("--pouchdb-size-mb", type=int, default=64,
                        help="size against the real embedded server (0: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "stream.json"))
    args = parser.parse_args()
    stop_on_sigterm()
    started, load_before = time.time(), os.getloadavg()
    (ROOT / "var").mkdir(exist_ok=True)
    runs, traces = run("stub", args.size_mb, args.rounds)
    summary = {"stub": summarize([r for r in runs if r["upstream"] == "stub"])}
    if args.pouchdb_size_mb:
        more, more_traces = run("pouchdb", args.pouchdb_size_mb, 1)
        runs += more
        traces.update(more_traces)
        summary["pouchdb"] = summarize(more)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "stream", "started": started,
                               "size_mib_stub": args.size_mb,
                               "size_mib_pouchdb": args.pouchdb_size_mb,
                               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                               "machine": machine(), "summary": summary, "runs": runs}, indent=2))
    print(json.dumps(summary, indent=1))
    plot({k: v for k, v in traces.items() if k.startswith("stub")}, out.with_suffix(".png"),
         args.size_mb)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best-of-rounds throughput per (op, target), ratios to direct, worst RSS growth."""
    summary: dict[str, Any] = {}
    for op in ("upload", "download"):
        rows = [r for r in runs if r["op"] == op]
        best = {t: max(r["mib_per_s"] for r in rows if r["target"] == t)
                for t in TARGETS if any(r["target"] == t for r in rows)}
        entry: dict[str, Any] = {
            "mib_per_s": best,
            "ratio_to_direct": {t: v / best["direct"] for t, v in best.items()},
            "proxy_cpu_s": {t: min(r["proxy_cpu_s"] for r in rows if r["target"] == t)
                            for t in best if t != "direct"},
            "client_cpu_share_max": max(r["client_cpu_share"] for r in rows),
            "intact": all(r.get("intact", True) for r in rows),
        }
        for t in best:
            if t.startswith("gateway"):
                entry.setdefault("gateway_peak_rss_growth_mb", {})[t] = max(
                    r["gateway_peak_rss_growth_mb"] for r in rows if r["target"] == t)
        # The figures of the goal, kept under their old names.
        entry.update(direct_mib_per_s=best["direct"], gateway_mib_per_s=best["gateway"],
                     ratio=best["gateway"] / best["direct"],
                     gateway_cpu_s=entry["proxy_cpu_s"]["gateway"])
        summary[op] = entry
    return summary


def plot(traces: dict[str, list[tuple[float, int]]], path: Path, size_mb: int) -> None:
    """Gateway RSS over time during each transfer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, samples in traces.items():
        if samples:
            ax.plot([s[0] for s in samples], [s[1] / 2**20 for s in samples], label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_title(f"Gateway RSS while streaming a {size_mb} MiB attachment")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
