"""Per-connection deadlines on one loop timer per kind, not one timer per connection.

A loop timer handle costs about 550-700 bytes per connection with uvloop (measured with
tracemalloc on a hub holding 5000 idle WebSocket connections, which each had two: the
next Engine.IO PING and the token expiry). The two kinds of deadline here hold
each connection's deadline in a shared structure and arm one timer, for the earliest.

* :class:`FixedDelayQueue`: every entry waits the same delay (the PING interval), so
  entries come due in the order they were added: a FIFO.
* :class:`ExpiryBuckets`: wall-clock deadlines in whole seconds (a JWT's ``exp``),
  one set of keys per second.

Callbacks run from the loop timer, in deadline order (keys of the same second in any
order); one that raises is logged and does not stop the others.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ExpiryBuckets", "FixedDelayQueue"]

log = logging.getLogger(__name__)


def _run(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("deadline callback failed")


class FixedDelayQueue:
    """Calls each added callback once, ``delay`` seconds (loop time) after it was added.

    Entries cannot be cancelled: a callback whose reason went away (its session closed)
    must check that itself and do nothing. An entry holds its callback, and what the
    callback references, until it is due: about ``delay`` seconds.
    """

    __slots__ = ("_delay", "_entries", "_timer")

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._entries: deque[tuple[float, Callable[[], None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Callbacks waiting."""
        return len(self._entries)

    def add(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``delay`` seconds from now, from the running loop."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._delay
        self._entries.append((due, callback))
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        entries = self._entries
        now = loop.time()
        while entries and entries[0][0] <= now:
            _run(entries.popleft()[1])
        if entries and self._timer is None:  # a callback's own add() may have armed it already
            self._timer = loop.call_at(entries[0][0], self._fire)


class ExpiryBuckets:
    """Calls ``expire(key)`` once a key's wall-clock deadline has passed, unless it was discarded first.

    Deadlines are rounded up to the whole second, so ``expire`` runs within about a
    second after the deadline, never before it. Keys must be unique among those waiting.
    Once every key of a second is discarded, only the second itself is kept, until it passes.
    """

    __slots__ = ("_buckets", "_expire", "_queued", "_seconds", "_timer", "_timer_second")

    def __init__(self, expire: Callable[[str], None]) -> None:
        self._expire = expire
        self._buckets: dict[int, set[str]] = {}
        self._seconds: list[int] = []
        """A heap of the seconds to look at: each second that has a bucket, once (and perhaps
        seconds whose bucket was emptied by :meth:`discard`)."""
        self._queued: set[int] = set()
        """The seconds in :attr:`_seconds`."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_second: int | None = None

    def __len__(self) -> int:
        """Keys waiting."""
        return sum(len(keys) for keys in self._buckets.values())

    def add(self, key: str, deadline: float) -> None:
        """Expire ``key`` at ``deadline`` (epoch seconds, as ``time.time()``); a past one runs soon."""
        second = math.ceil(deadline)
        keys = self._buckets.get(second)
        if keys is None:
            keys = self._buckets[second] = set()
            if second not in self._queued:
                self._queued.add(second)
                heapq.heappush(self._seconds, second)
        keys.add(key)
        if self._timer_second is None or second < self._timer_second:
            self._arm(second)

    def discard(self, key: str, deadline: float) -> None:
        """Forget ``key``, added with ``deadline``; nothing happens if it is not waiting."""
        second = math.ceil(deadline)
        keys = self._buckets.get(second)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._buckets[second]

    def close(self) -> None:
        """Forget every key and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_second = None
        self._buckets.clear()
        self._seconds.clear()
        self._queued.clear()

    def _arm(self, second: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_second = second
        self._timer = asyncio.get_running_loop().call_later(max(0.0, second - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_second = None
        seconds = self._seconds
        now = time.time()
        while seconds and seconds[0] <= now:
            second = heapq.heappop(seconds)
            self._queued.discard(second)
            for key in self._buckets.pop(second, ()):
                _run(self._expire, key)
        if seconds:
            self._arm(seconds[0])
