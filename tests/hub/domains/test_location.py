"""LocationService (hub/domains/location.py) over a real SQLite store, the real notification
service and a LocalPositionBook; the fan-out is a recorder of what would reach the rooms, and
the clock (for the 1 s active-orders cache and idle forgetting) is turned by hand."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from hub.auth import Principal
from hub.domains.access import AccessPolicy
from hub.domains.geo import EARTH_RADIUS_M, estimate_eta
from hub.domains.location import LocalPositionBook, LocationConfig, LocationService
from hub.domains.notifications import NotificationService
from hub.domains.ports import now_ms
from protocol import events
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role
from protocol.messages import (
    BoutiqueLocation,
    Eta,
    LocationUpdate,
    NearbyRequest,
    PositionFrame,
    TrackEndedFrame,
    TrackHistoryRequest,
)
from storage.base import LatLon, OrderRecord
from storage.sqlite import SqliteStore

BOUTIQUE: LatLon = (-1.2921, 36.8219)
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180


def north(p: LatLon, metres: float) -> LatLon:
    return (p[0] + metres / M_PER_DEG, p[1])


DOOR = north(BOUTIQUE, 4000)


class RecordingFanout:
    """What the service hands to the fan-out, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], str, Any]] = []

    async def publish(self, rooms: Sequence[str], event: str, data: Any, *, skip: str | None = None) -> None:
        self.calls.append(("publish", tuple(rooms), event, data))

    async def evict(self, rooms: Sequence[str], holders: str) -> None:
        self.calls.append(("evict", tuple(rooms), holders, None))

    def positions(self) -> list[PositionFrame]:
        frames = []
        for kind, rooms, event, data in self.calls:
            if kind == "publish" and event == events.TRACK_POSITION:
                frame = msgspec.convert(data, PositionFrame)
                assert rooms == (f"track:{frame.order_id}",)
                frames.append(frame)
        return frames

    def rooms_reached(self) -> list[str]:
        return [f.order_id for f in self.positions()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def who(role: Role, sub: str, boutique: str | None = None) -> Principal:
    return Principal(sub=sub, role=role, boutique=boutique, expires_at=math.inf)


DRIVER = who(Role.DRIVER, "d1")
SHOPPER = who(Role.SHOPPER, "s1")
DISPATCHER = who(Role.DISPATCHER, "disp")


@dataclass
class World:
    store: SqliteStore
    fanout: RecordingFanout
    clock: Clock
    notifications: NotificationService
    service: LocationService
    outcomes: list[str]
    base_ts: int = field(default_factory=lambda: now_ms() - 1_800_000)

    def node(self) -> LocationService:
        """Another hub node on the same store: its own memory, book and clock."""
        return LocationService(
            self.store,
            self.store,
            self.store,
            LocalPositionBook(120),
            self.notifications,
            self.fanout,
            LocationConfig(),
        )

    async def order(self, order_id: str, **changes: Any) -> OrderRecord:
        values: dict[str, Any] = {
            "order_id": order_id,
            "shopper_id": "s1",
            "boutique_id": "b1",
            "status": "confirmed",
            "driver_id": "d1",
            "updated_ts": now_ms(),
            "pickup": BOUTIQUE,
            "dropoff": DOOR,
        }
        values.update(changes)
        return await self.store.upsert_order(OrderRecord(**values))

    async def report(
        self,
        at: LatLon,
        after_s: float,
        *,
        driver: Principal = DRIVER,
        speed: float | None = 8.0,
        service: LocationService | None = None,
    ) -> tuple[bool, str | None]:
        update = LocationUpdate(
            lat=at[0],
            lon=at[1],
            accuracy=5.0,
            speed=speed,
            heading=10.0,
            ts=self.base_ts + round(after_s * 1000),
        )
        ack = await (service or self.service).report(driver, update)
        return ack.kept, ack.reason

    async def inbox(self, user: str) -> list[tuple[str, str, dict[str, Any]]]:
        frames = await self.notifications.pending_for(who(Role.SHOPPER, user))
        return [(f.category, f.title, f.data) for f in frames]


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await SqliteStore.open(str(tmp_path / "soko.db"))
    fanout, clock, outcomes = RecordingFanout(), Clock(), list[str]()
    notifications = NotificationService(store, store, store, AccessPolicy(store), fanout, 200)
    service = LocationService(
        store,
        store,
        store,
        LocalPositionBook(120, clock=clock),
        notifications,
        fanout,
        LocationConfig(),
        on_fix=outcomes.append,
        clock=clock,
    )
    try:
        yield World(store, fanout, clock, notifications, service, outcomes)
    finally:
        await store.close()


# ---------------------------------------------------------------- report


@pytest.mark.asyncio
@pytest.mark.parametrize("role", [Role.SHOPPER, Role.STAFF, Role.DISPATCHER, Role.DEVICE, Role.SERVICE])
async def test_only_drivers_may_report(world: World, role: Role) -> None:
    await world.order("o1", driver_id="x1")
    with pytest.raises(SokoError) as caught:
        await world.report(BOUTIQUE, 0, driver=who(role, "x1", "b1"))
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert world.fanout.calls == []
    assert world.outcomes == []


@pytest.mark.asyncio
async def test_invalid_fixes_are_refused_and_not_counted(world: World) -> None:
    with pytest.raises(SokoError) as bad:
        await world.report((91.0, 0.0), 0)
    assert bad.value.code is ErrorCode.INVALID_POSITION
    future = LocationUpdate(lat=0.0, lon=0.0, accuracy=5.0, ts=now_ms() + 60_000)
    with pytest.raises(SokoError) as ahead:
        await world.service.report(DRIVER, future)
    assert ahead.value.code is ErrorCode.FUTURE_TIMESTAMP
    assert world.outcomes == []


@pytest.mark.asyncio
async def test_a_kept_fix_reaches_only_the_track_rooms_of_the_drivers_active_orders(world: World) -> None:
    await world.order("o1")
    await world.order("o2", status="delivered")
    await world.order("o3", status="cancelled")
    await world.order("o4", driver_id="d2")
    await world.order("o5", driver_id=None)
    await world.order("o6", status="in_transit", dropoff=None)
    here = north(BOUTIQUE, -1000)
    assert await world.report(here, 0, speed=10.0) == (True, None)
    frames = {f.order_id: f for f in world.fanout.positions()}
    assert sorted(frames) == ["o1", "o6"]
    o1 = frames["o1"]
    assert (o1.driver_id, o1.lat, o1.lon, o1.accuracy, o1.speed, o1.heading, o1.ts) == (
        "d1",
        here[0],
        here[1],
        5.0,
        10.0,
        10.0,
        world.base_ts,
    )
    # Not picked up yet: the ETA goes via the boutique (1 km, then 4 km), at the reported speed.
    assert o1.eta == estimate_eta(here, pickup=BOUTIQUE, dropoff=DOOR, via_pickup=True, speed_mps=10.0)
    assert o1.eta == Eta(seconds=650, distance_m=6500, speed_mps=10.0)
    assert frames["o6"].eta is None  # no dropoff known: tracked without an ETA
    assert world.outcomes == ["kept"]


async def no_room() -> None:
    """A ``join`` for watches whose room membership the test does not need."""


@pytest.mark.asyncio
async def test_dropped_fixes_are_acked_with_their_reason_and_go_nowhere(world: World) -> None:
    await world.order("o1")
    assert await world.report(BOUTIQUE, 0) == (True, None)
    assert await world.report(north(BOUTIQUE, 20), 0.5) == (False, "period")
    assert await world.report(north(BOUTIQUE, 2), 2) == (False, "distance")
    assert await world.report(north(BOUTIQUE, 9000), 3) == (False, "speed")
    assert await world.report(north(BOUTIQUE, 20), 0) == (False, "outdated")
    assert len(world.fanout.positions()) == 1
    snapshot = await world.service.watch(SHOPPER, "o1", no_room)
    assert snapshot.position is not None and snapshot.position.lat == BOUTIQUE[0]
    # Compared with the last KEPT fix (at 0 s), not with the dropped ones.
    assert await world.report(north(BOUTIQUE, 20), 1) == (True, None)
    assert world.outcomes == ["kept", "period", "distance", "speed", "outdated", "kept"]


@pytest.mark.asyncio
async def test_eta_speed_is_the_smoothed_speed_and_the_route_skips_the_boutique_once_picked_up(
    world: World,
) -> None:
    await world.order("o1", status="picked_up")
    await world.report(north(DOOR, -3000), 0, speed=10.0)
    await world.report(north(DOOR, -2980), 2, speed=20.0)
    last = world.fanout.positions()[-1]
    assert last.eta == Eta(seconds=round(2980 * 1.3 / 13.0), distance_m=3874, speed_mps=13.0)
    await world.report(north(DOOR, -2970), 4, speed=0.0)  # stopped: the average decays
    stopped = world.fanout.positions()[-1].eta
    assert stopped is not None and stopped.speed_mps == 9.1
    for n in range(6):  # parked: heartbeats every 30 s with speed 0, until the floor holds the ETA
        await world.report(north(DOOR, -2970), 34 + 30 * n, speed=0.0)
    parked = world.fanout.positions()[-1].eta
    assert parked == Eta(seconds=round(2970 * 1.3 / 3.0), distance_m=3861, speed_mps=3.0)


@pytest.mark.asyncio
async def test_new_orders_are_found_within_the_cache_period_and_ended_ones_stop_at_once(world: World) -> None:
    await world.order("o1")
    await world.report(BOUTIQUE, 0)
    await world.order("o2")
    world.clock.now += 0.5
    await world.report(north(BOUTIQUE, 10), 1)
    assert world.fanout.rooms_reached() == ["o1", "o1"]  # the driver's orders were read 0.5 s ago
    world.clock.now += 0.5
    await world.report(north(BOUTIQUE, 20), 2)
    assert sorted(world.fanout.rooms_reached()[2:]) == ["o1", "o2"]

    ended = await world.order("o1", status="delivered")
    world.fanout.calls.clear()
    await world.service.order_ended(ended)
    assert world.fanout.calls == [
        (
            "publish",
            ("track:o1",),
            events.TRACK_ENDED,
            msgspec.to_builtins(TrackEndedFrame(order_id="o1", status="delivered")),
        ),
        ("evict", ("track:o1",), "track:o1", None),
    ]
    await world.report(north(BOUTIQUE, 30), 3)  # within the cache period: o1 is gone anyway
    assert world.fanout.rooms_reached() == ["o2"]


@pytest.mark.asyncio
async def test_track_points_are_sampled_per_order(world: World) -> None:
    await world.order("o1")
    for n in range(9):  # a kept fix every 5 s for 40 s
        assert (await world.report(north(BOUTIQUE, 30 * n), 5 * n))[0]
    history = await world.service.history(SHOPPER, TrackHistoryRequest(order_id="o1"))
    assert [p.ts - world.base_ts for p in history.points] == [0, 15_000, 30_000]
    assert history.points[1].lat == pytest.approx(north(BOUTIQUE, 90)[0])
    assert history.points[1].lon == BOUTIQUE[1]
    limited = await world.service.history(SHOPPER, TrackHistoryRequest(order_id="o1", limit=2))
    assert [p.ts - world.base_ts for p in limited.points] == [0, 15_000]


@pytest.mark.asyncio
async def test_each_geofence_notifies_the_shopper_once_across_nodes(world: World) -> None:
    await world.order("o1", status="ready")
    await world.report(north(DOOR, -100), 0)  # near the door, but the order is not picked up: silent
    assert await world.inbox("s1") == []
    await world.report(north(BOUTIQUE, 80), 100)
    await world.report(north(BOUTIQUE, 60), 102)
    await world.report(north(BOUTIQUE, 40), 104, service=(other := world.node()))
    await world.report(north(BOUTIQUE, 20), 106, service=other)
    at_boutique = (
        "delivery",
        "Your driver is at the boutique",
        {"order_id": "o1", "driver_id": "d1", "fence": "at_boutique"},
    )
    assert await world.inbox("s1") == [at_boutique]

    await world.order("o1", status="picked_up")
    world.clock.now += 1.0
    await world.report(north(DOOR, -400), 400)
    await world.report(north(DOOR, -300), 440)
    await world.report(north(DOOR, -30), 480)
    await world.report(north(DOOR, -10), 482)
    inbox = await world.inbox("s1")
    assert [data["fence"] for _, _, data in inbox] == ["at_boutique", "near_customer", "at_door"]
    assert [title for _, title, _ in inbox[1:]] == ["Your driver is nearby", "Your driver is at your door"]


# ---------------------------------------------------------------- watch


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("principal", "allowed"),
    [
        (SHOPPER, True),
        (DISPATCHER, True),
        (who(Role.SHOPPER, "s2"), False),
        (DRIVER, False),
        (who(Role.DRIVER, "d2"), False),
        (who(Role.STAFF, "st", "b1"), False),
        (who(Role.DEVICE, "dev", "b1"), False),
        (who(Role.SERVICE, "svc"), False),
    ],
)
async def test_watch_authorization(world: World, principal: Principal, allowed: bool) -> None:
    await world.order("o1")
    joined: list[str] = []

    async def join() -> None:
        joined.append("o1")

    if allowed:
        assert (await world.service.watch(principal, "o1", join)).order_id == "o1"
        assert joined == ["o1"]
    else:
        with pytest.raises(SokoError) as caught:
            await world.service.watch(principal, "o1", join)
        assert caught.value.code is ErrorCode.FORBIDDEN
        assert joined == []  # refused before joining the room
    with pytest.raises(SokoError) as unknown:
        await world.service.watch(principal, "nope", join)
    assert unknown.value.code is ErrorCode.FORBIDDEN


@pytest.mark.asyncio
async def test_watch_snapshot_has_the_latest_position_only_while_active(world: World) -> None:
    await world.order("o1", status="picked_up")
    await world.order("o2", driver_id=None)
    empty = await world.service.watch(SHOPPER, "o1", no_room)
    assert (empty.status, empty.active, empty.position) == ("picked_up", True, None)
    await world.report(north(DOOR, -1000), 0, speed=5.0)
    await world.report(north(DOOR, -900), 20, speed=5.0)
    snapshot = await world.service.watch(SHOPPER, "o1", no_room)
    assert snapshot.position == world.fanout.positions()[-1]
    assert snapshot.position is not None and snapshot.position.eta is not None
    assert snapshot.position.eta.distance_m == 1170
    unassigned = await world.service.watch(SHOPPER, "o2", no_room)
    assert (unassigned.active, unassigned.position) == (False, None)
    await world.order("o1", status="delivered")
    done = await world.service.watch(SHOPPER, "o1", no_room)
    assert (done.status, done.active, done.position) == ("delivered", False, None)


@pytest.mark.asyncio
async def test_revoked_watchers(world: World) -> None:
    await world.order("o1")
    watchers = {"k1": SHOPPER, "k2": DISPATCHER, "k3": who(Role.SHOPPER, "s2"), "k4": DRIVER}
    assert await world.service.revoked_watchers("o1", watchers) == ["k3", "k4"]
    await world.order("o1", status="cancelled")
    assert await world.service.revoked_watchers("o1", watchers) == ["k1", "k2", "k3", "k4"]
    assert await world.service.revoked_watchers("nope", {"k1": SHOPPER}) == ["k1"]


# ---------------------------------------------------------------- history and dispatch


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("principal", "allowed"),
    [
        (SHOPPER, True),
        (DISPATCHER, True),
        (DRIVER, True),
        (who(Role.STAFF, "st", "b1"), True),
        (who(Role.STAFF, "st", "b2"), False),
        (who(Role.SHOPPER, "s2"), False),
        (who(Role.DRIVER, "d2"), False),
        (who(Role.DEVICE, "dev", "b1"), False),
    ],
)
async def test_history_authorization(world: World, principal: Principal, allowed: bool) -> None:
    await world.order("o1")
    await world.report(BOUTIQUE, 0)
    request = TrackHistoryRequest(order_id="o1")
    if allowed:
        assert len((await world.service.history(principal, request)).points) == 1
    else:
        with pytest.raises(SokoError) as caught:
            await world.service.history(principal, request)
        assert caught.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(SokoError) as unknown:
        await world.service.history(principal, TrackHistoryRequest(order_id="nope"))
    assert unknown.value.code is ErrorCode.FORBIDDEN


@pytest.mark.asyncio
async def test_nearby_drivers_for_dispatchers(world: World) -> None:
    request = NearbyRequest(boutique_id="b1", radius_km=2.0)
    with pytest.raises(SokoError) as no_place:
        await world.service.nearby(DISPATCHER, request)
    assert no_place.value.code is ErrorCode.NOT_FOUND
    assert "b1 has no location" in no_place.value.message
    located = BoutiqueLocation(boutique_id="b1", lat=BOUTIQUE[0], lon=BOUTIQUE[1])
    assert await world.service.locate_boutique(located) == located
    assert await world.store.boutique_location("b1") == BOUTIQUE
    await world.report(north(BOUTIQUE, 1500), 0, driver=who(Role.DRIVER, "far"))
    await world.report(north(BOUTIQUE, -300), 0, driver=who(Role.DRIVER, "near"))
    await world.report(north(BOUTIQUE, 2500), 0, driver=who(Role.DRIVER, "out"))
    found = await world.service.nearby(DISPATCHER, request)
    assert [(d.driver_id, d.distance_m, d.ts) for d in found.drivers] == [
        ("near", 300, world.base_ts),
        ("far", 1500, world.base_ts),
    ]
    for principal in (SHOPPER, DRIVER, who(Role.STAFF, "st", "b1")):
        with pytest.raises(SokoError) as caught:
            await world.service.nearby(principal, request)
        assert caught.value.code is ErrorCode.FORBIDDEN


@pytest.mark.asyncio
async def test_idle_drivers_are_forgotten_after_the_position_ttl(world: World) -> None:
    await world.report(BOUTIQUE, 60)
    assert await world.report(north(BOUTIQUE, 50), 0) == (False, "outdated")
    world.clock.now += 121
    await world.report(BOUTIQUE, 0, driver=who(Role.DRIVER, "d2"))  # any report sweeps idle drivers
    assert await world.report(north(BOUTIQUE, 50), 0) == (True, None)  # d1's last kept fix was forgotten


@pytest.mark.asyncio
async def test_a_node_new_to_a_driver_judges_fixes_against_the_shared_position(world: World) -> None:
    book = LocalPositionBook(120)
    node_a, node_b = (
        LocationService(
            world.store, world.store, world.store, book, world.notifications, world.fanout, LocationConfig()
        )
        for _ in range(2)
    )
    await world.order("o1")
    for second in range(5, 10):
        assert await world.report(north(BOUTIQUE, second * 50), second * 5, service=node_a) == (True, None)
    # The driver reconnects to node B, whose first fix from it is older than what A kept.
    assert await world.report(north(BOUTIQUE, 10), 1, service=node_b) == (False, "outdated")
    kept = await book.get("d1")
    assert kept is not None and kept.fix.lat == north(BOUTIQUE, 450)[0]
    assert [p.lat for p in world.fanout.positions()][-1] == north(BOUTIQUE, 450)[0]
    assert await world.report(north(BOUTIQUE, 500), 50, service=node_b) == (True, None)


@pytest.mark.asyncio
async def test_fixes_from_long_ago_are_outdated_and_junk_speeds_do_not_skew_the_eta(world: World) -> None:
    await world.order("o1", status="picked_up")
    world.base_ts = now_ms() - 2 * 3_600_000
    assert await world.report(BOUTIQUE, 0) == (False, "outdated")
    world.base_ts = now_ms() - 600_000
    assert await world.report(north(DOOR, -2000), 0, speed=1e9) == (True, None)
    assert await world.report(north(DOOR, -1990), 1, speed=10.0) == (True, None)
    eta = world.fanout.positions()[-1].eta
    assert eta is not None and eta.speed_mps == pytest.approx(10.0)
