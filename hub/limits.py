"""Per-connection token bucket."""

from __future__ import annotations

import time


class TokenBucket:
    """Allows ``rate`` events per second on average and bursts of up to ``burst``.

    ``strikes`` counts rejections since the last accepted event, so the caller can
    disconnect a client that keeps flooding after being told to slow down.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens", "strikes")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self.strikes = 0

    def take(self) -> bool:
        """Consume one token; False (and one more strike) when the bucket is empty."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.strikes = 0
            return True
        self.strikes += 1
        return False
