"""Driver tracking over a real hub: who receives positions, when they start and stop, ETA,
geofence notifications, the dispatcher's nearby search and bad fixes.

The GPS filters' own rules are tested in tests/hub/domains/test_geo.py; here the hub runs
with the period filter off (``gps_min_period_s=0``) so a test can send fixes quickly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import socketio

from tests.support.hub import RunningHub, mint
from tests.support.rawclient import RawClient
from tests.support.redis import RedisServer

HubFactory = Callable[..., Awaitable[RunningHub]]
B = "boutique-a"
PICKUP = (-1.2921, 36.8219)
DROPOFF = (-1.2821, 36.8219)  # about 1.1 km north of the pickup
FAST = {"gps_min_period_s": 0.0, "gps_track_sample_s": 0.5}


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return (point[0] + metres / 111_195.0, point[1])


def east_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return (point[0], point[1] + metres / (111_195.0 * math.cos(math.radians(point[0]))))


class LiveClient:
    """A Socket.IO client that records every server event it is sent."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.events: list[tuple[str, Any]] = []
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any) -> None:
        self.events.append((event, data))

    async def connect(self) -> LiveClient:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        await self.wait_for(lambda: self.of("welcome"))
        return self

    async def reconnect(self) -> None:
        await self.sio.disconnect()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)
        await self.connect()

    def of(self, event: str) -> list[Any]:
        return [d for e, d in self.events if e == event]

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=10)

    async def ok(self, event: str, data: Any) -> Any:
        reply = await self.call(event, data)
        assert reply["ok"], reply
        return reply["data"]

    async def code(self, event: str, data: Any) -> int:
        reply = await self.call(event, data)
        assert reply["ok"] is False, reply
        return int(reply["error"]["code"])

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.02)


def metres_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Equirectangular distance: plenty for the short hops here, and independent of the hub's code."""
    x = math.radians(b[1] - a[1]) * math.cos(math.radians((a[0] + b[0]) / 2))
    return 6_371_000 * math.hypot(x, math.radians(b[0] - a[0]))


class Driver(LiveClient):
    """A driver's app: sends fixes stamped as if it drove between them at 15 m/s."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token)
        self.clock = int(time.time() * 1000) - 900_000
        self.last: tuple[float, float] | None = None

    async def at(self, point: tuple[float, float], **extra: Any) -> dict[str, Any]:
        hop = 0.0 if self.last is None else metres_between(self.last, point)
        self.clock += max(1000, int(hop / 15 * 1000))
        self.last = point
        fix = {"lat": point[0], "lon": point[1], "accuracy": 8.0, "ts": self.clock, **extra}
        result: dict[str, Any] = await self.ok("driver.location", fix)
        return result


async def client(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> LiveClient:
    return await LiveClient(hub.url, hub.token(role, sub, boutique)).connect()


async def order(hub: RunningHub, order_id: str, shopper: str, *, driver: str | None = None) -> None:
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.created",
            "event_id": f"c-{order_id}",
            "order_id": order_id,
            "shopper_id": shopper,
            "boutique_id": B,
            "pickup": {"lat": PICKUP[0], "lon": PICKUP[1]},
            "dropoff": {"lat": DROPOFF[0], "lon": DROPOFF[1]},
        },
    )
    if driver is not None:
        await assign(hub, order_id, driver)


async def assign(hub: RunningHub, order_id: str, driver: str) -> None:
    await hub.service(
        "/api/v1/events",
        {
            "type": "delivery.assigned",
            "event_id": f"a-{order_id}-{driver}",
            "order_id": order_id,
            "driver_id": driver,
        },
    )


async def status(hub: RunningHub, order_id: str, new_status: str) -> None:
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.status_updated",
            "event_id": f"s-{order_id}-{new_status}",
            "order_id": order_id,
            "status": new_status,
        },
    )


async def barrier(hub: RunningHub, *clients: LiveClient) -> None:
    """Every frame published before this call has reached each client (one node: frames keep order)."""
    tag = f"barrier{time.monotonic_ns()}"
    for c in clients:
        user = c.of("welcome")[0]["user"]
        await hub.service(
            "/api/v1/notifications", {"user": user, "category": "system", "title": tag, "id": f"{tag}{user}"}
        )
    for c in clients:
        await c.wait_for(lambda c=c: any(n["title"] == tag for n in c.of("notification")))


@pytest.mark.asyncio
async def test_only_the_orders_shopper_and_dispatchers_ever_receive_positions(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(**FAST)
    await order(hub, "o1", "shopper-1", driver="driver-1")
    await order(hub, "o2", "shopper-2", driver="driver-2")
    driver = await Driver(hub.url, hub.token("driver", "driver-1")).connect()
    allowed = {
        "shopper": await client(hub, "shopper", "shopper-1"),
        "dispatcher": await client(hub, "dispatcher", "dispatch-1"),
    }
    refused = {
        "other shopper": await client(hub, "shopper", "shopper-2"),
        "the driver": await client(hub, "driver", "driver-1"),
        "other driver": await client(hub, "driver", "driver-2"),
        "boutique staff": await client(hub, "staff", "clerk", B),
        "other staff": await client(hub, "staff", "clerk-x", "boutique-x"),
        "device": await client(hub, "device", "shelf", B),
        "service": await client(hub, "service", "svc"),
    }
    for who in allowed.values():
        snapshot = await who.ok("track.watch", {"order_id": "o1"})
        assert (snapshot["order_id"], snapshot["active"]) == ("o1", True)
    for name, who in refused.items():
        assert await who.code("track.watch", {"order_id": "o1"}) == 2003, name
        assert await who.code("track.watch", {"order_id": "no-such-order"}) == 2003, name
        # Sockets in the order's other rooms still get no positions.
        await who.call("order.watch", {"order_id": "o1"})
    assert await allowed["shopper"].code("track.watch", {"order_id": "o2"}) == 2003
    for metres in (0, 30, 60, 90):
        assert (await driver.at(north_of(PICKUP, metres)))["kept"] is True
    for who in allowed.values():
        await who.wait_for(lambda who=who: len(who.of("track.position")) == 4)
    await barrier(hub, *refused.values(), driver)
    for name, who in {**refused, "driver's own socket": driver}.items():
        assert who.of("track.position") == [], name
    position = allowed["shopper"].of("track.position")[-1]
    assert (position["order_id"], position["driver_id"]) == ("o1", "driver-1")
    assert position["lat"] == north_of(PICKUP, 90)[0]
    for c in (driver, *allowed.values(), *refused.values()):
        await c.sio.disconnect()


@pytest.mark.asyncio
async def test_positions_start_at_assignment_and_stop_at_delivery(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**FAST)
    await order(hub, "o1", "shopper-1")
    shopper = await client(hub, "shopper", "shopper-1")
    driver = await Driver(hub.url, hub.token("driver", "driver-1")).connect()
    snapshot = await shopper.ok("track.watch", {"order_id": "o1"})
    assert (snapshot["active"], snapshot["position"], snapshot["status"]) == (False, None, "created")
    await driver.at(PICKUP)
    await barrier(hub, shopper)
    assert shopper.of("track.position") == []  # not assigned yet: nothing flows

    await assign(hub, "o1", "driver-1")
    step = 0
    while not shopper.of("track.position"):  # the driver's order list is cached for at most 1 s
        step += 20
        await driver.at(north_of(PICKUP, step))
        await asyncio.sleep(0.1)
    assert step <= 20 * 15

    await status(hub, "o1", "delivered")
    await shopper.wait_for(lambda: shopper.of("track.ended"))
    assert shopper.of("track.ended") == [{"order_id": "o1", "status": "delivered"}]
    seen = len(shopper.of("track.position"))
    for metres in (500, 520, 540):
        await driver.at(north_of(PICKUP, metres))
    await barrier(hub, shopper)
    assert len(shopper.of("track.position")) == seen
    again = await shopper.ok("track.watch", {"order_id": "o1"})
    assert (again["active"], again["position"], again["status"]) == (False, None, "delivered")
    await driver.at(north_of(PICKUP, 600))
    await barrier(hub, shopper)
    assert len(shopper.of("track.position")) == seen
    await shopper.sio.disconnect()
    await driver.sio.disconnect()


@pytest.mark.asyncio
async def test_a_returning_watcher_gets_the_latest_position_not_the_backlog(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**FAST)
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await Driver(hub.url, hub.token("driver", "driver-1")).connect()
    shopper = await client(hub, "shopper", "shopper-1")
    await shopper.ok("track.watch", {"order_id": "o1"})
    await driver.at(PICKUP)
    await shopper.wait_for(lambda: shopper.of("track.position"))
    await shopper.sio.disconnect()
    for metres in (100, 200, 300, 400, 500):
        await driver.at(north_of(PICKUP, metres))
    await shopper.reconnect()
    before = len(shopper.of("track.position"))
    snapshot = await shopper.ok("track.watch", {"order_id": "o1"})
    assert snapshot["position"]["lat"] == north_of(PICKUP, 500)[0]
    assert snapshot["position"]["ts"] == driver.clock
    eta = snapshot["position"]["eta"]
    assert eta is not None and eta["seconds"] > 0 and eta["distance_m"] > 0
    await barrier(hub, shopper)
    assert len(shopper.of("track.position")) == before  # no backlog was replayed
    await driver.at(north_of(PICKUP, 600))
    await shopper.wait_for(lambda: len(shopper.of("track.position")) == before + 1)
    await shopper.sio.disconnect()
    await driver.sio.disconnect()


@pytest.mark.asyncio
async def test_eta_shrinks_as_the_driver_approaches_and_geofences_notify_once(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(**FAST)
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await Driver(hub.url, hub.token("driver", "driver-1")).connect()
    shopper = await client(hub, "shopper", "shopper-1")
    await shopper.ok("track.watch", {"order_id": "o1"})
    # Far from both, then at the boutique twice, then picked up and on the way to the door.
    route = [east_of(PICKUP, 900), east_of(PICKUP, 40), east_of(PICKUP, 20)]
    for point in route:
        await driver.at(point, speed=8.0)
    await status(hub, "o1", "picked_up")
    approach = [north_of(PICKUP, m) for m in (200, 500, 700, 800, 1050, 1080, 1100)]
    for point in approach:
        await driver.at(point, speed=8.0)
    await shopper.wait_for(lambda: len(shopper.of("track.position")) == len(route) + len(approach))
    etas = [p["eta"]["distance_m"] for p in shopper.of("track.position")[len(route) :]]
    assert etas == sorted(etas, reverse=True) and etas[0] > etas[-1]
    fences = {"at_boutique", "near_customer", "at_door"}
    await shopper.wait_for(lambda: {n["data"].get("fence") for n in shopper.of("notification")} >= fences)
    await barrier(hub, shopper)
    geo = [n for n in shopper.of("notification") if n["data"].get("fence")]
    assert sorted(n["data"]["fence"] for n in geo) == sorted(fences)
    assert all(n["category"] == "delivery" and n["data"]["order_id"] == "o1" for n in geo)
    history = await shopper.ok("track.history", {"order_id": "o1"})
    assert len(history["points"]) == len(route) + len(approach)
    assert [p["ts"] for p in history["points"]] == sorted(p["ts"] for p in history["points"])
    other = await client(hub, "shopper", "shopper-2")
    assert await other.code("track.history", {"order_id": "o1"}) == 2003
    for c in (driver, shopper, other):
        await c.sio.disconnect()


@pytest.mark.asyncio
async def test_bad_fixes_get_clear_codes_and_are_never_kept(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**FAST)
    await hub.service("/api/v1/boutiques", {"boutique_id": B, "lat": PICKUP[0], "lon": PICKUP[1]})
    driver = await Driver(hub.url, hub.token("driver", "driver-1")).connect()
    now = int(time.time() * 1000)
    good = {"lat": PICKUP[0], "lon": PICKUP[1], "accuracy": 5.0, "ts": now - 1000}
    cases = [
        ({**good, "lat": 91.0}, 1005),
        ({**good, "lon": -180.5}, 1005),
        ({**good, "lat": 1e308}, 1005),
        ({**good, "accuracy": -1.0}, 1005),
        ({**good, "speed": -3.0}, 1005),
        ({**good, "heading": 360.0}, 1005),
        ({**good, "ts": now + 3_600_000}, 1006),
        ({**good, "lat": "north"}, 1000),
        ({**good, "extra": 1}, 1000),
    ]
    for fix, code in cases:
        assert await driver.code("driver.location", fix) == code, fix
    # NaN and Infinity: python-socketio in this process encodes them as null, so send them the
    # way a stock Python client does (json.dumps writes NaN / Infinity literals).
    async with aiohttp.ClientSession() as http:
        raw = await RawClient.connect(http, hub.url, auth={"token": hub.token("driver", "driver-1")})
        for fix in ({**good, "lat": math.nan}, {**good, "lon": math.inf}, {**good, "accuracy": -math.inf}):
            ack = await raw.emit("driver.location", fix, ack=True)
            assert ack is not None and ack[0]["error"]["code"] == 1005, (fix, ack)
        await raw.close()
    shopper = await client(hub, "shopper", "shopper-1")
    assert await shopper.code("driver.location", good) == 2003
    dispatcher = await client(hub, "dispatcher", "dispatch-1")
    nearby = await dispatcher.ok("dispatch.nearby", {"boutique_id": B, "radius_km": 100})
    assert nearby["drivers"] == []  # nothing invalid was stored
    assert (await driver.ok("driver.location", good))["kept"] is True
    nearby = await dispatcher.ok("dispatch.nearby", {"boutique_id": B, "radius_km": 1})
    assert [d["driver_id"] for d in nearby["drivers"]] == ["driver-1"]
    for c in (driver, shopper, dispatcher):
        await c.sio.disconnect()


@pytest.mark.asyncio
async def test_dispatchers_find_drivers_near_a_boutique(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**FAST)
    await hub.service("/api/v1/boutiques", {"boutique_id": B, "lat": PICKUP[0], "lon": PICKUP[1]})
    drivers = {}
    for name, metres in (("near", 800), ("mid", 4000), ("far", 30_000)):
        drivers[name] = await Driver(hub.url, hub.token("driver", name)).connect()
        await drivers[name].at(east_of(PICKUP, metres))
    dispatcher = await client(hub, "dispatcher", "dispatch-1")
    two_km = await dispatcher.ok("dispatch.nearby", {"boutique_id": B, "radius_km": 2})
    assert [d["driver_id"] for d in two_km["drivers"]] == ["near"]
    assert abs(two_km["drivers"][0]["distance_m"] - 800) < 10
    ten_km = await dispatcher.ok("dispatch.nearby", {"boutique_id": B, "radius_km": 10})
    assert [d["driver_id"] for d in ten_km["drivers"]] == ["near", "mid"]
    assert await dispatcher.code("dispatch.nearby", {"boutique_id": "unknown-b", "radius_km": 2}) == 4001
    staff = await client(hub, "staff", "clerk", B)
    assert await staff.code("dispatch.nearby", {"boutique_id": B, "radius_km": 2}) == 2003
    for c in (*drivers.values(), dispatcher, staff):
        await c.sio.disconnect()


@pytest.mark.asyncio
async def test_tracking_across_two_nodes_on_redis(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = [await hub_factory(broker=redis_server.url, store=mongo_url, **FAST) for _ in range(2)]
    await a.service("/api/v1/boutiques", {"boutique_id": B, "lat": PICKUP[0], "lon": PICKUP[1]})
    await order(a, "o1", "shopper-1", driver="driver-1")
    driver = await Driver(a.url, mint("driver", "driver-1")).connect()
    shopper = await LiveClient(b.url, mint("shopper", "shopper-1")).connect()
    dispatcher = await LiveClient(b.url, mint("dispatcher", "dispatch-1")).connect()
    await shopper.ok("track.watch", {"order_id": "o1"})
    await driver.at(north_of(PICKUP, 300))
    await shopper.wait_for(lambda: shopper.of("track.position"))
    # Node B answers from the positions node A wrote to Redis GEO.
    nearby = await dispatcher.ok("dispatch.nearby", {"boutique_id": B, "radius_km": 1})
    assert [d["driver_id"] for d in nearby["drivers"]] == ["driver-1"]
    snapshot = await dispatcher.ok("track.watch", {"order_id": "o1"})
    assert snapshot["position"]["lat"] == north_of(PICKUP, 300)[0]
    # Delivery confirmed through node B stops positions to watchers on every node.
    await status(b, "o1", "delivered")
    await shopper.wait_for(lambda: shopper.of("track.ended"))
    seen = len(shopper.of("track.position"))
    await driver.at(north_of(PICKUP, 400))
    await asyncio.sleep(0.5)
    assert len(shopper.of("track.position")) == seen
    for c in (driver, shopper, dispatcher):
        await c.sio.disconnect()
