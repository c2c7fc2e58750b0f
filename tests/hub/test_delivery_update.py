"""``delivery.update`` over real hubs: the assigned driver reports accepted, picked up and delivered.

Orders and assignments come from the service HTTP API, as in production; the driver, shopper,
staff and dispatcher are real Socket.IO clients. Notifications are checked in the shopper's
durable inbox (read with ``catchup`` after the ack, which comes only after the durable write),
so counts do not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio

from tests.support.hub import RunningHub

HubFactory = Callable[..., Awaitable[RunningHub]]
B = "boutique-a"
PICKUP = (-1.2921, 36.8219)
DROPOFF = (-1.2821, 36.8219)  # about 1.1 km north of the pickup
ACCEPTED_TITLE = "Your driver accepted the delivery"
FORBIDDEN, NOT_FOUND, BAD_REQUEST, INVALID_ID = 2003, 4001, 1000, 1003


class Client:
    """A Socket.IO client that records every server event it is sent."""

    def __init__(self, hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> None:
        self.hub, self.sub = hub, sub
        self.token = hub.token(role, sub, boutique)
        self.events: list[tuple[str, Any]] = []
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any) -> None:
        self.events.append((event, data))

    async def connect(self) -> Client:
        await self.sio.connect(
            self.hub.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        await self.wait_for(lambda: self.of("welcome"))
        return self

    def of(self, event: str) -> list[Any]:
        return [d for e, d in self.events if e == event]

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=10)

    async def ok(self, event: str, data: Any) -> Any:
        reply = await self.call(event, data)
        assert reply["ok"] is True, reply
        return reply["data"]

    async def code(self, event: str, data: Any) -> int:
        reply = await self.call(event, data)
        assert reply["ok"] is False, reply
        return int(reply["error"]["code"])

    async def update(self, event_id: str, order_id: str, step: str) -> dict[str, Any]:
        """Send one ``delivery.update`` and return its ack data."""
        data: dict[str, Any] = await self.ok(
            "delivery.update", {"event_id": event_id, "order_id": order_id, "step": step}
        )
        return data

    async def inbox(self) -> list[dict[str, Any]]:
        """Every entry of this user's durable inbox, oldest first."""
        page = await self.ok("catchup", {"stream": f"inbox:u:{self.sub}", "after": 0, "limit": 500})
        assert page["has_more"] is False
        entries: list[dict[str, Any]] = page["entries"]
        return entries

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.sio.disconnect()


async def connect(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> Client:
    return await Client(hub, role, sub, boutique).connect()


async def order(hub: RunningHub, order_id: str, shopper: str, driver: str | None = None) -> None:
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


async def service_status(hub: RunningHub, order_id: str, status: str) -> None:
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.status_updated",
            "event_id": f"s-{order_id}-{status}",
            "order_id": order_id,
            "status": status,
        },
    )


async def current(dispatcher: Client, order_id: str) -> str:
    """The order's status as the hub reports it to a dispatcher."""
    status: str = (await dispatcher.ok("order.watch", {"order_id": order_id}))["status"]
    return status


def titled(entries: list[dict[str, Any]], title: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["title"] == title]


def reply(order_id: str, status: str, *, applied: bool, duplicate: bool = False) -> dict[str, Any]:
    return {"order_id": order_id, "status": status, "applied": applied, "duplicate": duplicate}


@pytest.mark.asyncio
async def test_the_assigned_driver_reports_each_step(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    shopper = await connect(hub, "shopper", "shopper-1")
    await shopper.ok("order.watch", {"order_id": "o1"})

    assert await driver.update("e1", "o1", "accepted") == reply("o1", "created", applied=True)
    # No status for "accepted", and nothing about it on the order.
    listed = (await driver.ok("order.list", {}))["orders"]
    assert [(o["order_id"], o["status"], o["driver_id"]) for o in listed] == [("o1", "created", "driver-1")]
    assert await driver.update("e2", "o1", "picked_up") == reply("o1", "picked_up", applied=True)
    assert await driver.update("e3", "o1", "delivered") == reply("o1", "delivered", applied=True)

    await shopper.wait_for(lambda: len(shopper.of("order.updated")) == 2)
    assert [f["order"]["status"] for f in shopper.of("order.updated")] == ["picked_up", "delivered"]
    inbox = await shopper.inbox()
    assert [(e["title"], e["category"]) for e in inbox] == [
        ("Order placed", "order"),
        ("A driver is assigned", "delivery"),
        (ACCEPTED_TITLE, "delivery"),
        ("Your order was picked up", "delivery"),
        ("Your order was delivered", "delivery"),
    ]
    assert titled(inbox, ACCEPTED_TITLE)[0]["data"] == {"order_id": "o1", "driver_id": "driver-1"}
    assert titled(inbox, "Your order was delivered")[0]["data"] == {"order_id": "o1", "status": "delivered"}
    await driver.close()
    await shopper.close()


@pytest.mark.asyncio
async def test_steps_the_order_already_passed_answer_its_current_status(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    shopper = await connect(hub, "shopper", "shopper-1")
    dispatcher = await connect(hub, "dispatcher", "dispatch-1")

    await service_status(hub, "o1", "in_transit")
    assert await driver.update("e1", "o1", "picked_up") == reply("o1", "in_transit", applied=False)
    assert await driver.update("e2", "o1", "accepted") == reply("o1", "in_transit", applied=False)
    assert await driver.update("e3", "o1", "delivered") == reply("o1", "delivered", applied=True)
    assert await driver.update("e4", "o1", "picked_up") == reply("o1", "delivered", applied=False)
    assert await current(dispatcher, "o1") == "delivered"
    inbox = await shopper.inbox()
    assert titled(inbox, ACCEPTED_TITLE) == []
    assert titled(inbox, "Your order was picked up") == []
    assert len(titled(inbox, "Your order was delivered")) == 1

    # Nothing follows a cancellation, not even a later rank.
    await order(hub, "o2", "shopper-1", driver="driver-1")
    await service_status(hub, "o2", "cancelled")
    assert await driver.update("e5", "o2", "delivered") == reply("o2", "cancelled", applied=False)
    assert await current(dispatcher, "o2") == "cancelled"
    for c in (driver, shopper, dispatcher):
        await c.close()


@pytest.mark.asyncio
async def test_only_the_assigned_driver_may_report(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    dispatcher = await connect(hub, "dispatcher", "dispatch-1")
    refused = {
        "other driver": await connect(hub, "driver", "driver-2"),
        "the order's shopper": await connect(hub, "shopper", "shopper-1"),
        "the boutique's staff": await connect(hub, "staff", "clerk", B),
        "dispatcher": dispatcher,
        "device": await connect(hub, "device", "shelf", B),
    }
    for name, who in refused.items():
        for step in ("accepted", "picked_up", "delivered"):
            body = {"event_id": f"x-{step}", "order_id": "o1", "step": step}
            assert await who.code("delivery.update", body) == FORBIDDEN, (name, step)
        # Callers that are no driver learn nothing about whether an order exists.
        if name != "other driver":
            body = {"event_id": "x", "order_id": "no-such-order", "step": "delivered"}
            assert await who.code("delivery.update", body) == FORBIDDEN, name
    assert (
        await driver.code("delivery.update", {"event_id": "x", "order_id": "nope", "step": "accepted"})
        == NOT_FOUND
    )
    assert await current(dispatcher, "o1") == "created"
    shopper = refused["the order's shopper"]
    assert titled(await shopper.inbox(), ACCEPTED_TITLE) == []

    # Reassigned: the old driver loses the right, the new one gains it.
    await assign(hub, "o1", "driver-2")
    body = {"event_id": "e1", "order_id": "o1", "step": "picked_up"}
    assert await driver.code("delivery.update", body) == FORBIDDEN
    assert await refused["other driver"].update("e1", "o1", "picked_up") == reply(
        "o1", "picked_up", applied=True
    )
    for c in (driver, *refused.values()):
        await c.close()


@pytest.mark.asyncio
async def test_a_repeated_event_id_answers_duplicate_with_no_new_effect(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    await order(hub, "o2", "shopper-2", driver="driver-2")
    driver = await connect(hub, "driver", "driver-1")
    other = await connect(hub, "driver", "driver-2")
    shopper = await connect(hub, "shopper", "shopper-1")
    dispatcher = await connect(hub, "dispatcher", "dispatch-1")
    await shopper.ok("order.watch", {"order_id": "o1"})

    assert await driver.update("e1", "o1", "picked_up") == reply("o1", "picked_up", applied=True)
    assert await driver.update("e1", "o1", "picked_up") == reply(
        "o1", "picked_up", applied=False, duplicate=True
    )
    # The id decides, not the content: a different step under a seen id is still the old event.
    assert await driver.update("e1", "o1", "delivered") == reply(
        "o1", "picked_up", applied=False, duplicate=True
    )
    assert await current(dispatcher, "o1") == "picked_up"
    assert len(titled(await shopper.inbox(), "Your order was picked up")) == 1
    assert len(titled(await shopper.inbox(), "Your order was delivered")) == 0

    # Event ids are scoped to the driver: another driver's "e1" is its own event.
    assert await other.update("e1", "o2", "picked_up") == reply("o2", "picked_up", applied=True)
    # ...and a service event with the same id is not a duplicate of the driver's either.
    await hub.service(
        "/api/v1/events",
        {"type": "order.status_updated", "event_id": "e1", "order_id": "o1", "status": "in_transit"},
    )
    assert await current(dispatcher, "o1") == "in_transit"
    await shopper.wait_for(lambda: len(shopper.of("order.updated")) == 2)
    assert [f["order"]["status"] for f in shopper.of("order.updated")] == ["picked_up", "in_transit"]
    for c in (driver, other, shopper, dispatcher):
        await c.close()


@pytest.mark.asyncio
async def test_a_retry_after_a_hub_restart_is_still_a_duplicate(hub_factory: HubFactory) -> None:
    hub1 = await hub_factory()
    await order(hub1, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub1, "driver", "driver-1")
    assert await driver.update("e1", "o1", "accepted") == reply("o1", "created", applied=True)
    assert await driver.update("e2", "o1", "delivered") == reply("o1", "delivered", applied=True)
    await driver.close()
    await hub1.stop()

    hub2 = await hub_factory()  # same data directory: the same SQLite file
    driver = await connect(hub2, "driver", "driver-1")
    assert await driver.update("e1", "o1", "accepted") == reply(
        "o1", "delivered", applied=False, duplicate=True
    )
    assert await driver.update("e2", "o1", "delivered") == reply(
        "o1", "delivered", applied=False, duplicate=True
    )
    shopper = await connect(hub2, "shopper", "shopper-1")
    inbox = await shopper.inbox()
    assert len(titled(inbox, ACCEPTED_TITLE)) == 1
    assert len(titled(inbox, "Your order was delivered")) == 1
    await driver.close()
    await shopper.close()


@pytest.mark.asyncio
async def test_accepted_notifies_the_shopper_once(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    shopper = await connect(hub, "shopper", "shopper-1")

    assert await driver.update("e1", "o1", "accepted") == reply("o1", "created", applied=True)
    await shopper.wait_for(lambda: titled(shopper.of("notification"), ACCEPTED_TITLE))
    assert await driver.update("e1", "o1", "accepted") == reply(
        "o1", "created", applied=False, duplicate=True
    )
    # A second acceptance from the same driver, under a new id (say, a reinstalled app), is moot.
    assert await driver.update("e2", "o1", "accepted") == reply("o1", "created", applied=False)
    accepted = titled(await shopper.inbox(), ACCEPTED_TITLE)
    assert [(e["category"], e["data"]) for e in accepted] == [
        ("delivery", {"order_id": "o1", "driver_id": "driver-1"})
    ]
    # Live, too, exactly one: a marker notification sent afterwards arrives after anything earlier.
    await hub.service("/api/v1/notifications", {"user": "shopper-1", "category": "system", "title": "marker"})
    await shopper.wait_for(lambda: titled(shopper.of("notification"), "marker"))
    assert len(titled(shopper.of("notification"), ACCEPTED_TITLE)) == 1

    # A newly assigned driver's acceptance is news again.
    await assign(hub, "o1", "driver-2")
    new_driver = await connect(hub, "driver", "driver-2")
    assert await new_driver.update("e1", "o1", "accepted") == reply("o1", "created", applied=True)
    accepted = titled(await shopper.inbox(), ACCEPTED_TITLE)
    assert [e["data"]["driver_id"] for e in accepted] == ["driver-1", "driver-2"]
    for c in (driver, new_driver, shopper):
        await c.close()


@pytest.mark.asyncio
async def test_delivered_ends_tracking_and_picked_up_moves_the_geofences(hub_factory: HubFactory) -> None:
    hub = await hub_factory(gps_min_period_s=0.0)
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    shopper = await connect(hub, "shopper", "shopper-1")
    snapshot = await shopper.ok("track.watch", {"order_id": "o1"})
    assert (snapshot["active"], snapshot["status"]) == (True, "created")

    clock = int(time.time() * 1000) - 600_000

    async def fix(point: tuple[float, float]) -> None:
        nonlocal clock
        clock += 60_000
        accepted = await driver.ok(
            "driver.location", {"lat": point[0], "lon": point[1], "accuracy": 5.0, "ts": clock}
        )
        assert accepted["kept"] is True, accepted

    # At the shopper's door before pickup: the door fences do not count yet.
    await fix(DROPOFF)
    await shopper.wait_for(lambda: shopper.of("track.position"))
    assert [e for e in await shopper.inbox() if e["id"].startswith("geo.")] == []
    assert (await driver.update("e1", "o1", "picked_up"))["applied"] is True
    await fix((DROPOFF[0] + 0.0002, DROPOFF[1]))  # about 22 m on: past the distance filter
    await shopper.wait_for(lambda: len(shopper.of("track.position")) == 2)
    fences = {e["id"] for e in await shopper.inbox() if e["id"].startswith("geo.")}
    assert fences == {"geo.o1.near_customer", "geo.o1.at_door"}

    assert await driver.update("e2", "o1", "delivered") == reply("o1", "delivered", applied=True)
    await shopper.wait_for(lambda: shopper.of("track.ended"))
    assert shopper.of("track.ended") == [{"order_id": "o1", "status": "delivered"}]
    again = await shopper.ok("track.watch", {"order_id": "o1"})
    assert (again["active"], again["position"], again["status"]) == (False, None, "delivered")
    await driver.close()
    await shopper.close()


@pytest.mark.asyncio
async def test_malformed_updates_are_refused_and_change_nothing(hub: RunningHub) -> None:
    await order(hub, "o1", "shopper-1", driver="driver-1")
    driver = await connect(hub, "driver", "driver-1")
    dispatcher = await connect(hub, "dispatcher", "dispatch-1")
    good = {"event_id": "e1", "order_id": "o1", "step": "picked_up"}
    bad: list[tuple[Any, int]] = [
        ({**good, "step": "cancelled"}, BAD_REQUEST),
        ({**good, "step": "in_transit"}, BAD_REQUEST),
        ({**good, "step": "PICKED_UP"}, BAD_REQUEST),
        ({"event_id": "e1", "order_id": "o1"}, BAD_REQUEST),
        ({**good, "status": "picked_up"}, BAD_REQUEST),
        ({**good, "order_id": 1}, BAD_REQUEST),
        ("picked_up", BAD_REQUEST),
        ({**good, "event_id": "e 1"}, INVALID_ID),
        ({**good, "order_id": {"$ne": None}}, BAD_REQUEST),
    ]
    for body, code in bad:
        assert await driver.code("delivery.update", body) == code, body
    assert await current(dispatcher, "o1") == "created"
    # The refused attempts did not burn the event id.
    assert await driver.update("e1", "o1", "picked_up") == reply("o1", "picked_up", applied=True)
    await driver.close()
    await dispatcher.close()
