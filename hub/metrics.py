"""Prometheus metrics, in a registry owned by one app (nothing global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class HubMetrics:
    """Every metric the hub exports. One instance per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("soko_connections", "Sockets connected to the namespace", registry=r)
        self.events_in = Counter("soko_events_in_total", "Client events received", ["event"], registry=r)
        self.events_out = Counter(
            "soko_events_out_total", "Frames published, per event", ["event"], registry=r
        )
        self.errors = Counter("soko_errors_total", "Error replies, per code", ["code"], registry=r)
        self.fanout_drops = Counter(
            "soko_fanout_drops_total", "Connections dropped as slow consumers (send queue full)", registry=r
        )
        self.rejected_handshakes = Counter(
            "soko_handshakes_rejected_total", "Refused handshakes, per reason", ["reason"], registry=r
        )
        self.catchup_entries = Histogram(
            "soko_catchup_entries",
            "Entries per catch-up page",
            buckets=(0, 1, 10, 50, 100, 200, 500),
            registry=r,
        )
        self.handler_seconds = Histogram(
            "soko_handler_seconds",
            "Event handler latency",
            ["event"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.http_requests = Counter(
            "soko_http_requests_total", "Service API requests", ["route", "status"], registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
