"""Turn ``var/reliability/results.jsonl`` into the Markdown tables of ``RELIABILITY.md``.

Usage: ``python -m tests.reliability.report [--run RUN_ID]`` — the latest line of every
(suite, name) is used unless ``--run`` selects one run.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tests.reliability.conftest import RESULTS

SKIP = {"run", "time", "suite", "name", "passed", "statuses", "rss_series", "fd_series",
        "unexpected_sample"}


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run")
    args = parser.parse_args(argv)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for line in RESULTS.read_text().splitlines():
        entry = json.loads(line)
        if args.run and entry["run"] != args.run:
            continue
        latest[(entry["suite"], entry["name"])] = entry
    for suite in ("faults", "fuzz", "attacks", "secrets", "soak"):
        rows = [e for (s, _), e in sorted(latest.items()) if s == suite]
        if not rows:
            continue
        print(f"\n### {suite}\n")
        print("| test | passed | figures |")
        print("|---|---|---|")
        for entry in rows:
            figures = "; ".join(f"{k}={_fmt(v)}" for k, v in entry.items() if k not in SKIP)
            print(f"| {entry['name']} | {'yes' if entry.get('passed') else '**no**'} | {figures} |")
    attacks = [e for (s, _), e in latest.items() if s == "attacks"]
    if attacks:
        tried = sum(int(e.get("attempts", 0)) for e in attacks)
        safe = sum(int(e.get("failed_safely", 0)) for e in attacks)
        print(f"\nAttack attempts: {tried}, failed safely: {safe}")


if __name__ == "__main__":
    main()
