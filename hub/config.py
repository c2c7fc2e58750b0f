"""One frozen Settings object, read once from ``SOKO_*`` environment variables and CLI flags."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ulid import ULID

from protocol.records import DLQ_TOPIC, GROUP, ORDER_TOPICS, STOCK_TOPICS


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the hub is configured with. Construct with :meth:`from_env`.

    Each field can be set with the environment variable ``SOKO_<FIELD>`` (upper case);
    tuple fields take a comma-separated list. CLI flags override the environment.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    data: Path = Path(".soko")
    """Directory for the SQLite file and the local JWT secret."""
    store: str = ""
    """Store URL; empty means ``sqlite:///<data>/soko.db``."""
    broker: str = "memory://"
    """``memory://`` for one node, ``redis://host:port/db`` to share fan-out, presence and rate limits."""
    presence_ttl: float = 15.0
    """With Redis: seconds after which a dead node's staff sockets stop counting a boutique online."""
    gps_max_accuracy_m: float = 100.0
    """Driver fixes whose accuracy radius (metres) exceeds this are dropped."""
    gps_min_distance_m: float = 5.0
    """Fixes closer than this (metres) to the driver's last kept fix are dropped (GPS jitter when parked)."""
    gps_min_period_s: float = 0.8
    """Fixes sooner than this (seconds) after the last kept fix are dropped. Below 1 s so a 1 Hz device
    whose timestamps jitter by a few hundred ms keeps every fix; faster senders are thinned to ~1 Hz."""
    gps_max_speed_kmh: float = 250.0
    """Fixes implying a faster move (km/h) from the last kept fix are dropped as GPS jumps."""
    gps_heartbeat_s: float = 30.0
    """A fix this long (seconds) after the last kept one is kept despite the period/distance filters."""
    gps_position_ttl_s: float = 120.0
    """Seconds a driver's last known position (tracking, dispatch) and filter state outlive its last fix."""
    gps_track_sample_s: float = 15.0
    """At most one persisted track point per order per this many seconds (``track.history``)."""
    gps_future_skew_s: float = 10.0
    """How far (seconds) a fix's device timestamp may be ahead of the hub's clock before it is refused."""
    allow_origin: tuple[str, ...] = ()
    """Browser Origins allowed besides the hub's own. Requests without an Origin header (native apps) pass."""
    jwt_secret: str = ""
    """HS256 secret; empty means the secret file in the data dir (created 0600 on first use)."""
    jwt_public_key: str = ""
    """Path to a PEM public key; when set, tokens must be RS256/ES256 from the marketplace's auth service."""
    jwt_algorithm: str = "HS256"
    jwt_audience: str = "soko-live"
    stripe_webhook_secret: str = ""
    """Signing secret (``whsec_…``) of the ``/webhooks/stripe`` endpoint; empty: that route answers 503."""
    max_frame_bytes: int = 64 * 1024
    rate_per_second: float = 20.0
    """Client events per second per user, across all the user's sockets (and nodes, with Redis)."""
    rate_burst: int = 40
    rate_strikes: int = 20
    """Rejected events in a row on one socket before it is disconnected."""
    listen_backlog: int = 4096
    """TCP listen backlog of ``soko hub`` (capped by the kernel's somaxconn). A reconnect storm after a
    restart overflows a short queue, and every dropped SYN costs its client 1 s, then 3 s, 7 s..."""
    send_queue_max: int = 1000
    """Packets a connection may have queued before it is dropped as a slow consumer."""
    send_buffer_max_bytes: int = 1 << 20
    """Unsent bytes a connection's transport may hold before it is dropped as a slow consumer."""
    ws_deflate: bool = False
    """Negotiate WebSocket permessage-deflate. Off: CPU per recipient, and small frames barely shrink."""
    namespace_timeout: float = 10.0
    typing_interval: float = 1.0
    """Minimum seconds between two typing indicators of one socket in one stream."""
    redelivery_batch: int = 200
    """Unacked notifications pushed per inbox on connect."""
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    shutdown_grace: float = 2.0
    """Seconds a stopping hub gives open WebSockets to finish closing before it cuts them."""
    kafka_bootstrap: str = ""
    """Comma-separated ``host:port`` of the platform's Kafka brokers; empty turns Kafka off."""
    kafka_group: str = GROUP
    """Consumer group shared by every hub node: each ingest partition is read by one node."""
    kafka_order_topics: tuple[str, ...] = ORDER_TOPICS
    """Topics of JSON ``OrderEvent`` records (order, delivery, payment)."""
    kafka_stock_topics: tuple[str, ...] = STOCK_TOPICS
    """Topics of JSON ``StockEvent`` records. With both topic lists empty there is no consumer."""
    kafka_dlq_topic: str = DLQ_TOPIC
    """Where records that can never be applied go, with the error in their headers."""
    kafka_not_found_grace: float = 30.0
    """Seconds an event naming an unknown order is retried (its ``order.created`` may be late) before
    it is dead-lettered. Its partition waits meanwhile; other partitions go on."""
    kafka_analytics_topic: str = ""
    """Topic for analytics records (chat, notifications, stock changes, driver positions); empty: off."""
    kafka_analytics_buffer: int = 10_000
    """Analytics records held while Kafka is slow or down; beyond that they are dropped and counted."""
    kafka_session_timeout: float = 10.0
    """Seconds without a heartbeat before Kafka gives a dead node's partitions to the others."""
    kafka_heartbeat_interval: float = 3.0
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{str(ULID())[-6:]}")

    def __post_init__(self) -> None:
        """Raises ValueError for settings that would divide by zero or spin."""
        for name in (
            "rate_per_second",
            "presence_ttl",
            "rate_burst",
            "gps_max_accuracy_m",
            "gps_max_speed_kmh",
            "gps_heartbeat_s",
            "gps_position_ttl_s",
            "gps_track_sample_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"SOKO_{name.upper()} must be greater than 0")
        for name in ("gps_min_distance_m", "gps_min_period_s", "gps_future_skew_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"SOKO_{name.upper()} must not be negative")

    @property
    def store_url(self) -> str:
        """The effective store URL."""
        return self.store or f"sqlite:///{self.data / 'soko.db'}"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), then apply non-None ``overrides``.

        Raises:
            ValueError: naming the variable when a value cannot be parsed.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            key = f"SOKO_{f.name.upper()}"
            if key not in source:
                continue
            raw = source[key]
            current = getattr(defaults, f.name)
            try:
                values[f.name] = _parse(raw, current)
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r}: {exc}") from None
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return replace(defaults, **values)


def _parse(raw: str, current: object) -> object:
    if isinstance(current, bool):
        return raw.lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(current, Path):
        return Path(raw)
    return raw
