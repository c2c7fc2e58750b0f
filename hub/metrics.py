"""Prometheus metrics, in a registry owned by one app (nothing global)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from protocol.messages import StockOutcome


class HubMetrics:
    """Every metric the hub exports. One instance per app."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
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
        self.broker_up = Gauge(
            "soko_broker_up",
            "1 while the link to the other hub nodes works (always 1 on memory://)",
            registry=r,
        )
        self.broker_up.set(1)
        self.broker_dropped = Counter(
            "soko_broker_dropped_total",
            "Envelopes not sent to other nodes because the broker was down (healed by client catch-up)",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "soko_broker_reconnects_total", "Attempts to re-establish the broker subscription", registry=r
        )
        self.shared_state_errors = Counter(
            "soko_shared_state_errors_total",
            "Redis presence/rate-limit/position calls that failed and fell back to this node's view",
            ["operation"],
            registry=r,
        )
        self.gps_fixes = Counter(
            "soko_gps_fixes_total",
            "Valid driver GPS fixes, per outcome (kept, or the filter that dropped it: accuracy, outdated, "
            "speed, period, distance)",
            ["outcome"],
            registry=r,
        )
        self.http_requests = Counter(
            "soko_http_requests_total", "Service API requests", ["route", "status"], registry=r
        )
        self.stripe_webhooks = Counter(
            "soko_stripe_webhooks_total",
            "Stripe webhook deliveries, per outcome (accepted, duplicate, ignored_*, bad_signature, ...)",
            ["outcome"],
            registry=r,
        )
        self.payment_effects = Counter(
            "soko_payment_effects_total",
            "Payment events taken from the durable intake, per outcome (applied, duplicate, mismatch)",
            ["outcome"],
            registry=r,
        )
        self.payment_intake_failures = Counter(
            "soko_payment_intake_failures_total",
            "Failed passes over the payment intake (retried with backoff; nothing is dropped)",
            registry=r,
        )
        self.kafka_records = Counter(
            "soko_kafka_records_total",
            "Kafka ingest records settled, per outcome (applied, duplicate, dead_letter)",
            ["outcome"],
            registry=r,
        )
        self.kafka_retries = Counter(
            "soko_kafka_retries_total",
            "Failed attempts at a Kafka ingest record that will be retried, per error name",
            ["error"],
            registry=r,
        )
        self.kafka_blocked_partitions = Gauge(
            "soko_kafka_blocked_partitions",
            "Ingest partitions paused while their next record waits for a retry",
            registry=r,
        )
        self.kafka_analytics_sent = Counter(
            "soko_kafka_analytics_sent_total", "Analytics records Kafka acknowledged", registry=r
        )
        self.kafka_analytics_dropped = Counter(
            "soko_kafka_analytics_dropped_total",
            "Analytics records dropped, per reason (buffer_full: Kafka down or slow; send_failed; shutdown)",
            ["reason"],
            registry=r,
        )

        self.stock_updates = Counter(
            "soko_stock_updates_total",
            "Stock changes received, per path (socket, http, kafka) and outcome (applied, duplicate, stale)",
            ["path", "outcome"],
            registry=r,
        )

        self.device_health = Counter(
            "soko_device_health_total",
            "Device health reports, per sensor state (ok, silent, invalid) and outcome (notified, duplicate)",
            ["state", "outcome"],
            registry=r,
        )

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once and then kept.

        prometheus-client's ``labels`` validates, takes a lock and builds its key on every
        call; the per-event paths (events in and out, handler latency, errors) call this
        instead. Label values there come from fixed sets, so the cache stays small.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def count_device_health(self, state: str, duplicate: bool) -> None:
        """Count one ``device.health`` report by the state it reported and whether it was new."""
        self.device_health.labels(state, "duplicate" if duplicate else "notified").inc()

    def count_stock(self, outcome: StockOutcome, path: str) -> None:
        """Count one stock change by what became of it."""
        kind = "applied" if outcome.applied else "duplicate" if outcome.duplicate else "stale"
        self.stock_updates.labels(path, kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
