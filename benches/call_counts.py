"""Python function calls per REST request: a before/after measure that noise cannot move.

Usage: ``make bench-calls`` (this checkout alone), ``make bench-calls BASE=<commit>``
(also that commit's gateway, from a temporary ``git worktree``), or
``.venv/bin/python -m benches.call_counts --compare-build <checkout>``.

CPU time per request on this 2-core VM moves by 10-15 % between two processes of the
*same* build in one run (``benches.rest_proxy --compare-build`` against a worktree of
HEAD itself), so a same-run A/B cannot see a change of a few percent. Call counts can:
each build runs under ``cProfile`` (:mod:`benches.profiled_gateway`), is warmed up, and
then counts the calls of exactly ``--requests`` requests per scenario, sent one at a
time on one keep-alive connection. Reported per request: all calls, those of Python
functions, those of C built-ins, and the functions whose counts differ most between
the builds. Counts are not times; what varies between runs is what the network varies
(how many reads an answer arrives in), a few calls per request.

Results go to ``benches/results/call_counts.json`` and Markdown on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pstats
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benches.procs import ROOT, Gateway, basic, start_upstream
from benches.rest_proxy import RESULTS, setup_database

WRAPPER = Path(__file__).resolve().parent / "profiled_gateway.py"
SCENARIOS = ("GET doc", "PUT doc", "view")
VIEW_PATH = "/api/v1/db/bench/views/b/by_n?startkey=100&limit=20"
DOCS = 1000
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def request_for(scenario: str, index: int, auth: str,
                tag: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    """Method, path, body and headers of request ``index`` of a scenario (as the wrk scripts).

    ``tag`` makes the ids of new documents unique to one build's run.
    """
    headers = {"Authorization": auth}
    if scenario == "GET doc":
        return "GET", f"/api/v1/db/bench/docs/doc{index % DOCS}", None, headers
    if scenario == "PUT doc":
        body = b'{"kind":"bench","payload":"0123456789abcdef0123456789abcdef"}'
        headers["Content-Type"] = "application/json"
        return "PUT", f"/api/v1/db/bench_w/docs/calls-{os.getpid()}-{tag}-{index}", body, headers
    return "GET", VIEW_PATH, None, headers


def send_requests(port: int, scenario: str, first: int, count: int, auth: str,
                  tag: str) -> None:
    """``count`` requests of ``scenario``, one at a time, on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for index in range(first, first + count):
            method, path, body, headers = request_for(scenario, index, auth, tag)
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status >= 300:
                raise RuntimeError(f"{scenario}: {method} {path} answered {answer.status}")
    finally:
        connection.close()


def function_name(key: tuple[str, int, str], checkout: Path) -> str:
    """A function's name that is the same in every build: its module path, not its line."""
    filename, _line, name = key
    if filename == "~":  # a C built-in, e.g. "<built-in method builtins.isinstance>"
        return _ADDRESS.sub("", name)  # "<built-in method __new__ of type object at 0x7f...>"
    for base in ("site-packages/", str(checkout) + "/", "/lib/python"):
        if base in filename:
            filename = filename.split(base, 1)[1]
            break
    return f"{filename}:{name}"


def read_counts(path: Path, checkout: Path) -> Counter[str]:
    """Calls per function from a ``cProfile`` statistics file."""
    stats: Any = pstats.Stats(str(path))
    counts: Counter[str] = Counter()
    for key, (_primitive, calls, _tt, _ct, _callers) in stats.stats.items():
        counts[function_name(key, checkout)] += calls
    return counts


@contextmanager
def counted(process: Any, out: Path, timeout: float = 30.0) -> Iterator[None]:
    """Count the gateway's calls while the block runs (SIGUSR1 ... SIGUSR2, then the file)."""
    out.unlink(missing_ok=True)
    process.send_signal(signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs at the reactor's next wake-up, at most a few ms
    yield
    time.sleep(0.2)  # the last request's finishing work (access log, metrics) is counted
    process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no statistics in {out} after {timeout:g} s")
        time.sleep(0.05)


def measure_build(label: str, checkout: Path, upstream: Any, auth: str, requests: int,
                  warmup: int, workdir: Path) -> dict[str, Any]:
    """Counts per scenario for one build's gateway."""
    out = workdir / f"calls-{label}.prof"
    gateway = Gateway.start(upstream.admin_url, checkout=checkout, script=WRAPPER,
                            extra_env={"BENCH_PROFILE_OUT": str(out)})
    results: dict[str, Any] = {}
    try:
        for scenario in SCENARIOS:
            send_requests(gateway.port, scenario, 0, warmup, auth, label)
            with counted(gateway.process, out):
                send_requests(gateway.port, scenario, warmup, requests, auth, label)
            counts = read_counts(out, checkout)
            builtin = sum(n for name, n in counts.items() if name.startswith("<"))
            total = sum(counts.values())
            results[scenario] = {
                "calls_per_request": total / requests,
                "python_per_request": (total - builtin) / requests,
                "builtin_per_request": builtin / requests,
                "functions": {name: n / requests for name, n in counts.most_common()},
            }
            print(f"{label}: {scenario}: {total / requests:.0f} calls per request", flush=True)
    finally:
        gateway.stop()
    return results


def differences(current: dict[str, float], baseline: dict[str, float],
                top: int) -> list[tuple[str, float, float]]:
    """The ``top`` functions whose calls per request differ most: (name, current, baseline).

    Ties go by name, so that the list is the same in every run.
    """
    names = set(current) | set(baseline)
    ranked = sorted(names, key=lambda n: (-abs(current.get(n, 0.0) - baseline.get(n, 0.0)), n))
    return [(n, current.get(n, 0.0), baseline.get(n, 0.0)) for n in ranked[:top]
            if round(current.get(n, 0.0) - baseline.get(n, 0.0), 1) != 0]


def markdown(results: dict[str, dict[str, Any]], top: int) -> str:
    """The table of calls per request, and the largest differences against the baseline."""
    builds = list(results)
    lines = ["| scenario | build | calls / request | Python functions | C built-ins | "
             "÷ first build |", "|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        first = results[builds[0]][scenario]["calls_per_request"]
        for build in builds:
            row = results[build][scenario]
            lines.append(
                f"| {scenario} | {build} | {row['calls_per_request']:.0f} | "
                f"{row['python_per_request']:.0f} | {row['builtin_per_request']:.0f} | "
                f"{row['calls_per_request'] / first:.3f} |")
    if len(builds) == 2:
        for scenario in SCENARIOS:
            lines += ["", f"**{scenario}**: calls per request, {builds[0]} / {builds[1]}", "",
                      "| function | " + " | ".join(builds) + " | difference |",
                      "|---|---|---|---|"]
            for name, now, before in differences(results[builds[0]][scenario]["functions"],
                                                 results[builds[1]][scenario]["functions"], top):
                lines.append(f"| `{name}` | {now:.1f} | {before:.1f} | {now - before:+.1f} |")
    return "\n".join(lines)


def git(*args: str) -> str:
    """Run git in this checkout; its standard output."""
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    """Count the calls of this checkout's gateway, and of a baseline build if asked."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="counted per scenario")
    parser.add_argument("--warmup", type=int, default=200, help="sent before counting")
    parser.add_argument("--top", type=int, default=15, help="differing functions listed")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--compare-build", type=Path, metavar="CHECKOUT",
                          help="also count the gateway of this checkout")
    baseline.add_argument("--compare-commit", metavar="REV",
                          help="also count this commit's gateway (a temporary git worktree)")
    parser.add_argument("--output", default=str(RESULTS / "call_counts.json"))
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-calls-", dir=ROOT / "var"))
    builds: dict[str, Path] = {f"this build ({git('rev-parse', '--short', 'HEAD')})": ROOT}
    worktree = None
    if args.compare_commit:
        worktree = workdir / "baseline"
        git("worktree", "add", "--detach", str(worktree), args.compare_commit)
    compare = worktree or args.compare_build
    if compare is not None:
        commit = subprocess.run(["git", "-C", str(compare), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
        builds[f"baseline ({commit or compare})"] = compare.resolve()
    upstream = start_upstream(workdir)
    auth = basic(upstream.admin_username, upstream.admin_password)
    results: dict[str, dict[str, Any]] = {}
    try:
        setup_database(upstream.url, auth, DOCS)
        for label, checkout in builds.items():
            results[label] = measure_build(f"build{len(results)}", checkout, upstream, auth,
                                           args.requests, args.warmup, workdir)
    finally:
        upstream.stop()
        if worktree is not None:
            git("worktree", "remove", "--force", str(worktree))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "call_counts", "requests": args.requests,
                               "warmup": args.warmup, "started": time.time(),
                               "results": results}, indent=1))
    print(markdown(results, args.top))


if __name__ == "__main__":
    main()
