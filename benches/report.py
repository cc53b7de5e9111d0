"""Print the Markdown tables of BENCHMARKS.md from ``benches/results/*.json``.

Usage: ``.venv/bin/python -m benches.report``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benches import fanout, rest_proxy

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _context(data: dict[str, Any]) -> str:
    before = " ".join(f"{x:.2f}" for x in data.get("loadavg_before", []))
    after = " ".join(f"{x:.2f}" for x in data.get("loadavg_after", []))
    return f"_load average before: {before}; after: {after}_"


def reconnect_table(row: dict[str, Any]) -> str:
    lat = row["latency_after_storm"]
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(row["upstream_requests_storm"].items()))
    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| clients / reconnected / failed | {row['clients']} / {row['reconnected']} / "
        f"{row['reconnect_failures']} |",
        f"| writes (rate {row['rate_per_s']:.0f}/s) / written while all were away | "
        f"{row['writes']} / {row['writes_during_gap']} |",
        f"| changes each client had to catch up (mean) | {row['missed_per_client_mean']:.1f} |",
        f"| all clients re-subscribed after | {row['resubscribed_s']:.2f} s |",
        f"| kernel ListenOverflows during the reconnect (system-wide) | "
        f"{row.get('listen_overflows_during_reconnect', 'not measured')} |",
        f"| caught up: p50 / p99 / all | {row['caught_up_p50_s']:.2f} s / "
        f"{row['caught_up_p99_s']:.2f} s / {row['caught_up_all_s']:.2f} s |",
        f"| upstream requests during the storm | {row['upstream_requests_total']} "
        f"({row['upstream_requests_per_client']:.2f} per client): {kinds} |",
        f"| most catch-up `_changes` in flight at once | {row['max_concurrent_catchup_changes']} |",
        f"| missing / duplicated deliveries | {row['missing']} / {row['duplicates']} "
        f"(duplicates across the reconnect: {row['duplicates_across_reconnect']}) |",
        f"| latency of live changes after the storm p50 / p99 / max | {lat['p50_ms']:.0f} / "
        f"{lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms |",
        f"| load client CPU during the storm | {row['load_cpu_share_during_storm']:.0%} of a core |",
    ])


def stream_table(summary: dict[str, Any], data: dict[str, Any]) -> str:
    sizes = {"stub": data.get("size_mib_stub"), "pouchdb": data.get("size_mib_pouchdb")}
    if not any("mib_per_s" in ops for kinds in summary.values() for ops in kinds.values()):
        lines = ["| upstream | size | op | direct MiB/s | gateway MiB/s | ratio | gateway peak RSS "
                 "growth | gateway CPU s | client CPU (max) | intact |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for kind, ops in summary.items():
            for op, s in ops.items():
                lines.append(
                    f"| {kind} | {sizes[kind]} MiB | {op} | {s['direct_mib_per_s']:.0f} | "
                    f"{s['gateway_mib_per_s']:.0f} | {s['ratio']:.2f} | "
                    f"{s['gateway_peak_rss_growth_mb']:.1f} MB | {s['gateway_cpu_s']:.2f} | "
                    f"{s['client_cpu_share_max']:.0%} | {s['intact']} |")
        return "\n".join(lines)
    lines = ["| upstream | size | op | target | MiB/s | ÷ direct | proxy CPU s | gateway peak "
             "RSS growth | intact |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, ops in summary.items():
        for op, s in ops.items():
            for target, rate in s["mib_per_s"].items():
                cpu = s["proxy_cpu_s"].get(target)
                growth = s.get("gateway_peak_rss_growth_mb", {}).get(target)
                lines.append(
                    f"| {kind} | {sizes[kind]} MiB | {op} | {target} | {rate:.0f} | "
                    f"{s['ratio_to_direct'][target]:.2f} | "
                    f"{'-' if cpu is None else f'{cpu:.2f}'} | "
                    f"{'-' if growth is None else f'{growth:.1f} MB'} | {s['intact']} |")
    return "\n".join(lines)


def send_floor_table(data: dict[str, Any]) -> str:
    lines = ["| clients | sender threads | send loop ms | CPU µs/send | arrival p50 ms | p99 ms "
             "| max ms |",
             "|---|---|---|---|---|---|---|"]
    for result in data["results"]:
        m = result["median"]
        lines.append(f"| {result['clients']} | {result.get('threads', 1)} | {m['loop_ms']:.1f} | "
                     f"{m['loop_cpu_us_per_send']:.1f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                     f"{m['max_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    for name in ("rest_proxy.json", "rest_proxy-split.json", "rest_proxy-s10.json",
                 "rest_proxy-s9.json", "rest_proxy-s8.json"):
        rest = _load(name)
        if rest:
            print(f"## {name}\n" + _context(rest) + "\n\n" + rest_proxy.markdown(rest["results"])
                  + "\n")
    for name in ("fanout.json", "fanout-throughput.json", "fanout-broadcast.json",
                 "fanout-broadcast-split.json", "fanout-s9.json", "fanout-throughput-s9.json", "fanout-broadcast-s9.json",
                 "fanout-s8.json", "fanout-broadcast-s8.json", "fanout-after-f1-f5.json",
                 "fanout-broadcast-after-f1-f5.json", "fanout-broadcast-norecheck.json",
                 "fanout-broadcast-fastsend.json", "fanout-norecheck.json",
                 "fanout-norecheck-fastsend.json", "fanout-norecheck-r2.json",
                 "fanout-norecheck-fastsend-r2.json", "fanout-after.json",
                 "fanout-broadcast-after.json"):
        fan = _load(name)
        if fan:
            print(f"## {name}\n" + _context(fan) + f" env {fan.get('gateway_env')}, "
                  f"fast send {fan.get('bench_fast_send', False)}\n\n"
                  + fanout.markdown(fan["results"]) + "\n")
            for r in fan["results"]:
                print(f"- {r['mode']} {r['clients']}: open {r['open_seconds']:.1f} s, "
                      f"idle gateway CPU {r.get('idle_gateway_cpu_share', 0):.0%}, idle upstream "
                      f"CPU {r.get('idle_upstream_cpu_share', 0):.0%}, idle upstream requests "
                      f"{r.get('idle_upstream_requests')}, open requests "
                      f"{r.get('open_upstream_requests')}, gateway CPU {r['gateway_cpu_s']:.1f} s, "
                      f"window {r['window_s']:.1f} s, load CPU {r['load_cpu_s']:.2f} s")
            print()
    for name in ("send_floor.json", "send_floor-s9.json"):
        floor = _load(name)
        if floor:
            print(f"## {name}\n" + _context(floor) + "\n\n" + send_floor_table(floor) + "\n")
    for name in ("reconnect.json", "reconnect-s9.json", "reconnect-s8.json", "reconnect-after-f4.json",
                 "reconnect-norecheck.json", "reconnect-after.json"):
        storm = _load(name)
        if storm:
            print(f"## {name}\n" + _context(storm) + "\n\n" + reconnect_table(storm["result"]) + "\n")
    for name, title in (("stream.json", "Stream"), ("stream-s9.json", "Stream, session 9"),
                        ("stream-s8.json", "Stream, session 8"),
                        ("stream-after.json", "Stream after")):
        stream = _load(name)
        if stream:
            print(f"## {title}\n" + _context(stream) + "\n\n"
                  + stream_table(stream["summary"], stream) + "\n")


if __name__ == "__main__":
    main()
