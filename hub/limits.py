"""Rate limits on client events, per user across all of the user's sockets.

:class:`LocalRateLimiter` keeps one token bucket per user in this process. With the
Redis broker, :class:`hub.broker.redis_state.RedisRateLimiter` keeps one per user
for the whole cluster, so a user spread over several nodes gets the same budget.
"""

from __future__ import annotations

import time
from typing import Protocol


class RateLimiter(Protocol):
    async def allow(self, key: str) -> bool:
        """Take one event from ``key``'s budget; False when it is spent."""
        ...


class TokenBucket:
    """Allows ``rate`` events per second on average and bursts of up to ``burst``."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Consume one token; False when the bucket is empty."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def full(self) -> bool:
        """True when the bucket has refilled completely (it holds no state worth keeping)."""
        self._refill()
        return self._tokens >= self._burst

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


class LocalRateLimiter:
    """One token bucket per key, in this process.

    Memory is bounded by the keys active recently: when more than ``prune_above``
    buckets exist, the full ones (idle for ``burst / rate`` seconds) are dropped.
    """

    def __init__(self, rate: float, burst: int, *, prune_above: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._prune_above = prune_above
        self._buckets: dict[str, TokenBucket] = {}

    async def allow(self, key: str) -> bool:
        return self.take(key)

    def take(self, key: str) -> bool:
        """The synchronous form of :meth:`allow`."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_above:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full()}
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
        return bucket.take()
