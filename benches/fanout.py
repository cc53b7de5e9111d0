"""Benchmark 2: WebSocket fan-out through the gateway vs one direct ``_changes`` feed per client.

Usage: ``make bench-fanout`` (or ``.venv/bin/python -m benches.fanout``).

For each subscriber count (100, 1,000, 10,000): load children (:mod:`benches.wsload`)
open that many WebSocket connections to ``/api/v1/changes``, each subscribing to the
same database; the gateway's RSS is read before and after (idle connections). A writer
then PUTs new documents straight to the upstream at a fixed rate; each load client
timestamps every delivery on receipt, and latency is receipt time minus the time the
writer's PUT was acknowledged (both ``time.monotonic()``, one system-wide clock).
Baseline in the same run (100 and 1,000): the same number of clients, each holding its
own continuous ``_changes`` feed straight to the upstream server.

Reports latency p50/p99/max over all deliveries, deliveries/s, gateway CPU per
delivery (``/proc``), RSS per idle connection, upstream ``_changes`` connections
(gateway counters and, independently, ``/proc`` TCP sockets of the gateway to the
upstream), missing/duplicate deliveries, and the load clients' own CPU.
Results: ``benches/results/fanout.json`` and ``fanout.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benches.procs import ROOT, pin
from benches.wsbench import (
    RESULTS,
    LoadProcess,
    Stack,
    Writer,
    call_all,
    create_db,
    gateway_env,
    load_deliveries,
    machine,
    percentiles,
    spawn_clients,
)

WARMUP_DOCS = 3


def profile_gateway(stack: Stack, name: str, seconds: float) -> subprocess.Popen[bytes]:
    """Start py-spy on the gateway for ``seconds`` (collapsed stacks in results/)."""
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    RESULTS.mkdir(exist_ok=True)
    return subprocess.Popen([py_spy, "record", "--pid", str(stack.gateway.process.pid),
                             "--duration", str(int(seconds)), "--rate", "200", "--format", "raw",
                             "--output", str(RESULTS / f"profile-{name}.txt"), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_delivered(loads: list[LoadProcess], expected: int, timeout: float) -> int:
    """Poll the children until ``expected`` deliveries arrived or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    total = 0
    while time.monotonic() < deadline:
        total = sum(a["deliveries"] for a in call_all(loads, {"cmd": "stats"}, 30))
        if total >= expected:
            break
        time.sleep(0.2)
    return total


def measure(stack: Stack, mode: str, clients: int, rate: float, seconds: float,
            processes: int, db: str, args_idle_seconds: float = 5.0,
            profile: bool = False) -> dict[str, Any]:
    """One configuration: open, idle RSS, write at ``rate`` for ``seconds``, collect."""
    import numpy as np

    port = stack.gateway.port if mode == "ws" else stack.upstream.port
    writer = Writer(stack.upstream.port, db, stack.auth)
    writer.next_doc = int(time.time() * 1000) % 10**9 * 1000  # unique across runs
    rss_before = stack.gateway_rss()
    metrics_before = stack.ws_metrics()
    loads = spawn_clients(mode, port, db, stack.auth, clients, processes)
    row: dict[str, Any] = {"mode": "gateway" if mode == "ws" else "direct", "clients": clients,
                           "db": db,
                           "rate_per_s": rate, "seconds": seconds, "load_processes": processes}
    try:
        wall_open = time.time()
        # Direct feeds answer their headers only with the first heartbeat (1 s): open
        # them all at once; WebSocket handshakes are paced (Twisted's listen backlog is 50).
        opened = call_all(loads, {"cmd": "open", "concurrency": 200 if mode == "ws" else None},
                          600)
        row["open_seconds"] = max(a["seconds"] for a in opened)
        row["connected"] = sum(a["ready"] for a in opened)
        row["connect_failures"] = sum(a["failed"] for a in opened)
        row["connect_errors"] = [e for a in opened for e in a["errors"]][:5]
        # Idle: every subscriber connected, no writes. What do idle connections cost?
        idle0 = (stack.gateway_cpu(), stack.upstream_cpu(), time.time())
        time.sleep(args_idle_seconds)
        idle1 = (stack.gateway_cpu(), stack.upstream_cpu(), time.time())
        row["idle_seconds"] = idle1[2] - idle0[2]
        row["idle_gateway_cpu_share"] = (idle1[0] - idle0[0]) / row["idle_seconds"]
        row["idle_upstream_cpu_share"] = (idle1[1] - idle0[1]) / row["idle_seconds"]
        row["idle_upstream_requests"] = stack.upstream_requests(idle0[2], idle1[2])
        rss_after = stack.gateway_rss()
        if mode == "ws":
            row["rss_per_idle_connection_bytes"] = (rss_after - rss_before) / max(1, row["connected"])
            row["gateway_rss_mb"] = rss_after / 2**20
            row["gateway_gc_connected"] = stack.gc_pauses()  # all subscribers still connected
        metrics = stack.ws_metrics()
        row["upstream_feeds_gateway_metric"] = metrics.get("ws_upstream_feeds")
        row["upstream_tcp_connections_from_gateway"] = stack.upstream_feed_connections()
        row["open_upstream_requests"] = stack.upstream_requests(wall_open)
        for _ in range(WARMUP_DOCS):
            writer.put()
            time.sleep(0.2)
        wait_delivered(loads, clients * WARMUP_DOCS, 20)
        cpu0 = (stack.gateway_cpu(), stack.upstream_cpu(), sum(x.cpu() for x in loads))
        wall0, mono0 = time.time(), time.monotonic()
        spy = profile_gateway(stack, f"fanout-{mode}-{clients}", seconds) if profile else None
        docs = writer.run(rate, seconds)
        if spy is not None:
            spy.wait(seconds + 60)
        expected = clients * (WARMUP_DOCS + len(docs))
        total = wait_delivered(loads, expected, 120)
        mono1 = time.monotonic()
        # Counted once the last broadcast has arrived, the subscribers still connected:
        # reading /proc/net/tcp (20,000 sockets at 10,000 clients) and /metrics while
        # it travels took CPU from it and made the last broadcast the slowest one.
        during = (stack.upstream_feed_connections(), stack.ws_metrics().get("ws_upstream_feeds"))
        cpu1 = (stack.gateway_cpu(), stack.upstream_cpu(), sum(x.cpu() for x in loads))
        row["upstream_tcp_connections_during_writes"] = during[0]
        row["upstream_feeds_during_writes"] = during[1]
        row["write_upstream_requests"] = stack.upstream_requests(wall0)
        row["max_concurrent_upstream_changes"] = stack.max_concurrent_changes(wall0)
        paths = [str(stack.workdir / f"deliveries-{mode}-{clients}-{i}.npz") for i in range(len(loads))]
        for load, path in zip(loads, paths, strict=True):
            load.call({"cmd": "dump", "path": path})
        data = load_deliveries(paths)
    finally:
        for load in loads:
            load.close()
    ack = np.full(writer.next_doc - docs[0] + 1 if docs else 1, np.nan)
    first = docs[0] if docs else 0
    for number in docs:
        ack[number - first] = writer.acks[number]
    timed = (data["doc"] >= first) & (data["doc"] <= docs[-1]) if docs else data["doc"] < 0
    doc_index = data["doc"][timed] - first
    latency = data["time"][timed] - ack[doc_index]
    pairs = data["conn"][timed] * (len(ack) + 1) + doc_index
    unique = len(np.unique(pairs))
    window = float(data["time"][timed].max() - mono0) if timed.any() else float("nan")
    deliveries = int(timed.sum())
    row.update(percentiles(latency))
    row.update({
        "writes": len(docs), "expected_deliveries": clients * len(docs),
        "deliveries": deliveries, "missing": clients * len(docs) - unique,
        "duplicates": deliveries - unique, "all_deliveries_seen": total,
        "negative_latency_share": float((latency < 0).mean()) if deliveries else 0.0,
        "deliveries_per_s": deliveries / window if window == window and window > 0 else 0.0,
        "window_s": window, "drain_s": mono1 - mono0,
        "gateway_cpu_s": cpu1[0] - cpu0[0], "upstream_cpu_s": cpu1[1] - cpu0[1],
        "load_cpu_s": cpu1[2] - cpu0[2],
    })
    row["gateway_cpu_us_per_delivery"] = (row["gateway_cpu_s"] / deliveries * 1e6
                                          if mode == "ws" and deliveries else float("nan"))
    row["upstream_cpu_us_per_delivery"] = (row["upstream_cpu_s"] / deliveries * 1e6
                                           if deliveries else float("nan"))
    row["load_cpu_share_of_core"] = row["load_cpu_s"] / (mono1 - mono0) / max(1, len(loads))
    if deliveries:
        # Each write's own p50 / p99 / max: shows whether one broadcast (e.g. the first
        # after everybody subscribed) sets the run's p99.
        row["per_write_ms"] = [
            [round(float(np.percentile(part, q)) * 1000, 1) for q in (50, 99, 100)]
            for part in (latency[doc_index == k] for k in range(len(ack))) if len(part)]
    row["latency_sample_ms"] = sorted((latency * 1000).round(2).tolist())[:: max(1, deliveries // 2000)]
    row["metrics_delta"] = {k: v - metrics_before.get(k, 0) for k, v in stack.ws_metrics().items()
                            if isinstance(v, (int, float))}
    if mode == "ws":
        row["gateway_gc"] = stack.gc_pauses()  # since start, read after the subscribers left
    return row


def main() -> None:
    """Run every configuration, write JSON and the plot, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--baseline", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--rate", type=float, default=10.0, help="writes per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the write phase")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="connected, no writes: measures the cost of idle connections")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway during each write phase (results/profile-*.txt)")
    parser.add_argument("--output", default=str(RESULTS / "fanout.json"))
    parser.add_argument("--placement", choices=("shared", "split"), default="shared",
                        help="shared: the scheduler places every process; split: the "
                             "gateway on CPU 1, everything else (upstream, load clients, "
                             "writer) on CPU 0")
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    if args.placement == "split":
        # Children started from here on (upstream, nginx, load clients) inherit CPU 0.
        pin([os.getpid()], {0})
    stack = Stack.start("bench-fanout-", extra_env=gateway_env())
    if args.placement == "split":
        pin([stack.gateway.process.pid], {1})
    rows = []
    try:
        configs = [("http", n) for n in args.baseline] + [("ws", n) for n in args.clients]
        configs.sort(key=lambda c: (c[1], c[0]))
        for mode, clients in configs:
            processes = 1 if clients <= 1000 else 2
            # A database per configuration: feeds of one run cannot affect the next.
            db = f"fan_{mode}_{clients}"
            create_db(stack, db)
            row = measure(stack, mode, clients, args.rate, args.seconds, processes, db,
                          args.idle_seconds, args.profile and mode == "ws")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()
                              if k not in ("latency_sample_ms", "metrics_delta")}),
                  flush=True)
            time.sleep(2)
    finally:
        stack.stop()
    # Independent of the gateway's counters: every live ``_changes`` request the gateway
    # made upstream, from nginx's log (a request is logged when it ends, so after stop).
    log = stack.access_log.read_text().splitlines() if stack.access_log.exists() else []
    for row in rows:
        row["upstream_live_changes_requests"] = sum(
            1 for line in log if f"/{row['db']}/_changes?" in line and "feed=" in line)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "fanout", "started": started,
                               "gateway_env": gateway_env(),
                               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                               "machine": machine(), "rate_per_s": args.rate,
                               "placement": args.placement,
                               "seconds": args.seconds, "results": rows}, indent=2))
    print(markdown(rows))
    plot(rows, out.with_suffix(".png"))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results table (ratios against the direct baseline of the same run)."""
    direct = {r["clients"]: r for r in rows if r["mode"] == "direct"}
    lines = ["| clients | path | p50 ms | p99 ms | max ms | p99 ÷ direct | deliveries/s | "
             "missing/dup | gateway CPU µs/delivery (≙ deliveries/s per core) | gateway CPU share | upstream CPU s | RSS/idle conn | "
             "upstream `_changes` feeds: metric / requests in nginx log / gateway→upstream TCP | load CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = direct.get(r["clients"])
        ratio = f"{r['p99_ms'] / base['p99_ms']:.2f}" if base and base["p99_ms"] else "-"
        rss = (f"{r['rss_per_idle_connection_bytes'] / 1024:.1f} KB"
               if "rss_per_idle_connection_bytes" in r else "-")
        per = r["gateway_cpu_us_per_delivery"]
        cpu = f"{per:.1f} (≙ {1e6 / per / 1000:.0f}k/s)" if per == per and per else "-"
        share = f"{r['gateway_cpu_s'] / r['drain_s']:.0%}" if r["mode"] == "gateway" else "-"
        feeds = (f"{r['upstream_feeds_during_writes']} / "
                 f"{r.get('upstream_live_changes_requests', '?')} / "
                 f"{r['upstream_tcp_connections_during_writes']}"
                 if r["mode"] == "gateway" else f"{r['clients']} (one per client)")
        lines.append(
            f"| {r['clients']} | {r['mode']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['max_ms']:.1f} | {ratio} | {r['deliveries_per_s']:.0f} | "
            f"{r['missing']}/{r['duplicates']} | {cpu} | {share} | {r['upstream_cpu_s']:.2f} | {rss} | "
            f"{feeds} | {r['load_cpu_share_of_core']:.0%} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency CDFs of every configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        sample = np.array(r["latency_sample_ms"])
        if not len(sample):
            continue
        style = "-" if r["mode"] == "gateway" else "--"
        ax.plot(np.sort(sample), np.linspace(0, 1, len(sample)), style,
                label=f"{r['mode']}, {r['clients']} clients (p99 {r['p99_ms']:.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("write acknowledged → received (ms, log)")
    ax.set_ylabel("share of deliveries")
    ax.axvline(100, color="grey", lw=0.8, ls=":")
    ax.set_title("Fan-out latency CDF: gateway (shared feed) vs one direct feed per client")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
