"""Benchmark 1: REST proxy cost — direct vs nginx vs the gateway, measured with wrk.

Usage: ``make bench-rest`` (or ``.venv/bin/python -m benches.rest_proxy --duration 10``).

Every figure is reported next to the baselines measured in the same run: requests/s,
p50/p99 latency, and CPU seconds per request of the proxy process (gateway vs nginx),
from /proc accounting. Results go to ``benches/results/rest_proxy.json`` and a Markdown
table on stdout (copied into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benches.procs import ROOT, Gateway, Nginx, basic, couch_request, cpu_seconds, start_upstream

LUA = Path(__file__).resolve().parent / "lua"
RESULTS = Path(__file__).resolve().parent / "results"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 (ms) and error counts from ``wrk --latency`` output."""
    result: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.MULTILINE)
        result[f"p{pct}_ms"] = _ms(match.group(1)) if match else float("nan")
    total = re.search(r"(\d+) requests in", output)
    result["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return result


def run_wrk(url: str, script: str, concurrency: int, duration: int, env: dict[str, str]) -> dict[str, float]:
    """One wrk run (one thread: the machine has 2 cores, one is the server's)."""
    full_env = dict(os.environ, **env)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency",
               "-s", str(LUA / script), url]
    output = subprocess.run(command, env=full_env, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def setup_database(admin_url: str, auth: str, docs: int) -> None:
    """A database with N small documents and a view."""
    couch_request(admin_url, "PUT", "/bench", auth)
    batch = [{"_id": f"doc{i}", "n": i, "tag": f"t{i % 10}"} for i in range(docs)]
    couch_request(admin_url, "POST", "/bench/_bulk_docs", auth, {"docs": batch})
    couch_request(admin_url, "PUT", "/bench/_design/b", auth, {"views": {"by_n": {
        "map": "function (doc) { if (doc.n !== undefined) emit(doc.n, doc.tag); }"}}})
    couch_request(admin_url, "GET", "/bench/_design/b/_view/by_n?limit=1", auth)


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-rest-", dir=ROOT / "var"))
    upstream = start_upstream(workdir)
    auth = basic(upstream.admin_username, upstream.admin_password)
    nginx = gateway = None
    try:
        setup_database(upstream.url, auth, args.docs)
        nginx = Nginx.start(workdir / "nginx", upstream.port)
        gateway = Gateway.start(upstream.admin_url)
        targets: dict[str, tuple[str, str, list[int]]] = {
            "direct": (f"http://127.0.0.1:{upstream.port}", "/bench/", []),
            "nginx": (f"http://127.0.0.1:{nginx.port}", "/bench/", nginx.pids()),
            "gateway": (f"http://127.0.0.1:{gateway.port}", "/api/v1/db/bench/docs/",
                        [gateway.process.pid]),
        }
        view_paths = {
            "direct": "/bench/_design/b/_view/by_n?startkey=100&limit=20",
            "nginx": "/bench/_design/b/_view/by_n?startkey=100&limit=20",
            "gateway": "/api/v1/db/bench/views/b/by_n?startkey=100&limit=20",
        }
        results: list[dict[str, Any]] = []
        for scenario, script in (("GET doc", "get.lua"), ("PUT doc", "put.lua"),
                                 ("view", "view.lua")):
            for concurrency in args.concurrency:
                for name, (base, prefix, pids) in targets.items():
                    env = {"BENCH_PREFIX": prefix, "BENCH_AUTH": auth,
                           "BENCH_DOCS": str(args.docs), "BENCH_PATH": view_paths[name],
                           "BENCH_TAG": f"{name}-{concurrency}-{time.monotonic_ns()}"}
                    cpu_before = cpu_seconds(pids)
                    measured = run_wrk(base + "/", script, concurrency, args.duration, env)
                    cpu = cpu_seconds(pids) - cpu_before
                    measured["cpu_us_per_req"] = (cpu / measured["requests"] * 1e6
                                                  if pids and measured["requests"] else float("nan"))
                    row = {"scenario": scenario, "concurrency": concurrency, "target": name,
                           **measured}
                    results.append(row)
                    print(json.dumps(row), flush=True)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "rest_proxy.json").write_text(json.dumps(results, indent=2))
        print(markdown(results))
    finally:
        if gateway:
            gateway.stop()
        if nginx:
            nginx.stop()
        upstream.stop()


def markdown(results: list[dict[str, Any]]) -> str:
    """A table with ratios against direct and nginx in the same run."""
    lines = ["| scenario | c | target | req/s | p50 ms | p99 ms | added p50 vs direct | "
             "req/s ÷ nginx | CPU µs/req | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    index = {(r["scenario"], r["concurrency"], r["target"]): r for r in results}
    for r in results:
        direct = index[(r["scenario"], r["concurrency"], "direct")]
        nginx = index[(r["scenario"], r["concurrency"], "nginx")]
        added = r["p50_ms"] - direct["p50_ms"]
        ratio = r["rps"] / nginx["rps"] if nginx["rps"] else float("nan")
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {r['target']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added:+.2f} ms | {ratio:.2f} | "
            f"{r['cpu_us_per_req']:.0f} | {int(r['non_2xx'] + r['socket_errors'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
