"""Inventory over a real hub: versions that never go backwards, watching, alerts, wishlists.

The big test sends 10,000 stock changes over 1,000 SKUs with reordering and duplicates
injected, while three clients watch (one stays online, two go offline and rejoin two
different ways), and checks every client, the server and an independent oracle agree.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest

from tests.support.hub import RunningHub
from tests.support.redis import RedisServer
from tests.support.stockclient import StockClient
from tests.support.streamclient import StreamClient

B = "boutique-a"
OTHER = "boutique-b"


def set_(
    event_id: str, sku: str, level: int, version: int | None = None, boutique: str = B
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "stock.set", "event_id": event_id, "boutique_id": boutique, "sku": sku}
    body["level"] = level
    if version is not None:
        body["version"] = version
    return body


def adjust(event_id: str, sku: str, delta: int, boutique: str = B) -> dict[str, Any]:
    return {"type": "stock.adjust", "event_id": event_id, "boutique_id": boutique, "sku": sku, "delta": delta}


async def stock_client(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> StockClient:
    client = StockClient(hub.url, hub.token(role, sub, boutique=boutique))
    await client.connect()
    return client


async def error_code(client: StockClient, event: str, data: Any) -> int:
    reply = await client.sio.call(event, data, timeout=10)
    assert reply["ok"] is False, reply
    return int(reply["error"]["code"])


class Oracle:
    """The inventory rules, written again independently of the hub's code."""

    def __init__(self) -> None:
        self.level: dict[str, int] = defaultdict(int)
        self.version: dict[str, int] = defaultdict(int)
        self.sources: dict[tuple[str, str], int] = defaultdict(int)
        self.low: dict[str, bool] = defaultdict(bool)
        self.thresholds: dict[str, tuple[int, int]] = {}
        self.seen: set[str] = set()
        self.low_alerts = 0
        self.back_in_stock: list[str] = []

    def apply(self, event: dict[str, Any], source: str) -> str:
        if event["event_id"] in self.seen:
            return "duplicate"
        sku = event["sku"]
        version = event.get("version")
        if version is not None and version <= self.sources[(sku, source)]:
            return "stale"
        self.seen.add(event["event_id"])
        before = self.level[sku]
        after = event["level"] if event["type"] == "stock.set" else max(0, before + event["delta"])
        if version is not None:
            self.sources[(sku, source)] = version
        if sku in self.thresholds:
            low, clear = self.thresholds[sku]
            if not self.low[sku] and after <= low:
                self.low[sku] = True
                self.low_alerts += 1
            elif self.low[sku] and after >= clear:
                self.low[sku] = False
        if before == 0 and after > 0:
            self.back_in_stock.append(sku)
        self.level[sku] = after
        self.version[sku] += 1
        return "applied"


def verdict(result: dict[str, Any]) -> str:
    return "applied" if result["applied"] else "duplicate" if result["duplicate"] else "stale"


async def server_state(client: StockClient, boutique: str = B) -> dict[str, tuple[int, int]]:
    state: dict[str, tuple[int, int]] = {}
    after = None
    while True:
        page = await client.ok("stock.levels", {"boutique_id": boutique, "after": after})
        state.update({i["sku"]: (i["level"], i["version"]) for i in page["items"] if i["version"] > 0})
        if not page["has_more"]:
            return state
        after = page["next_after"]


def titles(client: StreamClient, stream: str, prefix: str) -> list[str]:
    return [e["title"] for e in client.entries[stream] if e["title"].startswith(prefix)]


@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_ten_thousand_reordered_and_duplicated_changes_end_equal_everywhere(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub: RunningHub = await hub_factory(send_queue_max=50_000, rate_per_second=5000.0, rate_burst=5000)
    rng = random.Random(20261121)
    skus = [f"sku-{i:04d}" for i in range(1000)]
    generated: dict[str, int] = defaultdict(int)
    changes: list[tuple[str, dict[str, Any]]] = []
    for i in range(10_000):
        sku = rng.choice(skus)
        if rng.random() < 0.7:
            generated[sku] += 1
            changes.append(("device", set_(f"e{i}", sku, rng.randint(0, 12), generated[sku])))
        else:
            changes.append(("staff", adjust(f"e{i}", sku, rng.randint(-4, 4))))
    # Reorder: shuffle within windows of 2,000, so a SKU's versioned readings often arrive late.
    shuffled: list[tuple[str, dict[str, Any]]] = []
    for start in range(0, len(changes), 2000):
        window = changes[start : start + 2000]
        rng.shuffle(window)
        shuffled.extend(window)
    # Duplicate: re-send 10% of the changes, each somewhere after its first sending.
    keyed = [(float(i), change) for i, change in enumerate(shuffled)]
    keyed += [
        (rng.uniform(i + 0.5, len(shuffled)), shuffled[i]) for i in rng.sample(range(len(shuffled)), 1000)
    ]
    sent = [change for _, change in sorted(keyed, key=lambda pair: pair[0])]

    oracle = Oracle()
    device = await stock_client(hub, "device", "shelf-1", B)
    staff = await stock_client(hub, "staff", "clerk-1", B)
    wished = skus[:20]
    thresholds = {sku: (3, 6) for sku in skus[:200]}
    for sku, (low, clear) in thresholds.items():
        await staff.ok("stock.threshold", {"boutique_id": B, "sku": sku, "low": low, "clear": clear})
    oracle.thresholds = thresholds
    wisher = StreamClient(hub.url, hub.token("shopper", "wisher"))
    await wisher.connect()
    for sku in wished:
        await wisher.ok("wishlist.add", {"boutique_id": B, "sku": sku})
    inbox_reader = StreamClient(hub.url, hub.token("staff", "clerk-2", boutique=B))
    await inbox_reader.connect()

    online = await stock_client(hub, "shopper", "always-on")
    await online.watch(B)
    rewatcher = await stock_client(hub, "staff", "clerk-3", B)
    await rewatcher.watch(B)
    product_skus = skus[100:150]
    catcher = await stock_client(hub, "shopper", "catch-upper")
    await catcher.watch(B, product_skus)

    clients = {"device": device, "staff": staff}
    verdicts: list[str] = []
    position = 0
    phase = "all online"
    while position < len(sent):
        source = sent[position][0]
        batch: list[dict[str, Any]] = []
        while position < len(sent) and sent[position][0] == source and len(batch) < 100:
            batch.append(sent[position][1])
            position += 1
        reply = await clients[source].ok("stock.update", {"updates": batch})
        for event, result in zip(batch, reply["results"], strict=True):
            expected = oracle.apply(event, f"{source}:shelf-1" if source == "device" else f"staff:{B}")
            assert verdict(result) == expected, (event, result)
            assert (result["level"], result["version"]) == (
                oracle.level[event["sku"]],
                oracle.version[event["sku"]],
            )
            verdicts.append(expected)
        progress = position / len(sent)
        if phase == "all online" and progress > 0.3:
            await rewatcher.disconnect()
            phase = "rewatcher away"
        if phase == "rewatcher away" and progress > 0.4:
            await catcher.disconnect()
            phase = "both away"
        if phase == "both away" and progress > 0.7:
            await rewatcher.connect()
            await rewatcher.watch(B)
            phase = "catcher away"
        if phase == "catcher away" and progress > 0.8:
            await catcher.connect()
            assert await catcher.catch_up() > 0
            await catcher.watch(B, product_skus)
            phase = "all back"

    # The injected faults really happened.
    assert phase == "all back"
    assert verdicts.count("duplicate") > 500
    assert verdicts.count("stale") > 300
    expected = {sku: (oracle.level[sku], oracle.version[sku]) for sku in oracle.version}
    assert await server_state(online) == expected
    await online.wait_for(lambda: online.view == expected)
    await rewatcher.wait_for(lambda: rewatcher.view == expected)
    await catcher.wait_for(lambda: catcher.view == {s: v for s, v in expected.items() if s in product_skus})

    # The log: per SKU, versions rise by exactly one per entry, and replaying it gives the state.
    replayed: dict[str, tuple[int, int]] = {}
    log = StockClient(hub.url, hub.token("dispatcher", "auditor"))
    await log.connect()
    await log.watch(B, ["none"])  # only to learn the stream and epoch
    log.cursor, log.only = 0, None
    entries: list[dict[str, Any]] = []
    while True:
        page = await log.ok(
            "catchup", {"stream": log.stream, "epoch": log.epoch, "after": log.cursor, "limit": 500}
        )
        entries += page["entries"]
        log.cursor = page["next_after"]
        if not page["has_more"]:
            break
    assert [e["seq"] for e in entries] == list(range(1, verdicts.count("applied") + 1))
    for entry in entries:
        previous = replayed.get(entry["sku"], (0, 0))[1]
        assert entry["version"] == previous + 1, entry
        replayed[entry["sku"]] = (entry["level"], entry["version"])
    assert replayed == expected

    # Alerts: exactly the oracle's low-stock alerts and back-in-stock notices, no more.
    await inbox_reader.sync()
    assert len(titles(inbox_reader, f"inbox:b:{B}", "Low stock")) == oracle.low_alerts > 0
    await wisher.sync()
    expected_back = [s for s in oracle.back_in_stock if s in wished]
    assert len(titles(wisher, "inbox:u:wisher", "Back in stock")) == len(expected_back) > 0

    for client in (device, staff, online, rewatcher, catcher, log):
        await client.disconnect()
    await wisher.disconnect()
    await inbox_reader.disconnect()


@pytest.mark.asyncio
async def test_stale_source_versions_are_ignored_and_reported(hub: RunningHub) -> None:
    device = await stock_client(hub, "device", "shelf-9", B)
    watcher = await stock_client(hub, "shopper", "s1")
    await watcher.watch(B, ["mug"])
    first = (await device.ok("stock.update", {"updates": [set_("r2", "mug", 7, version=2)]}))["results"][0]
    late = (await device.ok("stock.update", {"updates": [set_("r1", "mug", 3, version=1)]}))["results"][0]
    again = (await device.ok("stock.update", {"updates": [set_("r2", "mug", 7, version=2)]}))["results"][0]
    assert (first["applied"], first["level"], first["version"]) == (True, 7, 1)
    assert (late["applied"], late["stale"], late["level"], late["version"]) == (False, True, 7, 1)
    assert (again["applied"], again["duplicate"], again["stale"]) == (False, True, False)
    # Another source keeps its own counter: its version 1 is not stale.
    other = await stock_client(hub, "device", "shelf-10", B)
    own = (await other.ok("stock.update", {"updates": [set_("x1", "mug", 5, version=1)]}))["results"][0]
    assert (own["applied"], own["level"], own["version"]) == (True, 5, 2)
    await watcher.wait_for(lambda: watcher.view.get("mug") == (5, 2))
    # The stale event never reached watchers and never entered the log.
    assert watcher.ignored == 0
    status, metrics = await hub_metrics(hub)
    assert status == 200
    assert 'soko_stock_updates_total{outcome="stale",path="socket"} 1.0' in metrics
    for client in (device, watcher, other):
        await client.disconnect()


async def hub_metrics(hub: RunningHub) -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(hub.url + "/metrics") as resp:
        return resp.status, await resp.text()


@pytest.mark.asyncio
async def test_who_may_change_and_watch_stock(hub: RunningHub) -> None:
    shopper = await stock_client(hub, "shopper", "s1")
    staff_a = await stock_client(hub, "staff", "clerk-a", B)
    staff_b = await stock_client(hub, "staff", "clerk-b", OTHER)
    device_b = await stock_client(hub, "device", "shelf-b", OTHER)
    driver = await stock_client(hub, "driver", "d1")
    update = {"updates": [set_("e1", "mug", 4)]}
    for client in (shopper, staff_b, device_b, driver):
        assert await error_code(client, "stock.update", update) == 2003
    # One foreign item refuses the whole batch, before anything is applied.
    mixed = {"updates": [set_("e2", "mug", 9), set_("e3", "mug", 1, boutique=OTHER)]}
    assert await error_code(staff_a, "stock.update", mixed) == 2003
    assert (await staff_a.ok("stock.update", update))["results"][0]["level"] == 4
    # Staff and devices see only their own boutique's stock; shoppers and drivers see any.
    assert await error_code(staff_b, "stock.watch", {"boutique_id": B}) == 2003
    assert await error_code(device_b, "stock.levels", {"boutique_id": B}) == 2003
    assert await error_code(staff_b, "catchup", {"stream": f"inv:{B}"}) == 2003
    for client in (shopper, driver, staff_a):
        snapshot = await client.watch(B)
        assert [(i["sku"], i["level"]) for i in snapshot["items"]] == [("mug", 4)]
    # Nobody writes the inventory stream directly, marks it read or types in it; only staff set thresholds.
    reply = await shopper.sio.call("chat.send", {"stream": f"inv:{B}", "client_id": "c1", "text": "x"})
    assert reply["error"]["code"] == 2003
    assert await error_code(shopper, "chat.read", {"stream": f"inv:{B}", "seq": 1}) == 2003
    assert await error_code(shopper, "chat.typing", {"stream": f"inv:{B}"}) == 2003
    assert await error_code(shopper, "stock.threshold", {"boutique_id": B, "sku": "mug", "low": 2}) == 2003
    assert await error_code(staff_b, "stock.threshold", {"boutique_id": B, "sku": "mug", "low": 2}) == 2003
    assert await error_code(staff_a, "wishlist.add", {"boutique_id": B, "sku": "mug"}) == 2003
    for client in (shopper, staff_a, staff_b, device_b, driver):
        await client.disconnect()


@pytest.mark.asyncio
async def test_bad_stock_input_gets_stable_codes(hub: RunningHub) -> None:
    staff = await stock_client(hub, "staff", "clerk", B)
    cases = [
        ({"updates": []}, 1000),
        ({"updates": [set_("e1", "mug", -1)]}, 1000),
        ({"updates": [set_("e1", "mug", 1, version=0)]}, 1000),
        ({"updates": [set_("e1", "m/ug", 1)]}, 1003),
        ({"updates": [{**set_("e1", "mug", 1), "type": "stock.delete"}]}, 1000),
        ({"updates": [set_("e1", "mug", 1)] * 101}, 1000),
    ]
    for body, code in cases:
        assert await error_code(staff, "stock.update", body) == code, body
    assert (
        await error_code(staff, "stock.threshold", {"boutique_id": B, "sku": "mug", "low": 5, "clear": 5})
        == 1000
    )
    too_many = {"boutique_id": B, "skus": [f"s{i}" for i in range(101)]}
    assert await error_code(staff, "stock.watch", too_many) == 1000
    # The service API takes the same changes, with HTTP statuses.
    status, payload = await hub.post(
        "/api/v1/stock", set_("h1", "mug", -3), token=hub.token("service", "svc")
    )
    assert (status, payload["error"]["code"]) == (400, 1000)
    status, payload = await hub.post("/api/v1/stock", set_("h1", "mug", 3), token=hub.token("staff", "x", B))
    assert (status, payload["error"]["code"]) == (403, 2003)
    outcome = await hub.service("/api/v1/stock", set_("h1", "mug", 3, version=5))
    assert (outcome["applied"], outcome["level"], outcome["version"]) == (True, 3, 1)
    stale = await hub.service("/api/v1/stock", set_("h2", "mug", 9, version=4))
    assert (stale["stale"], stale["level"]) == (True, 3)
    await staff.disconnect()


@pytest.mark.asyncio
async def test_low_stock_alerts_once_per_dip_with_hysteresis(hub: RunningHub) -> None:
    staff = await stock_client(hub, "staff", "clerk", B)
    inbox = StreamClient(hub.url, hub.token("staff", "reader", boutique=B))
    await inbox.connect()
    item = await staff.ok("stock.threshold", {"boutique_id": B, "sku": "mug", "low": 5, "clear": 8})
    assert (item["threshold"], item["version"], item["low"]) == (5, 0, False)
    flicker = [10, 5, 4, 6, 5, 7, 3, 8, 9, 4, 5]
    lows = []
    for i, level in enumerate(flicker):
        result = (await staff.ok("stock.update", {"updates": [set_(f"f{i}", "mug", level)]}))["results"][0]
        lows.append(result["level"])
    page = await staff.ok("stock.levels", {"boutique_id": B, "skus": ["mug"]})
    assert page["items"][0]["low"] is True
    # 10 -> 5 alerts; 4,6,5,7,3 stay under "clear" (8): no new alert; 8 re-arms; 4 alerts again.
    await inbox.wait_for(lambda: len(titles(inbox, f"inbox:b:{B}", "Low stock")) == 2, timeout=20)
    await inbox.sync()
    notes = [e for e in inbox.entries[f"inbox:b:{B}"] if e["title"].startswith("Low stock")]
    assert [n["data"]["level"] for n in notes] == [5, 4]
    assert all(n["category"] == "stock" for n in notes)
    await staff.disconnect()
    await inbox.disconnect()


@pytest.mark.asyncio
async def test_back_in_stock_reaches_only_those_who_wished(hub: RunningHub) -> None:
    staff = await stock_client(hub, "staff", "clerk", B)
    wisher = StreamClient(hub.url, hub.token("shopper", "wisher"))
    bystander = StreamClient(hub.url, hub.token("shopper", "bystander"))
    for client in (wisher, bystander):
        await client.connect()
    await staff.ok("stock.update", {"updates": [set_("e0", "mug", 0), set_("e0b", "cup", 0)]})
    listed = await wisher.ok("wishlist.add", {"boutique_id": B, "sku": "mug"})
    again = await wisher.ok("wishlist.add", {"boutique_id": B, "sku": "mug"})
    assert listed == again and [(i["sku"], i["level"]) for i in listed["items"]] == [("mug", 0)]
    await wisher.ok("wishlist.add", {"boutique_id": B, "sku": "cup"})
    await wisher.ok("wishlist.remove", {"boutique_id": B, "sku": "cup"})
    await staff.ok("stock.update", {"updates": [set_("e1", "mug", 3), set_("e2", "cup", 3)]})
    await staff.ok("stock.update", {"updates": [set_("e3", "mug", 5)]})  # not a return from 0
    await wisher.wait_for(lambda: any(d.get("title", "").startswith("Back in stock") for _, d in wisher.live))
    await wisher.sync()
    back = [e for e in wisher.entries["inbox:u:wisher"] if e["title"].startswith("Back in stock")]
    assert [(e["data"]["sku"], e["data"]["level"]) for e in back] == [("mug", 3)]
    await bystander.sync()
    assert bystander.entries["inbox:u:bystander"] == []
    listing = await wisher.ok("wishlist.list", {})
    assert [(i["sku"], i["level"]) for i in listing["items"]] == [("mug", 5)]
    for client in (wisher, bystander):
        await client.disconnect()
    await staff.disconnect()


@pytest.mark.asyncio
async def test_two_nodes_adjusting_one_sku_at_once_lose_no_change(
    redis_server: RedisServer, hub_factory: Any, mongo_url: str
) -> None:
    a, b = [await hub_factory(broker=redis_server.url, store=mongo_url) for _ in range(2)]
    watchers = [await stock_client(hub, "shopper", f"w{i}") for i, hub in enumerate((a, b))]
    for watcher in watchers:
        await watcher.watch(B, ["mug"])
    writers = [await stock_client(hub, "staff", f"clerk{i}", B) for i, hub in enumerate((a, b))]

    async def add_units(writer: StockClient, name: str) -> None:
        for i in range(15):
            batch = [adjust(f"{name}-{i}-{j}", "mug", 1) for j in range(2)]
            results = (await writer.ok("stock.update", {"updates": batch}))["results"]
            assert all(r["applied"] for r in results), results

    await asyncio.gather(add_units(writers[0], "a"), add_units(writers[1], "b"))
    for watcher in watchers:
        await watcher.wait_for(lambda w=watcher: w.view.get("mug") == (60, 60))
    page = await watchers[1].ok("stock.levels", {"boutique_id": B, "skus": ["mug"]})
    assert [(i["level"], i["version"]) for i in page["items"]] == [(60, 60)]
    for client in (*watchers, *writers):
        await client.disconnect()


@pytest.mark.asyncio
async def test_a_socket_watches_at_most_a_thousand_stock_rooms(hub_factory: Any) -> None:
    hub = await hub_factory(rate_per_second=1000.0, rate_burst=1000)
    shopper = await stock_client(hub, "shopper", "s1")
    for batch in range(10):
        skus = [f"sku-{batch}-{i}" for i in range(100)]
        await shopper.ok("stock.watch", {"boutique_id": B, "skus": skus})
    again = await shopper.ok("stock.watch", {"boutique_id": B, "skus": ["sku-0-0"]})  # already held
    assert again["boutique_id"] == B
    assert await error_code(shopper, "stock.watch", {"boutique_id": B}) == 3004
    await shopper.ok("stock.unwatch", {"boutique_id": B, "skus": ["sku-0-0", "sku-0-1"]})
    await shopper.ok("stock.watch", {"boutique_id": OTHER})
    assert await error_code(shopper, "stock.watch", {"boutique_id": B, "skus": ["x", "y"]}) == 3004
    await shopper.disconnect()
