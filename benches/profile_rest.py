"""Profile the gateway under a wrk load with py-spy; print the hottest frames.

Usage: ``.venv/bin/python -m benches.profile_rest --scenario get --seconds 10``.

Writes collapsed stacks to ``benches/results/profile-<scenario>.txt`` and prints the
top frames by inclusive and by self time (share of samples). Loopback only, bounded
by ``--seconds``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benches.procs import ROOT, Gateway, basic, start_upstream
from benches.rest_proxy import LUA, RESULTS, setup_database

SCRIPTS = {"get": "get.lua", "put": "put.lua", "view": "view.lua"}


def summarize(collapsed: Path, top: int = 25) -> str:
    """Top frames by inclusive and self share from py-spy's raw (collapsed) output."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        self_time[frames[-1]] += count
    out = [f"{total} samples", "", "inclusive:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_time.most_common(top)]
    return "\n".join(out)


def main() -> None:
    """Start upstream + gateway, load it with wrk, record with py-spy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCRIPTS), default="get")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    (ROOT / "var").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-prof-", dir=ROOT / "var"))
    upstream = start_upstream(workdir)
    auth = basic(upstream.admin_username, upstream.admin_password)
    gateway = None
    try:
        setup_database(upstream.url, auth, 1000)
        gateway = Gateway.start(upstream.admin_url)
        db = "bench_w" if args.scenario == "put" else "bench"
        env = dict(os.environ, BENCH_PREFIX=f"/api/v1/db/{db}/docs/", BENCH_AUTH=auth,
                   BENCH_DOCS="1000", BENCH_TAG="prof",
                   BENCH_PATH="/api/v1/db/bench/views/b/by_n?startkey=100&limit=20")
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"profile-{args.scenario}.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(gateway.process.pid),
                                "--duration", str(args.seconds), "--rate", "500",
                                "--format", "raw", "--output", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.seconds}s",
                        "-s", str(LUA / SCRIPTS[args.scenario]),
                        f"http://127.0.0.1:{gateway.port}/"],
                       env=env, check=True, capture_output=True, timeout=args.seconds + 30)
        spy.wait(timeout=args.seconds + 60)
        print(summarize(out))
    finally:
        if gateway:
            gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
