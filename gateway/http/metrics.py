"""Prometheus metrics, hand-written (text exposition format 0.0.4, no global registry)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from twisted.logger import Logger

__all__ = ["KNOWN_METHODS", "Collector", "Histogram", "Metrics"]

#: Renders more metrics (complete lines of Prometheus text) at every scrape.
Collector = Callable[[], str]

_log = Logger(namespace="gateway.metrics")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{k}="{esc(v)}"' for k, v in pairs)


#: Methods counted under their own name; a client can send any token.
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "COPY", "CONNECT", "TRACE"}
)


@dataclass
class Histogram:
    """Cumulative latency buckets, a sum and a count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def lines(self, name: str, labels: tuple[tuple[str, str], ...]) -> list[str]:
        """Exposition lines of this histogram."""
        out, running = [], 0
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{{{_labels((*labels, ('le', le)))}}} {running}")
        prefix = f"{{{_labels(labels)}}}" if labels else ""
        out.append(f"{name}_sum{prefix} {self.total:.6f}")
        out.append(f"{name}_count{prefix} {self.count}")
        return out


@dataclass
class Metrics:
    """The gateway's counters and histograms."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[tuple[str], Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    upstream: dict[tuple[str], Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    errors: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    in_flight: int = 0
    collectors: list[Collector] = field(default_factory=list)

    def add_collector(self, collector: Collector) -> None:
        """Append ``collector()``'s text to every :meth:`render` (e.g. WebSocket metrics)."""
        self.collectors.append(collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count a finished request and its latency (any other method counts as ``OTHER``)."""
        if method not in KNOWN_METHODS:
            method = "OTHER"  # a client's made-up method must not make a new series
        self.requests[(route, method, str(status))] += 1
        self.latency[(route,)].observe(seconds)

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Record the latency of one upstream CouchDB call."""
        self.upstream[(route,)].observe(seconds)

    def count_error(self, route: str, error: str) -> None:
        """Count an error answer by its ``error`` code."""
        self.errors[(route, error)] += 1

    def render(self) -> str:
        """The metrics in Prometheus text format."""
        lines = [
            "# HELP wallaby_http_requests_total HTTP requests by route, method and status.",
            "# TYPE wallaby_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            labels = (("route", route), ("method", method), ("status", status))
            lines.append(f"wallaby_http_requests_total{{{_labels(labels)}}} {n}")
        lines += [
            "# HELP wallaby_http_request_duration_seconds Request latency by route.",
            "# TYPE wallaby_http_request_duration_seconds histogram",
        ]
        for (route,), hist in sorted(self.latency.items()):
            lines += hist.lines("wallaby_http_request_duration_seconds", (("route", route),))
        lines += [
            "# HELP wallaby_upstream_duration_seconds CouchDB call latency by route.",
            "# TYPE wallaby_upstream_duration_seconds histogram",
        ]
        for (route,), hist in sorted(self.upstream.items()):
            lines += hist.lines("wallaby_upstream_duration_seconds", (("route", route),))
        lines += [
            "# HELP wallaby_errors_total Error answers by route and error code.",
            "# TYPE wallaby_errors_total counter",
        ]
        for (route, error), n in sorted(self.errors.items()):
            pairs = (("route", route), ("error", error))
            lines.append(f"wallaby_errors_total{{{_labels(pairs)}}} {n}")
        lines += [
            "# HELP wallaby_http_requests_in_flight Requests being served.",
            "# TYPE wallaby_http_requests_in_flight gauge",
            f"wallaby_http_requests_in_flight {self.in_flight}",
        ]
        text = "\n".join(lines) + "\n"
        for collector in self.collectors:
            try:
                extra = collector()
            except Exception:
                _log.failure("metrics collector {collector!r} failed", collector=collector)
                continue
            if extra:
                text += extra if extra.endswith("\n") else extra + "\n"
        return text
