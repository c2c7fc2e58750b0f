"""Drivers' last known positions in Redis, shared by every node (next to the Redis broker).

Keys: ``soko:pos:fix:<driver>`` holds the position as JSON with a ``PX`` TTL, and is
the truth: a driver whose JSON expired is gone. ``soko:pos:geo`` is a GEO set of
drivers for radius search, and ``soko:pos:exp`` scores the same members by expiry
(Redis server time, so node clocks do not matter). Every search first removes the
members whose expiry passed from both sets, in the same Lua call, so the GEO set never
holds more than the drivers seen within one TTL. Each put and each search is one
script: concurrent nodes never interleave inside one.

Points beyond the latitudes Redis can index (|lat| > 85.05112878) are kept by
:meth:`get` but not found by :meth:`nearby`.

While Redis is unreachable (the broker says unhealthy, or a call fails and is counted
in ``soko_shared_state_errors_total``) answers come from a :class:`LocalPositionBook`
holding this node's own puts, which every put also updates.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hub.domains.geo import distance_m
from hub.domains.location import LocalPositionBook, NearbyPosition, Position
from hub.metrics import HubMetrics

log = logging.getLogger(__name__)

_GEO = "soko:pos:geo"
_EXP = "soko:pos:exp"
_FIX = "soko:pos:fix:"
MAX_GEO_LAT = 85.05112878

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: geo, exp, fix. ARGV: member, json, ttl_ms, lon, lat (lon/lat empty: not indexable).
_PUT = (
    _NOW
    + """
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('GEOADD', KEYS[1], ARGV[4], ARGV[5], ARGV[1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
end
"""
)

# KEYS: geo, exp. ARGV: fix prefix, lon, lat, radius_m, count. Returns {member, json, ...}.
_NEARBY = (
    _NOW
    + """
while true do
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
  if #gone == 0 then break end
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local hits = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[2], ARGV[3],
  'BYRADIUS', ARGV[4], 'm', 'ASC', 'COUNT', ARGV[5])
local out = {}
for _, member in ipairs(hits) do
  local json = redis.call('GET', ARGV[1] .. member)
  if json then
    table.insert(out, member)
    table.insert(out, json)
  end
end
return out
"""
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Position)


class RedisLink(Protocol):
    """What the book needs from the Redis broker: its client, and whether Redis is reachable."""

    @property
    def client(self) -> aioredis.Redis: ...

    def healthy(self) -> bool: ...


class RedisPositionBook:
    """A :class:`~hub.domains.location.PositionBook` in Redis; see the module docstring."""

    def __init__(self, link: RedisLink, metrics: HubMetrics, *, ttl: float) -> None:
        self._link = link
        self._redis = link.client
        self._metrics = metrics
        self._ttl_ms = max(1, round(ttl * 1000))
        self._local = LocalPositionBook(ttl)
        self._put = self._redis.register_script(_PUT)
        self._nearby = self._redis.register_script(_NEARBY)

    async def put(self, driver_id: str, position: Position) -> None:
        await self._local.put(driver_id, position)
        if not self._link.healthy():
            return
        fix = position.fix
        indexable = abs(fix.lat) <= MAX_GEO_LAT
        try:
            await self._put(
                keys=[_GEO, _EXP, _FIX + driver_id],
                args=[
                    driver_id,
                    _encoder.encode(position),
                    self._ttl_ms,
                    repr(fix.lon) if indexable else "",
                    repr(fix.lat) if indexable else "",
                ],
            )
        except (RedisError, OSError) as exc:
            self._failed("put", exc)

    async def get(self, driver_id: str) -> Position | None:
        """The newer of Redis's and this node's own answer (this node may have put while Redis was down)."""
        mine = await self._local.get(driver_id)
        if not self._link.healthy():
            return mine
        try:
            raw = await self._redis.get(_FIX + driver_id)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return mine
        shared = None if raw is None else _decoder.decode(raw)
        if shared is None or (mine is not None and mine.fix.ts > shared.fix.ts):
            return mine
        return shared

    async def nearby(self, lat: float, lon: float, radius_m: float, limit: int) -> list[NearbyPosition]:
        if not self._link.healthy():
            return await self._local.nearby(lat, lon, radius_m, limit)
        try:
            flat = await self._nearby(keys=[_GEO, _EXP], args=[_FIX, repr(lon), repr(lat), radius_m, limit])
        except (RedisError, OSError) as exc:
            self._failed("nearby", exc)
            return await self._local.nearby(lat, lon, radius_m, limit)
        found = []
        for member, raw in zip(flat[::2], flat[1::2], strict=True):
            position = _decoder.decode(raw)
            d = distance_m((lat, lon), (position.fix.lat, position.fix.lon))
            driver_id = member.decode() if isinstance(member, bytes) else str(member)
            found.append(NearbyPosition(driver_id=driver_id, position=position, distance_m=d))
        found.sort(key=lambda n: n.distance_m)
        return found

    async def close(self) -> None:
        """Forget this node's copy; the Redis client belongs to the broker, which closes it."""
        await self._local.close()

    def _failed(self, what: str, exc: BaseException) -> None:
        self._metrics.shared_state_errors.labels(f"positions.{what}").inc()
        log.warning("positions: redis %s failed (%r); using this node's view", what, exc)
