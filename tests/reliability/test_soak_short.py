"""The short soak (≤ 60 s) of the default test run: mixed REST + WebSocket load on a real
gateway process; no unexpected error, nothing lost, no fd/connection leak, bounded RSS.
The long version is ``make soak`` (``tests/reliability/soak.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import deferToThread

from tests.conftest import CouchBackend
from tests.reliability.conftest import Couch, GatewayProcess, record, spawn_gateway
from tests.reliability.soak import SoakConfig, run_soak

SECONDS = float(os.environ.get("RELIABILITY_SHORT_SOAK_SECONDS", "40"))


@pytest.mark.timeout(180)
async def test_short_soak_no_errors_no_loss_no_leak_bounded_rss(
    couch: Couch, couch_backend: CouchBackend, tmp_path: Path, gateways: list[GatewayProcess],
    reactor: Any,
) -> None:
    gateway = await deferToThread(spawn_gateway, couch_backend.admin_url, tmp_path,
                                  WALLABY_FEED_HEARTBEAT_MS="2000")
    gateways.append(gateway)
    config = SoakConfig(duration=SECONDS, rest_workers=4, ws_clients=10, churn_seconds=2.0,
                        sample_every=2.0, settle_seconds=15.0)
    summary = await run_soak(reactor, gateway, couch, config)
    growth = summary["rss_mib_end"] - (summary["rss_mib_after_warmup"] or summary["rss_mib_start"])
    record("soak", f"short_soak_{int(SECONDS)}s", **{k: v for k, v in summary.items()
                                                    if k not in ("rss_series", "fd_series", "statuses")},
           rss_growth_after_warmup_mib=round(growth, 1),
           passed=(summary["unexpected_errors"] == 0 and summary["changes_lost"] == 0
                   and summary["duplicates"] == 0 and summary["client_conns_after"] <= 1
                   and summary["non_upstream_fds_after"] <= summary["non_upstream_fds_before"] + 2
                   and growth < 30))
    assert summary["requests"] > 200
    assert summary["unexpected_errors"] == 0, summary["unexpected_sample"]
    assert summary["changes_lost"] == 0 and summary["duplicates"] == 0
    assert summary["changes_expected_per_client"] > 50
    assert summary["ws_reconnects"] > 0
    assert summary["client_conns_after"] <= 1, summary
    assert summary["non_upstream_fds_after"] <= summary["non_upstream_fds_before"] + 2, summary
    assert not summary["ws_gauges_after"].get("ws_connections"), summary["ws_gauges_after"]
    assert not summary["ws_gauges_after"].get("ws_upstream_feeds"), summary["ws_gauges_after"]
    assert growth < 30, f"RSS grew {growth:.1f} MiB after warm-up: {summary['rss_series']}"
