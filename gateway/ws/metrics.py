"""The WebSocket layer's counters, as a snapshot and in Prometheus text format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.ws.hub import FeedHub

__all__ = ["WsMetrics"]


@dataclass
class WsMetrics:
    """Counters of the WebSocket layer (exported by the metrics endpoint).

    Attributes:
        connections: Open connections.
        connections_total: Connections accepted since start.
        rejected_handshakes: Handshakes refused (credentials or origin).
        subscriptions: Active subscriptions.
        messages_sent: Messages written to sockets.
        coalesced: Queued changes replaced by a newer change of the same document.
        slow_closed: Connections closed for exceeding their queue budget.
        invalid_messages: Client messages refused.
        lag_sum: Sum of delivery lags (seconds from upstream receipt to socket write).
        lag_count: Number of lag samples.
        lag_max: Largest lag seen.
        resumes_from_memory: Resumes served from a shared feed's recent changes.
    """

    connections: int = 0
    connections_total: int = 0
    rejected_handshakes: int = 0
    subscriptions: int = 0
    messages_sent: int = 0
    coalesced: int = 0
    slow_closed: int = 0
    invalid_messages: int = 0
    lag_sum: float = 0.0
    lag_count: int = 0
    lag_max: float = 0.0
    resumes_from_memory: int = 0

    def observe_lag(self, seconds: float) -> None:
        """Record one delivery lag."""
        seconds = max(0.0, seconds)
        self.lag_sum += seconds
        self.lag_count += 1
        self.lag_max = max(self.lag_max, seconds)

    def snapshot(self, hub: FeedHub | None = None) -> dict[str, float | int]:
        """All counters (plus the hub's upstream feeds) as a flat mapping."""
        values: dict[str, float | int] = {
            "ws_connections": self.connections,
            "ws_connections_accepted_total": self.connections_total,
            "ws_rejected_handshakes_total": self.rejected_handshakes,
            "ws_subscriptions": self.subscriptions,
            "ws_messages_sent_total": self.messages_sent,
            "ws_coalesced_total": self.coalesced,
            "ws_slow_clients_closed_total": self.slow_closed,
            "ws_invalid_messages_total": self.invalid_messages,
            "ws_resumes_from_memory_total": self.resumes_from_memory,
            "ws_delivery_lag_seconds_sum": self.lag_sum,
            "ws_delivery_lag_seconds_count": self.lag_count,
            "ws_delivery_lag_seconds_max": self.lag_max,
        }
        if hub is not None:
            values["ws_upstream_feeds"] = len(hub.feeds)
            values["ws_upstream_feeds_opened_total"] = hub.feeds_opened
            values["ws_upstream_changes_total"] = hub.changes_received
            values["ws_fanout_seconds_sum"] = hub.fanout_seconds
            values["ws_fanout_seconds_count"] = hub.fanouts
            values["ws_fanout_seconds_max"] = hub.fanout_max_seconds
        return values

    def prometheus(self, hub: FeedHub | None = None) -> str:
        """The counters in Prometheus text format (``wallaby_`` + the snapshot's names)."""
        values = self.snapshot(hub)
        summaries = [name for name in _SUMMARIES if f"{name}_count" in values]
        lines = []
        for name, value in values.items():
            if name.startswith(tuple(_SUMMARIES)):
                continue
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP wallaby_{name} {_HELP[name]}", f"# TYPE wallaby_{name} {kind}",
                      f"wallaby_{name} {value}"]
        for name in summaries:
            largest = f"wallaby_{name.removesuffix('_seconds')}_max_seconds"
            lines += [
                f"# HELP wallaby_{name} {_HELP[name]}",
                f"# TYPE wallaby_{name} summary",
                f"wallaby_{name}_sum {values[f'{name}_sum']:.6f}",
                f"wallaby_{name}_count {values[f'{name}_count']}",
                f"# HELP {largest} {_SUMMARIES[name]}",
                f"# TYPE {largest} gauge",
                f"{largest} {values[f'{name}_max']:.6f}",
            ]
        return "\n".join(lines) + "\n"


#: Summaries (``_sum``, ``_count``) with a gauge of their largest value, and its help.
_SUMMARIES = {
    "ws_delivery_lag_seconds": "Largest delivery lag seen.",
    "ws_fanout_seconds": "Longest fan-out of one upstream batch.",
}

_HELP = {
    "ws_connections": "Open WebSocket connections.",
    "ws_connections_accepted_total": "WebSocket connections accepted.",
    "ws_rejected_handshakes_total": "WebSocket handshakes refused (credentials or origin).",
    "ws_subscriptions": "Active live-changes subscriptions.",
    "ws_messages_sent_total": "Messages written to WebSockets.",
    "ws_coalesced_total": "Queued changes replaced by a newer change of the same document.",
    "ws_slow_clients_closed_total": "Connections closed for exceeding their send queue budget.",
    "ws_invalid_messages_total": "Client messages refused.",
    "ws_resumes_from_memory_total": "Resumes served from a shared feed's recent changes.",
    "ws_delivery_lag_seconds": "Seconds from upstream receipt of a change to its socket write.",
    "ws_fanout_seconds": "Seconds one upstream batch took to reach every subscriber of its feed "
                         "(the process does nothing else meanwhile).",
    "ws_upstream_feeds": "Open shared upstream _changes feeds.",
    "ws_upstream_feeds_opened_total": "Shared upstream _changes feeds opened.",
    "ws_upstream_changes_total": "Changes received from upstream feeds.",
}
