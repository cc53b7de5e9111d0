"""Benchmark 3: reconnect storm — 1,000 subscribers drop at once and resume from their last seq.

Usage: ``make bench-reconnect`` (or ``.venv/bin/python -m benches.reconnect``).

1,000 WebSocket subscribers follow one database through the gateway while a writer
PUTs documents straight to the upstream at a fixed rate for the whole run. Mid-run every
client aborts its socket at the same instant, waits ``--gap`` seconds (writes go on, so
every client misses some), then all reconnect at once and subscribe with ``since`` = the
seq of the last change they had received.

Reports: time from the reconnect until every client has caught up (received every
change acknowledged before its new ``subscribe`` that it had missed), the gateway's
upstream requests during the storm by kind (from the access log of an nginx placed
between gateway and upstream) against the number of clients, and, per client, the
complete set of documents received over both connections compared with everything
the writer wrote: missing and duplicated deliveries (must be 0 and 0).
Results: ``benches/results/reconnect.json`` and ``reconnect.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from benches.wsbench import (
    RESULTS,
    Stack,
    Writer,
    call_all,
    create_db,
    gateway_env,
    listen_overflows,
    load_deliveries,
    machine,
    percentiles,
    spawn_clients,
)


def main() -> None:
    """Run the storm once; write JSON and plot; print a summary table."""
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of writes before the drop")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds all clients stay away")
    parser.add_argument("--after", type=float, default=8.0, help="seconds of writes after the drop")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="pace reconnects (at most N handshakes in flight); default: all at once")
    parser.add_argument("--output", default=str(RESULTS / "reconnect.json"))
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    stack = Stack.start("bench-reconnect-", extra_env=gateway_env())
    row: dict[str, Any] = {"clients": args.clients, "rate_per_s": args.rate, "gap_s": args.gap,
                           "concurrency": args.concurrency, "gateway_env": gateway_env()}
    try:
        create_db(stack, "storm")
        loads = spawn_clients("ws", stack.gateway.port, "storm", stack.auth, args.clients, 1)
        try:
            opened = call_all(loads, {"cmd": "open", "concurrency": 200}, 600)
            row["connected"] = sum(a["ready"] for a in opened)
            writer = Writer(stack.upstream.port, "storm", stack.auth)
            writer.next_doc = 1
            written: list[int] = []
            failure: list[BaseException] = []

            def write() -> None:
                try:
                    written.extend(writer.run(args.rate, args.before + args.gap + args.after))
                except BaseException as exc:  # reported below
                    failure.append(exc)

            thread = threading.Thread(target=write, daemon=True)
            thread.start()
            time.sleep(args.before)
            wall_drop = time.time()
            load_cpu0 = (loads[0].cpu(), time.monotonic())
            overflows0 = listen_overflows()
            storm = call_all(loads, {"cmd": "drop", "gap": args.gap,
                                     "concurrency": args.concurrency}, 600)[0]
            row["listen_overflows_during_reconnect"] = listen_overflows() - overflows0
            row["load_cpu_share_during_storm"] = ((loads[0].cpu() - load_cpu0[0])
                                                  / (time.monotonic() - load_cpu0[1]))
            row.update({"resubscribed_s": storm["resubscribed_seconds"],
                        "reconnected": storm["ready"], "reconnect_failures": storm["failed"],
                        "clients_without_seq": storm["no_seq"], "errors": storm["errors"]})
            print(json.dumps(storm), flush=True)
            thread.join(args.before + args.gap + args.after + 60)
            if failure:
                raise failure[0]
            expected = args.clients * len(written)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if call_all(loads, {"cmd": "stats"})[0]["deliveries"] >= expected:
                    break
                time.sleep(0.2)
            wall_end = time.time()
            path = str(stack.workdir / "storm.npz")
            loads[0].call({"cmd": "dump", "path": path})
        finally:
            for load in loads:
                load.close()
        data = load_deliveries([path])
        docs = np.array(written)
        ack = np.array([writer.acks[n] for n in written])
        resumed, resub = storm["resumed_at"], data["subscribe_sent"]
        conn, gen, doc, recv = data["conn"], data["gen"], data["doc"], data["time"]
        span = int(docs.max()) + 1
        pairs = conn * span + doc
        unique = np.unique(pairs)
        row["writes"] = len(written)
        row["writes_during_gap"] = int(((ack >= storm["dropped_at"]) & (ack <= resumed)).sum())
        row["deliveries"] = len(doc)
        row["missing"] = int(args.clients * len(written) - len(unique))
        row["duplicates"] = int(len(doc) - len(unique))
        pairs0, pairs1 = pairs[gen == 0], pairs[gen == 1]
        unique0, unique1 = np.unique(pairs0), np.unique(pairs1)
        row["duplicates_within_first_connection"] = int(len(pairs0) - len(unique0))
        row["duplicates_within_resumed_connection"] = int(len(pairs1) - len(unique1))
        row["duplicates_across_reconnect"] = len(np.intersect1d(unique0, unique1))
        failed = ~np.isfinite(resub)
        row["missing_excluding_failed_reconnects"] = int(
            (args.clients - int(failed.sum())) * len(written)
            - len(np.unique(pairs[~np.isin(conn, np.flatnonzero(failed))])))
        # Per client: the changes acked before its new subscribe that gen 0 did not get.
        ack_of = np.full(span, np.inf)
        ack_of[docs] = ack
        got0 = set((pairs[gen == 0]).tolist())
        caught = np.full(args.clients, np.nan)
        missed_counts = np.zeros(args.clients, dtype=int)
        g1 = gen == 1
        for c in range(args.clients):
            mine = g1 & (conn == c)
            if not np.isfinite(resub[c]):
                caught[c] = np.inf  # did not reconnect
                continue
            needed = [n for n in written if ack_of[n] <= resub[c] and c * span + n not in got0]
            missed_counts[c] = len(needed)
            if not needed:
                caught[c] = resub[c]
                continue
            times = recv[mine][np.isin(doc[mine], needed)]
            caught[c] = times.max() if len(times) == len(needed) else np.inf
        row["missed_per_client_mean"] = float(missed_counts.mean())
        row["caught_up_all_s"] = float(np.max(caught) - resumed)
        row["caught_up_p50_s"] = float(np.median(caught) - resumed)
        row["caught_up_p99_s"] = float(np.percentile(caught, 99) - resumed)
        after = g1 & (recv > resumed)
        latency = recv[after] - ack_of[doc[after]]
        row["latency_after_storm"] = percentiles(latency[np.isfinite(latency)])
        requests = stack.upstream_requests(wall_drop, wall_end)
        row["upstream_requests_storm"] = requests
        row["upstream_requests_total"] = sum(requests.values())
        row["upstream_requests_per_client"] = row["upstream_requests_total"] / args.clients
        row["upstream_requests_excluding_shared_feed"] = sum(
            v for k, v in requests.items() if "live feed" not in k)
        row["max_concurrent_catchup_changes"] = stack.max_concurrent_changes(wall_drop, "since=")
        row["ws_metrics"] = stack.ws_metrics()
        caught_rel = np.sort(caught - resumed)
    finally:
        stack.stop()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "reconnect", "started": started,
                               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                               "machine": machine(), "result": row}, indent=2, default=str))
    print(json.dumps(row, indent=1, default=str))
    plot(caught_rel, row, out.with_suffix(".png"))


def plot(caught: Any, row: dict[str, Any], path: Path) -> None:
    """Share of clients caught up over time since the reconnect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    finite = caught[np.isfinite(caught)]
    ax.plot(finite, np.arange(1, len(finite) + 1) / len(caught))
    ax.set_xlabel("seconds since all clients reconnected at once")
    ax.set_ylabel("share of clients caught up")
    ax.set_title(f"Reconnect storm: {row['clients']} clients, "
                 f"{row['upstream_requests_total']} upstream requests")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
