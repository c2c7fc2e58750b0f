"""Cluster-wide presence and rate limits in Redis, next to the Redis broker.

Both degrade to this node's own view while Redis is unreachable (the broker's
:meth:`~hub.broker.redis.RedisBroker.healthy` says so): the hub keeps serving, with
presence as this node sees it and rate limits per node. Each Redis call is one Lua
script, so concurrent nodes never interleave inside an update.

Presence keys: ``soko:presence:<boutique>`` is a sorted set of ``<node>:<sid>``
members scored by their expiry (ms since the epoch); ``soko:presence:index`` is the
set of boutiques that may have members. Each node re-scores its own members every
``ttl / 3`` seconds, so the members of a node that died expire within ``ttl`` and any
node's sweep announces the boutique offline. After a Redis restart the refresh
re-adds every live member, so presence heals without reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from redis.exceptions import RedisError

from hub.broker.redis import RedisBroker
from hub.domains.presence import LocalPresenceLedger, OnOffline
from hub.limits import LocalRateLimiter
from hub.metrics import HubMetrics

log = logging.getLogger(__name__)

_PREFIX = "soko:presence:"
_INDEX = "soko:presence:index"

# KEYS: zset, index. ARGV: member, expiry_ms, now_ms, boutique. Returns live members before the join.
_JOIN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
return before
"""

# KEYS: zset, index. ARGV: member, now_ms, boutique. Returns {removed, live members after}.
_LEAVE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local after = redis.call('ZCARD', KEYS[1])
if after == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return {removed, after}
"""

# KEYS: index. ARGV: prefix, now_ms. Returns the boutiques whose last members just expired.
_SWEEP = """
local gone = {}
for _, boutique in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. boutique
  local before = redis.call('ZCARD', key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
  if redis.call('ZCARD', key) == 0 then
    redis.call('SREM', KEYS[1], boutique)
    if before > 0 then table.insert(gone, boutique) end
  end
end
return gone
"""

# Generic cell rate algorithm. KEYS: key. ARGV: now_ms, interval_ms, tolerance_ms. Returns 1 if allowed.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > tolerance then return 0 end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(tolerance) + 1000)
return 1
"""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RedisPresenceLedger:
    """Presence shared by every node on one Redis; see the module docstring for the key layout."""

    def __init__(self, broker: RedisBroker, metrics: HubMetrics, *, ttl: float = 15.0) -> None:
        self._broker = broker
        self._redis = broker.client
        self._metrics = metrics
        self._ttl_ms = int(ttl * 1000)
        self._local = LocalPresenceLedger()
        """This node's own members: refreshed into Redis, and the answer while Redis is down."""
        self._mine: dict[str, set[str]] = {}
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._sweep = self._redis.register_script(_SWEEP)
        self._task: asyncio.Task[None] | None = None

    async def join(self, boutique: str, member: str) -> bool:
        await self._local.join(boutique, member)
        self._mine.setdefault(boutique, set()).add(member)
        if not self._broker.healthy():
            return False  # announced by nobody; the refresh re-adds it once Redis is back
        now = _now_ms()
        try:
            before = await self._join(
                keys=[_PREFIX + boutique, _INDEX], args=[member, now + self._ttl_ms, now, boutique]
            )
        except (RedisError, OSError) as exc:
            self._failed("join", exc)
            return False
        return int(before) == 0

    async def leave(self, boutique: str, member: str) -> bool:
        await self._local.leave(boutique, member)
        members = self._mine.get(boutique)
        if members is not None:
            members.discard(member)
            if not members:
                del self._mine[boutique]
        if not self._broker.healthy():
            return False
        try:
            removed, after = await self._leave(
                keys=[_PREFIX + boutique, _INDEX], args=[member, _now_ms(), boutique]
            )
        except (RedisError, OSError) as exc:
            self._failed("leave", exc)
            return False
        return int(removed) == 1 and int(after) == 0

    async def online(self, boutiques: Sequence[str]) -> set[str]:
        if not self._broker.healthy():
            return await self._local.online(boutiques)
        now = _now_ms()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for boutique in boutiques:
                    pipe.zcount(_PREFIX + boutique, f"({now}", "+inf")
                counts = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("online", exc)
            return await self._local.online(boutiques)
        return {b for b, n in zip(boutiques, counts, strict=True) if int(n) > 0}

    async def start(self, on_offline: OnOffline) -> None:
        self._task = asyncio.create_task(self._maintain(on_offline), name="redis-presence")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _maintain(self, on_offline: OnOffline) -> None:
        """Every ``ttl / 3``: re-score this node's members, then sweep expired ones and announce."""
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            if not self._broker.healthy():
                continue
            try:
                await self._refresh()
                gone = await self._sweep(keys=[_INDEX], args=[_PREFIX, _now_ms()])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._failed("refresh", exc)
                continue
            for raw in gone:
                boutique = raw.decode() if isinstance(raw, bytes) else str(raw)
                try:
                    await on_offline(boutique)
                except Exception:
                    log.exception("presence: announcing %s offline failed", boutique)

    async def _refresh(self) -> None:
        if not self._mine:
            return
        expiry = _now_ms() + self._ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for boutique, members in self._mine.items():
                pipe.zadd(_PREFIX + boutique, dict.fromkeys(members, expiry))
                pipe.sadd(_INDEX, boutique)
            await pipe.execute()

    def _failed(self, what: str, exc: BaseException) -> None:
        self._metrics.shared_state_errors.labels(f"presence.{what}").inc()
        log.warning("presence: redis %s failed (%r); using this node's view", what, exc)


class RedisRateLimiter:
    """A per-key budget shared by every node (GCRA in one Lua call); per node while Redis is down."""

    def __init__(self, broker: RedisBroker, metrics: HubMetrics, rate: float, burst: int) -> None:
        self._broker = broker
        self._metrics = metrics
        self._script = broker.client.register_script(_GCRA)
        self._interval_ms = 1000.0 / rate
        self._tolerance_ms = self._interval_ms * burst
        self._fallback = LocalRateLimiter(rate, burst)

    async def allow(self, key: str) -> bool:
        if not self._broker.healthy():
            return self._fallback.take(key)
        try:
            allowed = await self._script(
                keys=[f"soko:rate:{key}"], args=[_now_ms(), self._interval_ms, self._tolerance_ms]
            )
        except (RedisError, OSError) as exc:
            self._metrics.shared_state_errors.labels("rate").inc()
            log.warning("rate limit: redis failed (%r); limiting per node", exc)
            return self._fallback.take(key)
        return int(allowed) == 1
