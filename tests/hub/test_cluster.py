"""Hub nodes sharing a real redis-server and a MongoDB (SecantusDB) store.

Covers fan-out, presence, rate limits and Redis outages.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.hub import HubProcess, RunningHub, mint
from tests.support.redis import RedisServer
from tests.support.streamclient import StreamClient

HubFactory = Callable[..., Awaitable[RunningHub]]
CONV = "chat:b:b1:alice"


async def connected(url: str, role: str, sub: str, boutique: str | None = None) -> StreamClient:
    client = StreamClient(url, mint(role, sub, boutique))
    await client.connect()
    await client.wait_for(lambda: any(ev == "welcome" for ev, _ in client.live), timeout=20)
    return client


def frames(client: StreamClient, event: str) -> list[Any]:
    return [d for ev, d in client.live if ev == event]


async def ready(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


async def until_degraded(url: str, timeout: float = 10.0) -> None:
    """Wait until the node's /readyz reports ``degraded`` (it noticed Redis is gone)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await ready(url))[1]["status"] != "degraded":
        assert asyncio.get_running_loop().time() < deadline, "never reported degraded"
        await asyncio.sleep(0.05)


async def two_nodes(
    hub_factory: HubFactory, redis_server: RedisServer, store: str, **settings: Any
) -> list[RunningHub]:
    """Two nodes sharing one Redis and one MongoDB store, as in production."""
    return [await hub_factory(broker=redis_server.url, store=store, **settings) for _ in range(2)]


@pytest.mark.asyncio
async def test_chat_through_either_node_reaches_everyone_exactly_once(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = await two_nodes(hub_factory, redis_server, mongo_url)
    alice = await connected(a.url, "shopper", "alice")
    bob_on_b = await connected(b.url, "staff", "bob", "b1")
    carol_on_a = await connected(a.url, "staff", "carol", "b1")
    eve_on_b = await connected(b.url, "shopper", "eve")  # another shopper: must see nothing

    await alice.send(CONV, "hello from node A")
    await bob_on_b.send(CONV, "hello from node B")
    await alice.send(CONV, "second")
    expected = ["hello from node A", "hello from node B", "second"]
    for client in (alice, bob_on_b, carol_on_a):
        await client.wait_for(lambda c=client: len(frames(c, "chat.message")) >= 3)
    await asyncio.sleep(0.3)  # a duplicate, if any, would have arrived by now
    for client in (alice, bob_on_b, carol_on_a):
        assert [f["text"] for f in frames(client, "chat.message")] == expected
        assert client.texts(CONV) == expected
    assert frames(eve_on_b, "chat.message") == []
    for c in (alice, bob_on_b, carol_on_a, eve_on_b):
        await c.disconnect()


@pytest.mark.asyncio
async def test_a_service_event_on_one_node_notifies_sockets_on_the_other(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = await two_nodes(hub_factory, redis_server, mongo_url)
    alice_on_a = await connected(a.url, "shopper", "alice")
    staff_on_a = await connected(a.url, "staff", "bob", "b1")
    await b.service(
        "/api/v1/events",
        {
            "type": "order.created",
            "event_id": "e1",
            "order_id": "o1",
            "shopper_id": "alice",
            "boutique_id": "b1",
        },
    )
    await alice_on_a.wait_for(lambda: len(frames(alice_on_a, "notification")) == 1)
    await staff_on_a.wait_for(lambda: len(frames(staff_on_a, "notification")) == 1)
    assert frames(alice_on_a, "notification")[0]["data"] == {"order_id": "o1", "status": "created"}
    await alice_on_a.disconnect()
    await staff_on_a.disconnect()


@pytest.mark.asyncio
async def test_presence_is_cluster_wide(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = await two_nodes(hub_factory, redis_server, mongo_url)
    alice_on_a = await connected(a.url, "shopper", "alice")
    assert await alice_on_a.ok("presence.watch", {"boutiques": ["b1"]}) == {
        "boutiques": [{"boutique": "b1", "online": False}]
    }
    bob_on_b = await connected(b.url, "staff", "bob", "b1")
    await alice_on_a.wait_for(lambda: frames(alice_on_a, "presence") == [{"boutique": "b1", "online": True}])
    carol_on_a = await connected(a.url, "staff", "carol", "b1")  # already online: no new frame
    await bob_on_b.disconnect()  # carol, on the other node, keeps b1 online
    assert await alice_on_a.ok("presence.watch", {"boutiques": ["b1"]}) == {
        "boutiques": [{"boutique": "b1", "online": True}]
    }
    await carol_on_a.disconnect()
    await alice_on_a.wait_for(lambda: len(frames(alice_on_a, "presence")) == 2)
    assert frames(alice_on_a, "presence")[1] == {"boutique": "b1", "online": False}
    await alice_on_a.disconnect()


@pytest.mark.asyncio
async def test_a_dead_nodes_staff_stop_counting_after_the_presence_ttl(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str, tmp_path: Path
) -> None:
    a = await hub_factory(broker=redis_server.url, store=mongo_url, presence_ttl=1.5)
    doomed = HubProcess(
        tmp_path / "doomed",
        extra_env={
            "SOKO_BROKER": redis_server.url,
            "SOKO_PRESENCE_TTL": "1.5",
            "SOKO_STORE": mongo_url,
        },
    )
    (tmp_path / "doomed").mkdir()
    await doomed.start()
    try:
        alice_on_a = await connected(a.url, "shopper", "alice")
        await alice_on_a.ok("presence.watch", {"boutiques": ["b1"]})
        bob = await connected(doomed.url, "staff", "bob", "b1")
        await alice_on_a.wait_for(
            lambda: frames(alice_on_a, "presence") == [{"boutique": "b1", "online": True}]
        )
        doomed.signal(signal.SIGKILL)  # no disconnect is ever reported for bob
        await doomed.wait()
        await alice_on_a.wait_for(lambda: len(frames(alice_on_a, "presence")) == 2, timeout=10)
        assert frames(alice_on_a, "presence")[1] == {"boutique": "b1", "online": False}
        await bob.disconnect()
        await alice_on_a.disconnect()
    finally:
        await doomed.stop()


@pytest.mark.asyncio
async def test_the_rate_limit_is_one_budget_per_user_across_nodes(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = await two_nodes(hub_factory, redis_server, mongo_url, rate_per_second=0.5, rate_burst=8)
    on_a = await connected(a.url, "shopper", "alice")  # each connect spends one event on `sync`
    on_b = await connected(b.url, "shopper", "alice")  # the same user on the other node
    replies = [await on_a.call("order.list", {}) for _ in range(3)]
    replies += [await on_b.call("order.list", {}) for _ in range(3)]
    assert all(r["ok"] for r in replies), replies  # 2 syncs + these 6 spend the burst of 8, shared
    refused = await on_b.call("order.list", {})
    assert refused["ok"] is False and refused["error"]["code"] == 3001
    refused = await on_a.call("order.list", {})
    assert refused["ok"] is False and refused["error"]["code"] == 3001
    other_user = await connected(b.url, "shopper", "eve")
    assert (await other_user.call("order.list", {}))["ok"]  # others keep their own budget
    for c in (on_a, on_b, other_user):
        await c.disconnect()


@pytest.mark.asyncio
async def test_redis_down_degrades_readiness_keeps_local_chat_and_resyncs_on_return(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    a, b = await two_nodes(hub_factory, redis_server, mongo_url)
    alice_on_a = await connected(a.url, "shopper", "alice")
    staff_on_a = await connected(a.url, "staff", "carol", "b1")
    staff_on_b = await connected(b.url, "staff", "bob", "b1")
    assert await ready(a.url) == (200, {"status": "ok", "checks": {"store": "ok", "broker": "ok"}})

    await redis_server.kill()
    await until_degraded(a.url)
    assert await ready(a.url) == (200, {"status": "degraded", "checks": {"store": "ok", "broker": "down"}})

    await alice_on_a.send(CONV, "while redis is down")  # durable, and delivered on node A at once
    await staff_on_a.wait_for(lambda: staff_on_a.texts(CONV) == ["while redis is down"])
    await asyncio.sleep(0.3)
    assert staff_on_b.texts(CONV) == []  # node B could not hear it live

    await redis_server.start()
    # Node B resubscribes and tells its sockets to sync: bob gets the message without a new one arriving.
    await staff_on_b.wait_for(lambda: staff_on_b.texts(CONV) == ["while redis is down"], timeout=5)
    assert staff_on_b.resyncs >= 1
    assert staff_on_a.texts(CONV) == ["while redis is down"]  # nobody sees it twice
    assert (await ready(b.url))[1]["status"] == "ok"
    for c in (alice_on_a, staff_on_a, staff_on_b):
        await c.disconnect()


@pytest.mark.asyncio
async def test_an_eviction_lost_in_a_redis_outage_is_enforced_on_recovery(
    redis_server: RedisServer, hub_factory: HubFactory, mongo_url: str
) -> None:
    """A driver taken off an order while Redis was down must not keep watching it from another node."""
    a, b = await two_nodes(hub_factory, redis_server, mongo_url)
    created = {"type": "order.created", "event_id": "c1", "order_id": "o1", "shopper_id": "alice"}
    await a.service("/api/v1/events", {**created, "boutique_id": "b1"})
    assign = {"type": "delivery.assigned", "order_id": "o1"}
    await a.service("/api/v1/events", {**assign, "event_id": "a1", "driver_id": "d1"})
    d1_on_b = await connected(b.url, "driver", "d1")
    await d1_on_b.ok("order.watch", {"order_id": "o1"})

    await redis_server.kill()
    await until_degraded(a.url)
    await a.service("/api/v1/events", {**assign, "event_id": "a2", "driver_id": "d2"})  # evict lost for B
    await redis_server.start()
    await d1_on_b.wait_for(lambda: d1_on_b.resyncs >= 1, timeout=10)

    seen = len(frames(d1_on_b, "order.updated"))
    status = {"type": "order.status_updated", "event_id": "s1", "order_id": "o1", "status": "confirmed"}
    await a.service("/api/v1/events", status)
    alice = await connected(a.url, "shopper", "alice")
    await alice.ok("order.watch", {"order_id": "o1"})
    await b.service("/api/v1/events", {**status, "event_id": "s2", "status": "preparing"})
    await alice.wait_for(
        lambda: any(f["order"]["status"] == "preparing" for f in frames(alice, "order.updated"))
    )
    await asyncio.sleep(0.3)
    assert len(frames(d1_on_b, "order.updated")) == seen, "the old driver still receives the order"
    for c in (d1_on_b, alice):
        await c.disconnect()
