"""Orders over a real hub: service events, their notifications, who may watch, live updates, listing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.hub import RunningHub
from tests.support.streamclient import StreamClient


def err(payload: Any) -> dict[str, Any]:
    """The ErrorBody of a failed HTTP answer, checking the ack envelope around it."""
    assert isinstance(payload, dict) and set(payload) == {"ok", "error"} and payload["ok"] is False, payload
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"code", "name", "message", "temporary"}, error
    return error


async def connected(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> StreamClient:
    client = StreamClient(hub.url, hub.token(role, sub, boutique=boutique))
    await client.connect()
    await client.wait_for(lambda: any(ev == "welcome" for ev, _ in client.live), timeout=20)
    return client


def notes(client: StreamClient, stream: str | None = None) -> list[dict[str, Any]]:
    return [d for ev, d in client.live if ev == "notification" and (stream is None or d["stream"] == stream)]


def updates(client: StreamClient) -> list[dict[str, Any]]:
    return [d["order"] for ev, d in client.live if ev == "order.updated"]


async def event(hub: RunningHub, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = await hub.service("/api/v1/events", body)
    return result


async def create(hub: RunningHub, order_id: str, shopper: str, boutique: str) -> dict[str, Any]:
    return await event(
        hub,
        type="order.created",
        event_id=f"c-{order_id}",
        order_id=order_id,
        shopper_id=shopper,
        boutique_id=boutique,
    )


async def barrier(hub: RunningHub, client: StreamClient, user: str, tag: str) -> None:
    """Post a notification to ``user`` and wait for it: frames sent to the socket earlier have arrived."""
    await hub.service("/api/v1/notifications", {"user": user, "category": "system", "title": tag, "id": tag})
    await client.wait_for(lambda: tag in [d["id"] for d in notes(client)], timeout=20)


async def error_of(client: StreamClient, event_name: str, data: Any) -> dict[str, Any]:
    reply = await client.call(event_name, data)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


async def disconnect(*clients: StreamClient) -> None:
    for c in clients:
        await c.disconnect()


def strip_ts(order: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(order["updated_ts"], int)
    return {k: v for k, v in order.items() if k != "updated_ts"}


def view(
    status: str = "created",
    driver: str | None = None,
    order_id: str = "o1",
    shopper: str = "alice",
    boutique: str = "b1",
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "shopper_id": shopper,
        "boutique_id": boutique,
        "status": status,
        "driver_id": driver,
    }


# ---------------------------------------------------------------------------------------- created


@pytest.mark.asyncio
async def test_order_created_notifies_shopper_and_boutique_inbox(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    carol = await connected(hub, "staff", "carol", "b1")
    dave = await connected(hub, "staff", "dave", "b2")

    accepted = await event(
        hub,
        type="order.created",
        event_id="e1",
        order_id="o1",
        shopper_id="alice",
        boutique_id="b1",
        total_cents=1999,
        currency="EUR",
    )
    assert accepted == {"event_id": "e1", "duplicate": False}

    await alice.wait_for(lambda: len(notes(alice)) == 1, timeout=20)
    [n] = notes(alice)
    assert (n["stream"], n["seq"], n["id"], n["category"], n["title"], n["body"], n["data"], n["badge"]) == (
        "inbox:u:alice",
        1,
        "e1.s",
        "order",
        "Order placed",
        "Order o1 was placed",
        {"order_id": "o1", "status": "created"},
        1,
    )
    for staff in (bob, carol):
        await staff.wait_for(lambda s=staff: len(notes(s, "inbox:b:b1")) == 1, timeout=20)
        [n] = notes(staff, "inbox:b:b1")
        assert (n["seq"], n["id"], n["category"], n["title"], n["data"]) == (
            1,
            "e1.b",
            "order",
            "New order",
            {"order_id": "o1", "status": "created"},
        )
    await barrier(hub, dave, "dave", "dave-barrier")
    assert [d["id"] for d in notes(dave)] == ["dave-barrier"]

    # the boutique inbox is part of the staff's catch-up
    late = await connected(hub, "staff", "erin", "b1")
    assert [(e["seq"], e["title"]) for e in late.entries["inbox:b:b1"]] == [(1, "New order")]
    assert "inbox:b:b1" not in dave.entries or dave.entries["inbox:b:b1"] == []

    # same event again: no new effect, no second notification
    again = await event(
        hub, type="order.created", event_id="e1", order_id="o1", shopper_id="alice", boutique_id="b1"
    )
    assert again == {"event_id": "e1", "duplicate": True}
    reused = await event(hub, type="order.status_updated", event_id="e1", order_id="o1", status="confirmed")
    assert reused == {"event_id": "e1", "duplicate": True}
    await barrier(hub, alice, "alice", "alice-barrier")
    assert [d["id"] for d in notes(alice)] == ["e1.s", "alice-barrier"]
    assert strip_ts(await alice.ok("order.watch", {"order_id": "o1"})) == view("created")
    page = await bob.ok("catchup", {"stream": "inbox:b:b1", "after": 0})
    assert [e["id"] for e in page["entries"]] == ["e1.b"]
    await disconnect(alice, bob, carol, dave, late)


# ---------------------------------------------------------------------------------------- watch


@pytest.mark.asyncio
async def test_who_may_watch_an_order(hub: RunningHub) -> None:
    await create(hub, "o1", "alice", "b1")
    clients = {
        "alice": await connected(hub, "shopper", "alice"),
        "mallory": await connected(hub, "shopper", "mallory"),
        "bob": await connected(hub, "staff", "bob", "b1"),
        "dave": await connected(hub, "staff", "dave", "b2"),
        "d1": await connected(hub, "driver", "d1"),
        "d2": await connected(hub, "driver", "d2"),
        "disp": await connected(hub, "dispatcher", "disp"),
        "device": await connected(hub, "device", "gw1", "b1"),
    }

    async def may_watch(who: str) -> bool:
        reply = await clients[who].call("order.watch", {"order_id": "o1"})
        if reply["ok"]:
            assert strip_ts(reply["data"])["order_id"] == "o1"
            return True
        assert (reply["error"]["code"], reply["error"]["name"]) == (2003, "forbidden"), reply
        return False

    assert {w: await may_watch(w) for w in clients} == {
        "alice": True,
        "mallory": False,
        "bob": True,
        "dave": False,
        "d1": False,
        "d2": False,
        "disp": True,
        "device": False,
    }

    await event(hub, type="delivery.assigned", event_id="a1", order_id="o1", driver_id="d1")
    assert await may_watch("d1") is True
    assert await may_watch("d2") is False
    assert strip_ts(await clients["d1"].ok("order.watch", {"order_id": "o1"})) == view("created", "d1")

    # an unknown order is refused exactly like a forbidden one
    unknown = await error_of(clients["alice"], "order.watch", {"order_id": "o404"})
    assert unknown["code"] == 2003
    assert (await error_of(clients["alice"], "order.watch", {"order_id": "o/1"}))["code"] == 1003
    await disconnect(*clients.values())


@pytest.mark.asyncio
async def test_watchers_receive_order_updates(hub: RunningHub) -> None:
    await create(hub, "o1", "alice", "b1")
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    disp = await connected(hub, "dispatcher", "disp")
    mallory = await connected(hub, "shopper", "mallory")
    for c in (alice, bob, disp):
        await c.ok("order.watch", {"order_id": "o1"})

    await event(hub, type="order.status_updated", event_id="s1", order_id="o1", status="confirmed")
    await event(hub, type="delivery.assigned", event_id="a1", order_id="o1", driver_id="d1")
    for c, user in ((alice, "alice"), (bob, "bob"), (disp, "disp"), (mallory, "mallory")):
        await barrier(hub, c, user, f"b1-{user}")
    expected = [view("confirmed"), view("confirmed", "d1")]
    for c in (alice, bob, disp):
        assert [strip_ts(o) for o in updates(c)] == expected
    assert updates(mallory) == []

    # unwatch stops the frames for that socket only
    assert await bob.ok("order.unwatch", {"order_id": "o1"}) is None
    await event(hub, type="order.status_updated", event_id="s2", order_id="o1", status="preparing")
    await barrier(hub, bob, "bob", "b2-bob")
    await barrier(hub, alice, "alice", "b2-alice")
    assert [strip_ts(o)["status"] for o in updates(bob)] == ["confirmed", "confirmed"]
    assert [strip_ts(o)["status"] for o in updates(alice)] == ["confirmed", "confirmed", "preparing"]
    await disconnect(alice, bob, disp, mallory)


# ---------------------------------------------------------------------------------------- status rules


@pytest.mark.asyncio
async def test_status_of_unknown_order_is_404(hub: RunningHub) -> None:
    svc = hub.token("service", "svc")
    for body in (
        {"type": "order.status_updated", "event_id": "x1", "order_id": "o404", "status": "confirmed"},
        {"type": "delivery.assigned", "event_id": "x2", "order_id": "o404", "driver_id": "d1"},
    ):
        status, payload = await hub.post("/api/v1/events", body, token=svc)
        assert status == 404
        assert (err(payload)["code"], err(payload)["name"], err(payload)["temporary"]) == (
            4001,
            "not_found",
            False,
        )
    # a failed event is not remembered: once the order exists, the same event applies
    await create(hub, "o404", "alice", "b1")
    accepted = await event(
        hub, type="order.status_updated", event_id="x1", order_id="o404", status="confirmed"
    )
    assert accepted == {"event_id": "x1", "duplicate": False}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        {"type": "order.shipped", "event_id": "e", "order_id": "o1"},
        {"event_id": "e", "order_id": "o1", "shopper_id": "a", "boutique_id": "b"},
        {"type": "order.created", "order_id": "o1", "shopper_id": "a", "boutique_id": "b"},
        {
            "type": "order.created",
            "event_id": "e",
            "order_id": "o1",
            "shopper_id": "a",
            "boutique_id": "b",
            "currency": "eur",
        },
        {
            "type": "order.created",
            "event_id": "e",
            "order_id": "o1",
            "shopper_id": "a",
            "boutique_id": "b",
            "total_cents": -1,
        },
        {"type": "order.status_updated", "event_id": "e", "order_id": "o1", "status": "lost"},
    ],
    ids=["unknown-type", "no-type", "no-event-id", "lowercase-currency", "negative-total", "bad-status"],
)
async def test_malformed_events_are_400(hub: RunningHub, body: dict[str, Any]) -> None:
    status, payload = await hub.post("/api/v1/events", body, token=hub.token("service", "svc"))
    assert (status, err(payload)["code"]) == (400, 1000)


@pytest.mark.asyncio
async def test_events_need_a_service_token(hub: RunningHub) -> None:
    body = {
        "type": "order.created",
        "event_id": "e1",
        "order_id": "o1",
        "shopper_id": "alice",
        "boutique_id": "b1",
    }
    status, payload = await hub.post("/api/v1/events", body)
    assert (status, err(payload)["code"]) == (401, 2001)
    status, payload = await hub.post("/api/v1/events", body, token=hub.token("staff", "bob", "b1"))
    assert (status, err(payload)["code"]) == (403, 2003)
    # nothing was applied: the event id is still fresh
    status, payload = await hub.post("/api/v1/events", body, token=hub.token("service", "svc"))
    assert (status, payload) == (200, {"ok": True, "data": {"event_id": "e1", "duplicate": False}})


@pytest.mark.asyncio
async def test_a_stale_status_is_ignored(hub: RunningHub) -> None:
    await create(hub, "o1", "alice", "b1")
    alice = await connected(hub, "shopper", "alice")
    await alice.ok("order.watch", {"order_id": "o1"})
    await event(hub, type="order.status_updated", event_id="s1", order_id="o1", status="delivered")
    stale = await event(hub, type="order.status_updated", event_id="s2", order_id="o1", status="in_transit")
    assert stale["duplicate"] is False
    repeated = await event(hub, type="order.status_updated", event_id="s3", order_id="o1", status="delivered")
    assert repeated["duplicate"] is False
    await barrier(hub, alice, "alice", "after-stale")
    assert [strip_ts(o)["status"] for o in updates(alice)] == ["delivered"]
    assert [(d["id"], d["title"]) for d in notes(alice)] == [
        ("c-o1.s", "Order placed"),
        ("s1.s", "Your order was delivered"),
        ("after-stale", "after-stale"),
    ]
    assert strip_ts(await alice.ok("order.watch", {"order_id": "o1"})) == view("delivered")
    assert [o["status"] for o in (await alice.ok("order.list", {}))["orders"]] == ["delivered"]
    await alice.disconnect()


@pytest.mark.asyncio
async def test_cancelled_is_terminal_and_notifies_the_boutique(hub: RunningHub) -> None:
    await create(hub, "o1", "alice", "b1")
    bob = await connected(hub, "staff", "bob", "b1")
    await event(hub, type="order.status_updated", event_id="s1", order_id="o1", status="cancelled")
    await event(hub, type="order.status_updated", event_id="s2", order_id="o1", status="confirmed")
    await bob.wait_for(lambda: len(bob.entries["inbox:b:b1"]) == 2, timeout=20)
    assert [e["title"] for e in bob.entries["inbox:b:b1"]] == ["New order", "Order cancelled"]
    assert strip_ts(await bob.ok("order.watch", {"order_id": "o1"})) == view("cancelled")
    await bob.disconnect()


# ---------------------------------------------------------------------------------------- delivery


@pytest.mark.asyncio
async def test_delivery_assigned_notifies_driver_and_shopper(hub: RunningHub) -> None:
    await create(hub, "o1", "alice", "b1")
    alice = await connected(hub, "shopper", "alice")
    d1 = await connected(hub, "driver", "d1")
    d2 = await connected(hub, "driver", "d2")
    accepted = await event(hub, type="delivery.assigned", event_id="a1", order_id="o1", driver_id="d1")
    assert accepted == {"event_id": "a1", "duplicate": False}
    await d1.wait_for(lambda: len(notes(d1)) == 1, timeout=20)
    [job] = notes(d1)
    assert {k: job[k] for k in ("stream", "id", "category", "title", "body", "data", "alert")} == {
        "stream": "inbox:u:d1",
        "id": "a1.d",
        "category": "delivery",
        "title": "New delivery job",
        "body": "Order o1",
        "data": {"order_id": "o1", "driver_id": "d1"},
        "alert": True,
    }
    await alice.wait_for(lambda: "a1.s" in [d["id"] for d in notes(alice)], timeout=20)
    assert [d["title"] for d in notes(alice) if d["id"] == "a1.s"] == ["A driver is assigned"]
    await barrier(hub, d2, "d2", "d2-barrier")
    assert [d["id"] for d in notes(d2)] == ["d2-barrier"]

    # a retried assignment does not notify again
    retried = await event(hub, type="delivery.assigned", event_id="a1", order_id="o1", driver_id="d1")
    assert retried == {"event_id": "a1", "duplicate": True}
    await barrier(hub, d1, "d1", "d1-barrier")
    assert [d["id"] for d in notes(d1)] == ["a1.d", "d1-barrier"]
    await disconnect(alice, d1, d2)


# ---------------------------------------------------------------------------------------- listing


@pytest.mark.asyncio
async def test_order_list_returns_only_own_orders_newest_first(hub: RunningHub) -> None:
    async def tick() -> None:
        await asyncio.sleep(0.01)  # distinct millisecond timestamps

    await create(hub, "o1", "alice", "b1")
    await tick()
    await create(hub, "o2", "alice", "b2")
    await tick()
    await create(hub, "o3", "mallory", "b1")
    await tick()
    await event(hub, type="delivery.assigned", event_id="a3", order_id="o3", driver_id="d1")
    await tick()
    await event(hub, type="delivery.assigned", event_id="a2", order_id="o2", driver_id="d2")

    who = {
        "alice": ("shopper", "alice", None),
        "mallory": ("shopper", "mallory", None),
        "bob": ("staff", "bob", "b1"),
        "dave": ("staff", "dave", "b2"),
        "erin": ("staff", "erin", "b3"),
        "d1": ("driver", "d1", None),
        "d2": ("driver", "d2", None),
        "d3": ("driver", "d3", None),
        "disp": ("dispatcher", "disp", None),
    }
    lists = {}
    for name, (role, sub, boutique) in who.items():
        c = await connected(hub, role, sub, boutique)
        lists[name] = [o["order_id"] for o in (await c.ok("order.list", {}))["orders"]]
        if name == "bob":
            limited = await c.ok("order.list", {"limit": 1})
            assert [o["order_id"] for o in limited["orders"]] == ["o3"]
            assert strip_ts(limited["orders"][0]) == view("created", "d1", "o3", "mallory", "b1")
            bad = await c.call("order.list", {"limit": 0})
            assert (bad["ok"], bad["error"]["code"]) == (False, 1000)
        await c.disconnect()
    assert lists == {
        "alice": ["o2", "o1"],
        "mallory": ["o3"],
        "bob": ["o3", "o1"],
        "dave": ["o2"],
        "erin": [],
        "d1": ["o3"],
        "d2": ["o2"],
        "d3": [],
        "disp": [],
    }
