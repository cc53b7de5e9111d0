"""Two gateway builds, one wrk scenario, alternated: a quick recheck of one A/B cell.

``benches.rest_proxy --compare-build`` measures every scenario against four targets; a
cell that differs there can be rechecked here, with nothing else running between the
two builds' runs. Each round runs both builds once, the first one alternating, and
prints per run: requests, the gateway's and the upstream's CPU per request, and the
TCP connections opened (``ActiveOpens`` of ``/proc/net/snmp``).

    .venv/bin/python -m benches.alternate --compare-build /tmp/before --script put.lua
    .venv/bin/python -m benches.alternate --compare-build /tmp/before --script get.lua \\
        --rounds 4

Loopback only; about ``rounds * 2 * duration`` seconds plus start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benches.procs import ROOT, Gateway, basic, children, cpu_seconds, start_upstream
from benches.rest_proxy import setup_database


def _active_opens() -> int:
    lines = [line for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    names, values = lines[0].split()[1:], lines[1].split()[1:]
    return int(dict(zip(names, values, strict=True))["ActiveOpens"])


def main() -> None:
    """Alternate the two builds and print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-build", type=Path, required=True, metavar="CHECKOUT")
    parser.add_argument("--script", default="put.lua", choices=("get.lua", "put.lua"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    upstream = start_upstream(Path(tempfile.mkdtemp(prefix="bench-alt-", dir=ROOT / "var")))
    auth = basic(upstream.admin_username, upstream.admin_password)
    db = "bench_w" if args.script == "put.lua" else "bench"
    builds: dict[str, Gateway] = {}
    try:
        setup_database(upstream.url, auth, 100)
        builds["this build"] = Gateway.start(upstream.admin_url)
        builds["compared build"] = Gateway.start(upstream.admin_url,
                                                 checkout=args.compare_build.resolve())
        assert upstream.process is not None
        upstream_pids = [upstream.process.pid, *children(upstream.process.pid)]
        cpu: dict[str, list[float]] = {name: [] for name in builds}
        names = list(builds)
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else names[::-1]:
                gateway = builds[name]
                env = dict(os.environ, BENCH_PREFIX=f"/api/v1/db/{db}/docs/", BENCH_DOCS="100",
                           BENCH_AUTH=auth, BENCH_TAG=f"alt{round_no}-{time.monotonic_ns()}")
                opens, up_cpu = _active_opens(), cpu_seconds(upstream_pids)
                own_cpu = cpu_seconds([gateway.process.pid])
                output = subprocess.run(
                    ["wrk", "-t2", f"-c{args.concurrency}", f"-d{args.duration}s", "-s",
                     str(ROOT / "benches" / "lua" / args.script),
                     f"http://127.0.0.1:{gateway.port}/"],
                    env=env, capture_output=True, text=True, check=True).stdout
                requests = int(next(line for line in output.splitlines()
                                    if "requests in" in line).split()[0])
                per_request = (cpu_seconds([gateway.process.pid]) - own_cpu) / requests * 1e6
                cpu[name].append(per_request)
                print(f"round {round_no} {name}: {requests} requests, gateway "
                      f"{per_request:.0f} µs, upstream "
                      f"{(cpu_seconds(upstream_pids) - up_cpu) / requests * 1e6:.0f} µs "
                      f"per request, {_active_opens() - opens} TCP connections opened",
                      flush=True)
        for name, values in cpu.items():
            print(f"{name}: median gateway CPU {statistics.median(values):.0f} µs per request")
    finally:
        for gateway in builds.values():
            gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
