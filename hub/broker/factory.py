"""Choose the between-nodes backend by URL: the broker plus the state nodes share through it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from hub.broker.base import Broker
from hub.broker.memory import MemoryBroker
from hub.config import Settings
from hub.domains.location import LocalPositionBook, PositionBook
from hub.domains.presence import LocalPresenceLedger, PresenceLedger
from hub.limits import LocalRateLimiter, RateLimiter
from hub.metrics import HubMetrics


@dataclass(frozen=True, slots=True)
class Cluster:
    """What one node shares with the others: fan-out, presence, rate limits and drivers' positions."""

    broker: Broker
    presence: PresenceLedger
    rate_limiter: RateLimiter
    positions: PositionBook


def open_cluster(settings: Settings, metrics: HubMetrics) -> Cluster:
    """``memory://`` (one node, the default) or ``redis://host:port/db`` (any number of nodes).

    Nothing connects until the broker starts. The Redis driver is imported only for
    a Redis URL.

    Raises:
        ValueError: for an unknown scheme, or a Redis URL without the driver installed.
    """
    url = settings.broker
    scheme = urlparse(url).scheme
    if url in ("", "memory", "memory://"):
        return Cluster(
            broker=MemoryBroker(),
            presence=LocalPresenceLedger(),
            rate_limiter=LocalRateLimiter(settings.rate_per_second, settings.rate_burst),
            positions=LocalPositionBook(settings.gps_position_ttl_s),
        )
    if scheme in ("redis", "rediss", "unix"):
        try:
            from hub.broker.redis import RedisBroker
            from hub.broker.redis_geo import RedisPositionBook
            from hub.broker.redis_state import RedisPresenceLedger, RedisRateLimiter
        except ImportError as exc:
            raise ValueError(
                f"the redis broker needs the redis driver: pip install 'soko-live[redis]' ({exc})"
            ) from None
        broker = RedisBroker(url, settings.node_id, metrics)
        return Cluster(
            broker=broker,
            presence=RedisPresenceLedger(broker, metrics, ttl=settings.presence_ttl),
            rate_limiter=RedisRateLimiter(broker, metrics, settings.rate_per_second, settings.rate_burst),
            positions=RedisPositionBook(broker, metrics, ttl=settings.gps_position_ttl_s),
        )
    raise ValueError(f"unsupported broker URL {url!r}: use memory:// or redis://host:port/db")
