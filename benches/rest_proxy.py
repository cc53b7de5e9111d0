"""Benchmark 1: REST proxy cost — direct vs nginx vs the gateway, measured with wrk.

Usage: ``make bench-rest`` (or ``.venv/bin/python -m benches.rest_proxy --duration 10``).
``--placement split`` pins the upstream server and wrk to CPU 0 and the proxy under
test to CPU 1; the default lets the scheduler place every process.

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
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
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
    pin,
    preemptions,
    start_upstream,
    stop_on_sigterm,
)

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


def run_wrk(url: str, script: str, concurrency: int, duration: int, env: dict[str, str],
            cpus: set[int] | None = None) -> dict[str, float]:
    """One wrk run (one thread: the machine has 2 cores, one is the server's).

    Also returns wrk's own CPU use as a fraction of one core (``wrk_cpu``), from
    ``RUSAGE_CHILDREN``: the check that the load generator is not the bottleneck.
    ``cpus`` restricts wrk to those CPUs.
    """
    full_env = dict(os.environ, **env)
    command = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    command += ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency",
               "-s", str(LUA / script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    output = subprocess.run(command, env=full_env, capture_output=True, text=True, check=True,
                            timeout=duration + 30).stdout
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk(output)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wrk_cpu"] = used / elapsed if elapsed else float("nan")
    return result


def setup_database(admin_url: str, auth: str, docs: int) -> None:
    """A database with N small documents and a view, and an empty one for PUTs.

    PUTs go to ``bench_w`` so that they do not make the view of ``bench`` stale (a
    stale view would be re-indexed inside the next timed run).
    """
    couch_request(admin_url, "PUT", "/bench", auth)
    couch_request(admin_url, "PUT", "/bench_w", auth)
    batch = [{"_id": f"doc{i}", "n": i, "tag": f"t{i % 10}"} for i in range(docs)]
    couch_request(admin_url, "POST", "/bench/_bulk_docs", auth, {"docs": batch})
    couch_request(admin_url, "PUT", "/bench/_design/b", auth, {"views": {"by_n": {
        "map": "function (doc) { if (doc.n !== undefined) emit(doc.n, doc.tag); }"}}})
    couch_request(admin_url, "GET", "/bench/_design/b/_view/by_n?limit=1", auth)


SCENARIOS = (("GET doc", "get.lua"), ("PUT doc", "put.lua"), ("view", "view.lua"))
TARGETS = ("direct", "nginx", "gateway")
#: With ``--compare-build``: the gateway of another checkout, measured in the same rounds.
BASELINE_BUILD = "gateway (baseline build)"
COLORS = {"direct": "tab:blue", "nginx": "tab:orange", "gateway": "tab:green",
          BASELINE_BUILD: "tab:gray"}
#: ``--placement split``: the upstream server and wrk share CPU 0, the proxy under test
#: (nginx or the gateway) has CPU 1 to itself, as when CouchDB runs on its own machine.
SPLIT_UPSTREAM_CPUS = {0}
SPLIT_PROXY_CPUS = {1}
METRICS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "upstream_cpu_us_per_req", "wrk_cpu",
           "preemptions_per_req")


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; targets are interleaved and rotated, medians reported")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", default=str(RESULTS / "rest_proxy.json"))
    parser.add_argument("--compare-build", type=Path, metavar="CHECKOUT",
                        help="also run the gateway of this checkout (e.g. a git worktree of "
                             "an older commit) as a fourth target, interleaved like the others")
    parser.add_argument("--placement", choices=("shared", "split"), default="shared",
                        help="shared: every process may run on every CPU (the scheduler "
                             "decides); split: upstream and wrk on CPU 0, the proxy on CPU 1")
    args = parser.parse_args()
    if args.placement == "split" and (os.cpu_count() or 1) < 2:
        raise SystemExit("--placement split needs at least 2 CPUs")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    stop_on_sigterm()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-rest-", dir=ROOT / "var"))
    upstream = start_upstream(workdir)
    auth = basic(upstream.admin_username, upstream.admin_password)
    nginx = gateway = baseline = None
    started = time.time()
    load_before = os.getloadavg()
    try:
        setup_database(upstream.url, auth, args.docs)
        nginx = Nginx.start(workdir / "nginx", upstream.port)
        gateway = Gateway.start(upstream.admin_url)
        assert upstream.process is not None
        upstream_pids = [upstream.process.pid, *children(upstream.process.pid)]
        targets: dict[str, tuple[str, str, list[int]]] = {
            "direct": (f"http://127.0.0.1:{upstream.port}", "/", []),
            "nginx": (f"http://127.0.0.1:{nginx.port}", "/", nginx.pids()),
            "gateway": (f"http://127.0.0.1:{gateway.port}", "/api/v1/db/",
                        [gateway.process.pid]),
        }
        doc_paths = {"direct": "{db}/", "nginx": "{db}/", "gateway": "{db}/docs/"}
        view_paths = {
            "direct": "/bench/_design/b/_view/by_n?startkey=100&limit=20",
            "nginx": "/bench/_design/b/_view/by_n?startkey=100&limit=20",
            "gateway": "/api/v1/db/bench/views/b/by_n?startkey=100&limit=20",
        }
        names = list(TARGETS)
        baseline_commit = None
        if args.compare_build is not None:
            baseline = Gateway.start(upstream.admin_url, checkout=args.compare_build.resolve())
            targets[BASELINE_BUILD] = (f"http://127.0.0.1:{baseline.port}", "/api/v1/db/",
                                       [baseline.process.pid])
            doc_paths[BASELINE_BUILD] = doc_paths["gateway"]
            view_paths[BASELINE_BUILD] = view_paths["gateway"]
            names.append(BASELINE_BUILD)
            baseline_commit = subprocess.run(
                ["git", "-C", str(args.compare_build), "rev-parse", "--short", "HEAD"],
                capture_output=True, text=True, check=False).stdout.strip() or None
        wrk_cpus = None
        if args.placement == "split":
            pin(upstream_pids, SPLIT_UPSTREAM_CPUS)
            for name in names:
                pin(targets[name][2], SPLIT_PROXY_CPUS)
            wrk_cpus = SPLIT_UPSTREAM_CPUS
        runs: list[dict[str, Any]] = []
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            order = names[shift:] + names[:shift]
            for scenario, script in SCENARIOS:
                db = "bench_w" if script == "put.lua" else "bench"
                for concurrency in args.concurrency:
                    for name in order:
                        base, prefix, pids = targets[name]
                        env = {"BENCH_PREFIX": prefix + doc_paths[name].format(db=db),
                               "BENCH_AUTH": auth, "BENCH_DOCS": str(args.docs),
                               "BENCH_PATH": view_paths[name],
                               "BENCH_TAG": f"{name.split()[0]}{len(name)}-{concurrency}-{time.monotonic_ns()}"}
                        cpu_before = cpu_seconds(pids)
                        preempted_before = preemptions(pids)
                        up_before = cpu_seconds(upstream_pids)
                        measured = run_wrk(base + "/", script, concurrency, args.duration, env,
                                           wrk_cpus)
                        cpu = cpu_seconds(pids) - cpu_before
                        preempted = preemptions(pids) - preempted_before
                        up_cpu = cpu_seconds(upstream_pids) - up_before
                        n = measured["requests"]
                        measured["cpu_us_per_req"] = cpu / n * 1e6 if pids and n else float("nan")
                        measured["upstream_cpu_us_per_req"] = up_cpu / n * 1e6 if n else float("nan")
                        measured["preemptions_per_req"] = (preempted / n if pids and n
                                                           else float("nan"))
                        row = {"round": round_no, "scenario": scenario,
                               "concurrency": concurrency, "target": name, **measured}
                        runs.append(row)
                        print(json.dumps(row), flush=True)
        results = aggregate(runs)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "rest_proxy", "started": started, "duration_s": args.duration,
            "rounds": args.rounds, "docs": args.docs, "loadavg_before": load_before,
            "placement": args.placement,
            "baseline_build": baseline_commit,
            "loadavg_after": os.getloadavg(), "machine": machine(), "results": results,
            "runs": runs}, indent=2))
        print(markdown(results))
        plot(results, out.with_suffix(".png"))
    finally:
        for proxy in (gateway, baseline):
            if proxy:
                proxy.stop()
        if nginx:
            nginx.stop()
        upstream.stop()


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over rounds of every metric, per (scenario, concurrency, target)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["concurrency"], run["target"]), []).append(run)
    results = []
    for (scenario, concurrency, target), rows in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "concurrency": concurrency, "target": target}
        for metric in METRICS:
            values = [r[metric] for r in rows if r[metric] == r[metric]]
            row[metric] = statistics.median(values) if values else float("nan")
        row["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in rows)
        results.append(row)
    order = {s: i for i, (s, _) in enumerate(SCENARIOS)}
    ranks = {name: i for i, name in enumerate((*TARGETS, BASELINE_BUILD))}
    results.sort(key=lambda r: (order[r["scenario"]], r["concurrency"], ranks[r["target"]]))
    return results


def machine() -> dict[str, Any]:
    """Where the benchmark ran."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"nproc": os.cpu_count(), "cpu": model, "mem_kib": int(mem),
            "kernel": os.uname().release}


def markdown(results: list[dict[str, Any]]) -> str:
    """A table with ratios against direct and nginx in the same run."""
    lines = ["| scenario | c | target | req/s | p50 ms | p99 ms | added p50 vs direct | "
             "req/s ÷ nginx | proxy CPU µs/req | proxy preempted /req | upstream CPU µs/req | "
             "wrk CPU | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    index = {(r["scenario"], r["concurrency"], r["target"]): r for r in results}
    for r in results:
        direct = index[(r["scenario"], r["concurrency"], "direct")]
        nginx = index[(r["scenario"], r["concurrency"], "nginx")]
        added = r["p50_ms"] - direct["p50_ms"]
        ratio = r["rps"] / nginx["rps"] if nginx["rps"] else float("nan")
        cpu = "-" if r["cpu_us_per_req"] != r["cpu_us_per_req"] else f"{r['cpu_us_per_req']:.0f}"
        preempted = r.get("preemptions_per_req", float("nan"))
        preempted_text = "-" if preempted != preempted else f"{preempted:.2f}"
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {r['target']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added:+.2f} ms | {ratio:.2f} | "
            f"{cpu} | {preempted_text} | {r['upstream_cpu_us_per_req']:.0f} | {r['wrk_cpu']:.0%} | "
            f"{int(r['errors'])} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: req/s and p50 per scenario/concurrency and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["scenario"], r["concurrency"]) for r in results},
                    key=lambda g: ([s for s, _ in SCENARIOS].index(g[0]), g[1]))
    index = {(r["scenario"], r["concurrency"], r["target"]): r for r in results}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.2
    for ax, metric, label in ((axes[0], "rps", "requests/s (higher is better)"),
                              (axes[1], "p50_ms", "p50 latency, ms (lower is better)"),
                              (axes[2], "cpu_us_per_req", "proxy CPU µs per request")):
        present = [t for t in (*TARGETS, BASELINE_BUILD) if (*groups[0], t) in index]
        for i, target in enumerate(present):
            if metric == "cpu_us_per_req" and target == "direct":
                continue
            values = [index[(s, c, target)][metric] for s, c in groups]
            offset = (i - (len(present) - 1) / 2) * width
            ax.bar([g + offset for g in range(len(groups))], values, width, label=target,
                   color=COLORS[target])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s}\nc={c}" for s, c in groups], fontsize=8)
        ax.set_title(label, fontsize=10)
        if metric == "cpu_us_per_req":
            ax.set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("REST proxy cost: direct vs nginx vs gateway (medians, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
