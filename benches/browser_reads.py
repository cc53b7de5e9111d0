"""Benchmark 5: what a browser's repeated reads gain from conditional GETs and gzip.

Usage: ``make bench-browser-reads`` (or ``.venv/bin/python -m benches.browser_reads``).

Not a goal of issue 6, but the reason the gateway has these features. One query answer
of 100 documents (``_all_docs?include_docs=true&limit=100``) is read with wrk at
concurrency 1, interleaved over rounds, four ways:

- **direct**: from the upstream server, as a browser calling CouchDB would get it;
- **gateway**: as wrk asks by default (no ``Accept-Encoding``);
- **gateway, gzip**: ``Accept-Encoding: gzip``, as every browser sends;
- **gateway, revalidated**: ``If-None-Match`` with the ``ETag`` of the kept copy, as a
  browser's cache sends when it reads the same answer again (304, no body).

Reported per way: bytes per answer on the wire (wrk's bytes read ÷ requests, headers
included), requests/s, p50/p99, and the gateway's CPU per request; bytes and latency also
as ratios to direct. Loopback only, bounded (``--rounds`` times 4 runs of ``--duration`` s).
Results: ``benches/results/browser_reads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benches.procs import ROOT, Gateway, basic, couch_request, cpu_seconds, start_upstream
from benches.rest_proxy import RESULTS, machine, parse_wrk

QUERY = "all_docs?include_docs=true&limit=100"
WAYS = ("direct", "gateway", "gateway, gzip", "gateway, revalidated")
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def bytes_read(output: str) -> float:
    """Total bytes wrk read (headers included), from its summary line."""
    match = re.search(r"requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", output)
    return float(match.group(1)) * _SIZE[match.group(2)] if match else float("nan")


def wrk(url: str, headers: dict[str, str], duration: int) -> dict[str, float]:
    """One ``wrk -c1`` run with fixed request headers."""
    command = ["wrk", "-t1", "-c1", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True,
                            timeout=duration + 30).stdout
    result = parse_wrk(output)
    result["bytes_per_answer"] = bytes_read(output) / result["requests"]
    return result


def etag_of(url: str, headers: dict[str, str]) -> str:
    """The ``ETag`` a browser would keep with the answer (read once, body discarded)."""
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:  # loopback
        answer.read()
        etag = answer.headers.get("ETag")
    if not etag:
        raise SystemExit(f"{url} answered without an ETag")
    return str(etag)


def main() -> None:
    """Run the four ways in interleaved rounds; write JSON, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS / "browser_reads.json"))
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-reads-", dir=ROOT / "var"))
    upstream = start_upstream(workdir)
    auth = basic(upstream.admin_username, upstream.admin_password)
    gateway = None
    started, load_before = time.time(), os.getloadavg()
    try:
        couch_request(upstream.url, "PUT", "/reads", auth)
        docs = [{"_id": f"doc{i:04}", "title": f"A list item, number {i}",
                 "body": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3,
                 "tags": ["work", "home"][i % 2:], "done": i % 3 == 0, "n": i}
                for i in range(200)]
        couch_request(upstream.url, "POST", "/reads/_bulk_docs", auth, {"docs": docs})
        gateway = Gateway.start(upstream.admin_url)
        direct_url = f"http://127.0.0.1:{upstream.port}/reads/_{QUERY}"
        gateway_url = f"http://127.0.0.1:{gateway.port}/api/v1/db/reads/{QUERY}"
        gzip = {"Accept-Encoding": "gzip"}
        kept = etag_of(gateway_url, {"Authorization": auth, **gzip})
        ways: dict[str, tuple[str, dict[str, str]]] = {
            "direct": (direct_url, {}),
            "gateway": (gateway_url, {}),
            "gateway, gzip": (gateway_url, gzip),
            "gateway, revalidated": (gateway_url, {**gzip, "If-None-Match": kept}),
        }
        runs: list[dict[str, Any]] = []
        for round_no in range(args.rounds):
            order = WAYS[round_no % len(WAYS):] + WAYS[:round_no % len(WAYS)]
            for way in order:
                url, headers = ways[way]
                cpu0 = cpu_seconds([gateway.process.pid])
                measured = wrk(url, {"Authorization": auth, **headers}, args.duration)
                cpu = cpu_seconds([gateway.process.pid]) - cpu0
                measured["gateway_cpu_us_per_req"] = (cpu / measured["requests"] * 1e6
                                                      if way != "direct" else float("nan"))
                runs.append({"round": round_no, "way": way, **measured})
                print(json.dumps(runs[-1]), flush=True)
        results = aggregate(runs)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "browser_reads", "started": started, "query": QUERY,
            "duration_s": args.duration, "rounds": args.rounds,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "machine": machine(), "results": results, "runs": runs}, indent=2))
        print(markdown(results))
    finally:
        if gateway:
            gateway.stop()
        upstream.stop()


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds, per way."""
    results = []
    for way in WAYS:
        rows = [r for r in runs if r["way"] == way]
        row: dict[str, Any] = {"way": way}
        for metric in ("rps", "p50_ms", "p99_ms", "bytes_per_answer", "gateway_cpu_us_per_req"):
            values = [r[metric] for r in rows if r[metric] == r[metric]]
            row[metric] = statistics.median(values) if values else float("nan")
        row["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in rows)  # 304 is not one
        results.append(row)
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    """A table with bytes and p50 as ratios to direct."""
    direct = results[0]
    lines = ["| way | bytes per answer | ÷ direct | req/s | p50 ms | p99 ms | p50 ÷ direct | "
             "gateway CPU µs/req | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cpu = r["gateway_cpu_us_per_req"]
        lines.append(
            f"| {r['way']} | {r['bytes_per_answer']:,.0f} | "
            f"{r['bytes_per_answer'] / direct['bytes_per_answer']:.2f} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ms'] / direct['p50_ms']:.2f} | "
            f"{'-' if cpu != cpu else f'{cpu:.0f}'} | {int(r['errors'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
