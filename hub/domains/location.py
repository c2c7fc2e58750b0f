"""Driver location: filtered GPS fixes, live tracking rooms, sampled tracks, geofences, dispatch.

Positions are ephemeral latest values. A driver's kept fix goes into the
:class:`PositionBook` (last known position per driver, forgotten after a TTL; shared by
every node with Redis) and to ``track_room(order_id)`` of each of the driver's active
orders; that fan-out is at-most-once and a (re)joining watcher gets the latest position
in its :class:`~protocol.messages.TrackSnapshot`. What must survive is durable: one track
point per order per ``track_sample_s`` in the store, and geofence entries as
notifications to the shopper, each with a deterministic id so that every node and every
retry notifies once.

An order is active from ``delivery.assigned`` until ``delivered``/``cancelled``. The
driver's active orders are read from the store at most once per ``orders_cache_s``
(1 s) per driver, so positions start flowing, and move to a reassigned order's new
driver, within that long of ``delivery.assigned``; :meth:`LocationService.order_ended`
stops them at once on the node that applies the end (other nodes' caches expire within
the same bound, and the room has been emptied).

Per-driver filter state lives in this node's memory (a driver's socket is on one node)
and is forgotten after ``position_ttl_s`` without a fix, so memory is bounded by the
drivers active within that window. A node that meets a driver first (a reconnect landed
on it) starts from the shared last-known position, so an older fix is dropped as
``outdated`` instead of moving the driver backwards.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from hub.auth import Principal
from hub.domains.access import forbidden
from hub.domains.geo import (
    AT_BOUTIQUE,
    AT_DOOR,
    NEAR_CUSTOMER,
    Decision,
    FenceConfig,
    FilterConfig,
    Fix,
    FixFilter,
    distance_m,
    estimate_eta,
    fences_containing,
    smoothed_speed,
    speed_sample,
    validate_update,
)
from hub.domains.notifications import NotificationService
from hub.domains.orders import ENDED, STATUS_RANK
from hub.domains.ports import Fanout, now_ms, track_room
from protocol import events
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role
from protocol.messages import (
    BoutiqueLocation,
    Eta,
    LocationAccepted,
    LocationUpdate,
    NearbyDriver,
    NearbyDrivers,
    NearbyRequest,
    PositionFrame,
    TrackEndedFrame,
    TrackHistory,
    TrackHistoryRequest,
    TrackPoint,
    TrackSnapshot,
)
from storage.base import OrderRecord, OrderStore, PlaceStore, TrackPointRecord, TrackStore

BEFORE_PICKUP = frozenset(s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK["picked_up"])
ORDER_SCAN = 50
"""Newest orders of a driver searched for active ones."""

FixCounter = Callable[[str], None]
"""Called once per reported valid fix with ``kept`` or the filter's drop reason."""

_FENCE_TITLES = {
    AT_BOUTIQUE: "Your driver is at the boutique",
    NEAR_CUSTOMER: "Your driver is nearby",
    AT_DOOR: "Your driver is at your door",
}


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """A driver's last kept fix, with the smoothed speed (m/s) at that fix, for an ETA on any node."""

    fix: Fix
    avg_speed_mps: float | None


class NearbyPosition(msgspec.Struct, frozen=True, kw_only=True):
    driver_id: str
    position: Position
    distance_m: float
    """Great-circle distance from the search centre (:func:`hub.domains.geo.distance_m`)."""


class PositionBook(Protocol):
    """Last known position per driver, each forgotten ``ttl`` seconds (given at construction) after
    its last :meth:`put`."""

    async def put(self, driver_id: str, position: Position) -> None:
        """Replace the driver's position and restart its TTL."""
        ...

    async def get(self, driver_id: str) -> Position | None:
        """The driver's position, or None when never put or expired."""
        ...

    async def nearby(self, lat: float, lon: float, radius_m: float, limit: int) -> list[NearbyPosition]:
        """Unexpired positions within ``radius_m`` of the point, nearest first, at most ``limit``."""
        ...

    async def close(self) -> None: ...


class LocalPositionBook:
    """This process's positions, in memory. ``get``/``nearby`` scan linearly; expired entries are
    dropped by a sweep at most once per ``ttl``, so memory holds drivers seen within ``2 * ttl``."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Position]] = {}
        self._next_sweep = clock() + ttl

    async def put(self, driver_id: str, position: Position) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
            self._next_sweep = now + self._ttl
        self._entries[driver_id] = (now + self._ttl, position)

    async def get(self, driver_id: str) -> Position | None:
        entry = self._entries.get(driver_id)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def nearby(self, lat: float, lon: float, radius_m: float, limit: int) -> list[NearbyPosition]:
        now = self._clock()
        found = []
        for driver_id, (expires, position) in self._entries.items():
            if expires <= now:
                continue
            d = distance_m((lat, lon), (position.fix.lat, position.fix.lon))
            if d <= radius_m:
                found.append(NearbyPosition(driver_id=driver_id, position=position, distance_m=d))
        found.sort(key=lambda n: n.distance_m)
        return found[:limit]

    async def close(self) -> None:
        self._entries.clear()


MAX_FIX_AGE_S = 3600.0
"""A fix whose device time is older than this is dropped as ``outdated`` even as a driver's first:
generous for phones whose clocks run behind, yet no position from another day becomes "latest"."""


@dataclass(frozen=True, slots=True)
class LocationConfig:
    """Tunables of :class:`LocationService` (times in seconds, speeds in m/s)."""

    filter: FilterConfig = field(default_factory=FilterConfig)
    fences: FenceConfig = field(default_factory=FenceConfig)
    position_ttl_s: float = 120.0
    track_sample_s: float = 15.0
    eta_floor_mps: float = 3.0
    future_skew_s: float = 10.0
    orders_cache_s: float = 1.0


@dataclass(slots=True)
class _OrderTrack:
    last_sample_ts: int | None = None
    notified: set[str] = field(default_factory=set)
    """Fences whose notification this node already appended."""


@dataclass(slots=True)
class _Driver:
    seen_at: float
    last_kept: Fix | None = None
    avg_speed: float | None = None
    orders: list[OrderRecord] = field(default_factory=list)
    orders_at: float | None = None
    tracks: dict[str, _OrderTrack] = field(default_factory=dict)


def is_active(order: OrderRecord) -> bool:
    """A driver is assigned and the order is neither delivered nor cancelled."""
    return order.driver_id is not None and order.status not in ENDED


def _may_watch(principal: Principal, order: OrderRecord) -> bool:
    return principal.role is Role.DISPATCHER or (
        principal.role is Role.SHOPPER and principal.sub == order.shopper_id
    )


def _may_read_history(principal: Principal, order: OrderRecord) -> bool:
    role = principal.role
    return (
        role is Role.DISPATCHER
        or (role is Role.SHOPPER and principal.sub == order.shopper_id)
        or (role is Role.DRIVER and principal.sub == order.driver_id)
        or (role is Role.STAFF and principal.boutique == order.boutique_id)
    )


class LocationService:
    """Takes drivers' fixes and answers tracking and dispatch queries, with authorization."""

    def __init__(
        self,
        orders: OrderStore,
        tracks: TrackStore,
        places: PlaceStore,
        positions: PositionBook,
        notifications: NotificationService,
        fanout: Fanout,
        config: LocationConfig,
        *,
        on_fix: FixCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._orders = orders
        self._tracks = tracks
        self._places = places
        self._positions = positions
        self._notifications = notifications
        self._fanout = fanout
        self._config = config
        self._filter = FixFilter(config.filter)
        self._on_fix = on_fix
        self._clock = clock
        self._drivers: dict[str, _Driver] = {}
        self._next_sweep = clock() + config.position_ttl_s

    async def report(self, principal: Principal, update: LocationUpdate) -> LocationAccepted:
        """Validate, filter and, when kept, store and fan out one fix of the calling driver.

        A kept fix replaces the driver's position, goes to the track room of each active
        order, is persisted when the order's last track point is ``track_sample_s`` older,
        and notifies the shopper once per geofence entered: ``at_boutique`` before pickup,
        ``near_customer`` and ``at_door`` once picked up (so passing the shopper's street
        on the way to the boutique alerts nobody).

        Raises:
            SokoError: FORBIDDEN for any role but driver; INVALID_POSITION or
                FUTURE_TIMESTAMP (see :func:`hub.domains.geo.validate_update`).
        """
        if principal.role is not Role.DRIVER:
            raise forbidden("driver.location")
        wall = now_ms()
        fix = validate_update(update, wall, self._config.future_skew_s)
        now = self._clock()
        self._forget_idle(now)
        driver = self._drivers.get(principal.sub)
        if driver is None:
            driver = self._drivers[principal.sub] = _Driver(seen_at=now)
            # The driver may have been kept by another node (a reconnect landed elsewhere): judge this
            # fix against that one, so an older fix never replaces a newer shared position.
            known = await self._positions.get(principal.sub)
            if known is not None:
                driver.last_kept, driver.avg_speed = known.fix, known.avg_speed_mps
        driver.seen_at = now
        if fix.ts < wall - MAX_FIX_AGE_S * 1000:
            decision = Decision(kept=False, reason="outdated")  # not a live position, whatever came before
        else:
            decision = self._filter.decide(driver.last_kept, fix)
        if self._on_fix is not None:
            self._on_fix(decision.reason or "kept")
        if not decision.kept:
            return LocationAccepted(kept=False, reason=decision.reason)
        sample = speed_sample(driver.last_kept, fix)
        if sample is not None and sample > self._config.filter.max_speed_kmh / 3.6:
            sample = None  # a junk speed reading must not drag the ETA for minutes
        driver.avg_speed = smoothed_speed(driver.avg_speed, sample)
        driver.last_kept = fix
        position = Position(fix=fix, avg_speed_mps=driver.avg_speed)
        await self._positions.put(principal.sub, position)
        for order in await self._active_orders(principal.sub, driver, now):
            await self._follow(order, principal.sub, driver, position)
        return LocationAccepted(kept=True)

    def _forget_idle(self, now: float) -> None:
        if now < self._next_sweep:
            return
        horizon = now - self._config.position_ttl_s
        self._drivers = {d: s for d, s in self._drivers.items() if s.seen_at >= horizon}
        self._next_sweep = now + self._config.position_ttl_s

    async def _active_orders(self, driver_id: str, driver: _Driver, now: float) -> list[OrderRecord]:
        if driver.orders_at is None or now - driver.orders_at >= self._config.orders_cache_s:
            found = await self._orders.orders_for(field="driver_id", value=driver_id, limit=ORDER_SCAN)
            driver.orders = [o for o in found if o.driver_id == driver_id and is_active(o)]
            driver.orders_at = now
            ids = {o.order_id for o in driver.orders}
            driver.tracks = {k: t for k, t in driver.tracks.items() if k in ids}
        return driver.orders

    async def _follow(self, order: OrderRecord, driver_id: str, driver: _Driver, position: Position) -> None:
        fix = position.fix
        frame = self._frame(order, driver_id, position)
        await self._fanout.publish([track_room(order.order_id)], events.TRACK_POSITION, to_wire(frame))
        track = driver.tracks.setdefault(order.order_id, _OrderTrack())
        if (
            track.last_sample_ts is None
            or fix.ts - track.last_sample_ts >= self._config.track_sample_s * 1000
        ):
            await self._tracks.add_track_point(
                order.order_id, TrackPointRecord(ts=fix.ts, lat=fix.lat, lon=fix.lon)
            )
            track.last_sample_ts = fix.ts
        inside = fences_containing(
            (fix.lat, fix.lon), pickup=order.pickup, dropoff=order.dropoff, config=self._config.fences
        )
        relevant = {AT_BOUTIQUE} if order.status in BEFORE_PICKUP else {NEAR_CUSTOMER, AT_DOOR}
        for fence in sorted((inside & relevant) - track.notified):
            await self._notifications.notify_user(
                order.shopper_id,
                "delivery",
                _FENCE_TITLES[fence],
                f"Order {order.order_id}",
                {"order_id": order.order_id, "driver_id": driver_id, "fence": fence},
                notification_id=f"geo.{order.order_id}.{fence}",
            )
            track.notified.add(fence)

    def _frame(self, order: OrderRecord, driver_id: str, position: Position) -> PositionFrame:
        fix = position.fix
        return PositionFrame(
            order_id=order.order_id,
            driver_id=driver_id,
            lat=fix.lat,
            lon=fix.lon,
            accuracy=fix.accuracy,
            speed=fix.speed,
            heading=fix.heading,
            ts=fix.ts,
            eta=self._eta(order, position),
        )

    def _eta(self, order: OrderRecord, position: Position) -> Eta | None:
        if order.dropoff is None:
            return None
        return estimate_eta(
            (position.fix.lat, position.fix.lon),
            pickup=order.pickup,
            dropoff=order.dropoff,
            via_pickup=order.status in BEFORE_PICKUP,
            speed_mps=position.avg_speed_mps,
            floor_mps=self._config.eta_floor_mps,
        )

    async def watch(
        self, principal: Principal, order_id: str, join: Callable[[], Awaitable[None]]
    ) -> TrackSnapshot:
        """Authorize the order's shopper or a dispatcher, ``join`` its ``track_room`` (the
        caller's way of entering the room), then read its tracking state, so a fix kept
        meanwhile reaches the watcher one way or the other. ``position`` is the driver's last
        known position (None when inactive or none within the TTL).

        Raises:
            SokoError: FORBIDDEN for anyone else, and for unknown orders; ``join`` is not called.
        """
        order = await self._orders.get_order(order_id)
        if order is None or not _may_watch(principal, order):
            raise forbidden(f"track {order_id}")
        await join()
        # Read again: a delivery applied before the join emptied the room without this socket.
        order = await self._orders.get_order(order_id) or order
        frame = None
        if is_active(order):
            assert order.driver_id is not None
            position = await self._positions.get(order.driver_id)
            if position is not None:
                frame = self._frame(order, order.driver_id, position)
        return TrackSnapshot(
            order_id=order.order_id, status=order.status, active=is_active(order), position=frame
        )

    async def revoked_watchers(self, order_id: str, watchers: Mapping[str, Principal]) -> list[str]:
        """The keys of ``watchers`` that may no longer watch the order: everyone once it ended or is
        unknown, else those :meth:`watch` would refuse. Used to re-check rooms after evictions may
        have been lost between nodes."""
        order = await self._orders.get_order(order_id)
        if order is None or order.status in ENDED:
            return list(watchers)
        return [key for key, p in watchers.items() if not _may_watch(p, order)]

    async def history(self, principal: Principal, req: TrackHistoryRequest) -> TrackHistory:
        """The order's sampled track, oldest first, for its shopper, its driver, its boutique's staff
        and dispatchers.

        Raises:
            SokoError: FORBIDDEN for anyone else, and for unknown orders.
        """
        order = await self._orders.get_order(req.order_id)
        if order is None or not _may_read_history(principal, order):
            raise forbidden(f"track {req.order_id}")
        points = await self._tracks.track_points(req.order_id, req.limit)
        return TrackHistory(
            order_id=req.order_id, points=[TrackPoint(ts=p.ts, lat=p.lat, lon=p.lon) for p in points]
        )

    async def locate_boutique(self, req: BoutiqueLocation) -> BoutiqueLocation:
        """Record (or move) where a boutique is: the default pickup of its new orders and the centre of
        ``dispatch.nearby`` searches. Service callers only (the HTTP route checks the token); durable on
        return; returns what was stored."""
        await self._places.set_boutique_location(req.boutique_id, (req.lat, req.lon))
        return req

    async def nearby(self, principal: Principal, req: NearbyRequest) -> NearbyDrivers:
        """Drivers whose last known position is within ``radius_km`` of the boutique, nearest first.

        Raises:
            SokoError: FORBIDDEN for any role but dispatcher; NOT_FOUND when the boutique has
                no known location.
        """
        if principal.role is not Role.DISPATCHER:
            raise forbidden("dispatch.nearby")
        location = await self._places.boutique_location(req.boutique_id)
        if location is None:
            raise SokoError(
                ErrorCode.NOT_FOUND,
                f"boutique {req.boutique_id} has no location (set it with POST /api/v1/boutiques)",
            )
        found = await self._positions.nearby(location[0], location[1], req.radius_km * 1000, req.limit)
        return NearbyDrivers(
            boutique_id=req.boutique_id,
            drivers=[
                NearbyDriver(
                    driver_id=n.driver_id,
                    lat=n.position.fix.lat,
                    lon=n.position.fix.lon,
                    distance_m=round(n.distance_m),
                    ts=n.position.fix.ts,
                )
                for n in found
            ],
        )

    async def order_changed(self, order: OrderRecord) -> None:
        """Bring this node's cached order lists up to date with ``order`` at once, so positions
        start at assignment and ETA and geofences follow the status without waiting for the
        cache to expire (other nodes catch up within ``orders_cache_s``)."""
        for driver_id, driver in self._drivers.items():
            if driver.orders_at is None:
                continue
            orders = [o for o in driver.orders if o.order_id != order.order_id]
            if order.driver_id == driver_id and is_active(order):
                orders.append(order)
            driver.orders = orders

    async def order_ended(self, order: OrderRecord) -> None:
        """Tell the order's watchers that tracking ended (``track.ended``), then empty its track room
        on every node, and forget the order here, so no further position of it leaves this node."""
        room = track_room(order.order_id)
        frame = TrackEndedFrame(order_id=order.order_id, status=order.status)
        await self._fanout.publish([room], events.TRACK_ENDED, to_wire(frame))
        await self._fanout.evict([room], room)
        for driver in self._drivers.values():
            driver.tracks.pop(order.order_id, None)
            driver.orders = [o for o in driver.orders if o.order_id != order.order_id]
