"""The sync engine against a real hub: reported state, the outbox, gaps, resyncs and
latest-value locations.

The kill and hub-restart guarantees are in test_engine_durability.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clients.common.store import LocalStore
from protocol.messages import LocationUpdate
from tests.clients.conftest import (
    BOUTIQUE,
    SHOPPER,
    STREAM,
    Engines,
    HubFactory,
    HubReader,
    Recorder,
    append_silently,
    eventually,
)


async def texts(store: LocalStore, stream: str = STREAM) -> list[str]:
    return [m.text for m in await store.messages(stream)]


@pytest.mark.asyncio
async def test_state_goes_offline_connecting_syncing_live_and_a_message_goes_pending_then_acked(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store, online=False)
    recorder = Recorder(engine)
    await eventually(lambda: engine.state.phase == "offline", "offline")

    client_id = await engine.send_chat(STREAM, "hello")
    [pending] = await store.messages(STREAM)
    assert (pending.status, pending.seq, pending.mine, pending.text) == ("pending", None, True, "hello")
    assert await store.pending_count() == 1

    engine.set_online(True)
    await eventually(lambda: recorder.outbox(client_id) == ["pending", "acked"], "the ack")
    await eventually(lambda: engine.state.phase == "live", "live")
    [sent] = await store.messages(STREAM)
    assert (sent.status, sent.seq, sent.client_id) == ("sent", 1, client_id)
    assert await store.pending_count() == 0
    assert recorder.phases()[:4] == ["offline", "connecting", "syncing", "live"]
    assert engine.state.user == SHOPPER and engine.state.error is None

    async with HubReader(hub) as reader:
        [stored] = await reader.history()
    assert (stored["text"], stored["client_id"], stored["author"]) == ("hello", client_id, SHOPPER)


@pytest.mark.asyncio
async def test_a_refused_token_is_reported_and_a_new_one_connects(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, "not-a-token", store)
    await eventually(lambda: engine.state.token_error, "the token error")
    assert engine.state.phase in ("offline", "connecting")
    assert engine.state.error is not None and "unauthenticated" in engine.state.error

    engine.set_token(hub.token("shopper", SHOPPER))
    await eventually(lambda: engine.state.phase == "live", "live")
    assert engine.state.error is None and not engine.state.token_error


@pytest.mark.asyncio
async def test_a_live_gap_triggers_catch_up_without_reconnecting(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store)
    recorder = Recorder(engine)
    await engine.send_chat(STREAM, "first")
    await eventually(lambda: engine.state.phase == "live", "live")
    await eventually(lambda: _none_pending(store), "the ack")

    async with HubReader(hub) as staff:
        await append_silently(hub, ["dropped-1", "dropped-2", "dropped-3"])
        await staff.ok("chat.send", {"stream": STREAM, "client_id": "after-gap", "text": "after the gap"})
        await eventually(
            lambda: _texts_are(store, ["first", "dropped-1", "dropped-2", "dropped-3", "after the gap"])
        )
        hub_entries = await staff.history()
        await staff.ok("chat.typing", {"stream": STREAM})
        await staff.ok("chat.read", {"stream": STREAM, "seq": 1})
        await eventually(
            lambda: any(c.kind == "typing" and c.user == "staff-1" for c in recorder.changes), "typing"
        )
        await eventually(lambda: _peer_read_is(store, 1), "the read receipt")
    held = await store.messages(STREAM)
    assert [(m.seq, m.text, m.status) for m in held] == [(e["seq"], e["text"], "sent") for e in hub_entries]
    assert (await store.cursor(STREAM)).seq == 5
    [conversation] = await store.conversations()
    assert (conversation.stream, conversation.unread, conversation.last_text) == (STREAM, 4, "after the gap")
    await engine.mark_read(STREAM, 5)
    [conversation] = await store.conversations()
    assert (conversation.unread, conversation.read_seq) == (0, 5)
    first_live = recorder.phases().index("live")
    assert recorder.phases()[first_live:] == ["live", "syncing", "live"], "caught up on the same connection"


async def _peer_read_is(store: LocalStore, seq: int) -> bool:
    return [c.peer_read_seq for c in await store.conversations()] == [seq]


async def _none_pending(store: LocalStore) -> bool:
    return await store.pending_count() == 0


async def _texts_are(store: LocalStore, expected: list[str]) -> bool:
    return await texts(store) == expected


@pytest.mark.asyncio
async def test_recovered_false_drops_the_local_copy_and_its_read_marks_and_resyncs(
    hub_factory: HubFactory, engines: Engines, tmp_path: Path
) -> None:
    old = await hub_factory(data=tmp_path / "old-hub")
    store = await engines.store()
    engine = engines.start(old.url, old.token("shopper", SHOPPER), store)
    async with HubReader(old) as staff:
        for text in ("a", "b", "c"):
            await staff.ok("chat.send", {"stream": STREAM, "client_id": f"old-{text}", "text": text})
        await eventually(lambda: _texts_are(store, ["a", "b", "c"]), "the old history")
        await engine.mark_read(STREAM, 3)
        await staff.ok("chat.read", {"stream": STREAM, "seq": 3})
        await eventually(lambda: _peer_read_is(store, 3), "the old read receipt")
        await eventually(lambda: _none_pending(store), "the old read mark's ack")
    old_epoch = (await store.cursor(STREAM)).epoch
    await old.stop()

    # The log was rebuilt: same address, a new store, so a new epoch for the stream.
    new = await hub_factory(port=old.port, data=tmp_path / "new-hub")
    async with HubReader(new) as staff:
        for text in ("x", "y"):
            await staff.ok("chat.send", {"stream": STREAM, "client_id": f"new-{text}", "text": text})
        await eventually(lambda: _texts_are(store, ["x", "y"]), "the new history only")
        hub_entries = await staff.history()
    cursor = await store.cursor(STREAM)
    assert cursor.epoch == hub_entries[0]["epoch"] != old_epoch
    assert cursor.seq == 2
    assert [(m.seq, m.text) for m in await store.messages(STREAM)] == [(1, "x"), (2, "y")]

    # Read marks of the old epoch mean nothing in the new one: both entries are unread, and
    # reading the first of them is told to the hub.
    [conversation] = await store.conversations()
    assert (conversation.unread, conversation.read_seq, conversation.peer_read_seq) == (2, 0, 0)
    await engine.mark_read(STREAM, 1)
    await eventually(lambda: _none_pending(store), "the new read mark's ack")
    async with HubReader(new, "shopper", SHOPPER) as shopper:
        listed = await shopper.ok("chat.list", {"limit": 10})
    assert [(c["stream"], c["read_seq"]) for c in listed["conversations"]] == [(STREAM, 1)]


@pytest.mark.asyncio
async def test_offline_locations_send_only_the_newest_fix_on_reconnect(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory(gps_min_period_s=0.0)
    order_id, driver = "order-loc", "driver-1"
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.created",
            "event_id": "c1",
            "order_id": order_id,
            "shopper_id": SHOPPER,
            "boutique_id": BOUTIQUE,
        },
    )
    await hub.service(
        "/api/v1/events",
        {"type": "delivery.assigned", "event_id": "a1", "order_id": order_id, "driver_id": driver},
    )
    store = await engines.store("driver")
    engine = engines.start(hub.url, hub.token("driver", driver), store, online=False)
    shopper_store = await engines.store("shopper")
    shopper = engines.start(hub.url, hub.token("shopper", SHOPPER), shopper_store)
    shopper.watch_track(order_id)
    now = int(time.time() * 1000)
    fixes = [
        LocationUpdate(lat=-1.29 + i * 0.0002, lon=36.82, accuracy=5.0, ts=now - 60_000 + i * 2_000)
        for i in range(5)
    ]
    async with HubReader(hub, "shopper", SHOPPER) as watcher:
        snapshot = await watcher.ok("track.watch", {"order_id": order_id})
        assert snapshot["active"] and snapshot["position"] is None
        for fix in fixes:
            engine.send_location(fix)
        engine.set_online(True)
        await eventually(lambda: len(watcher.of("track.position")) >= 1, "the first position")
        newer = LocationUpdate(lat=-1.2880, lon=36.82, accuracy=5.0, ts=now)
        engine.send_location(newer)
        await eventually(lambda: len(watcher.of("track.position")) >= 2, "the second position")
        positions = [(p["ts"], p["lat"]) for p in watcher.of("track.position")]
    assert positions == [(fixes[-1].ts, fixes[-1].lat), (newer.ts, newer.lat)]
    assert engine.last_location is not None and engine.last_location.kept
    await eventually(
        lambda: _position_ts_is(shopper_store, order_id, newer.ts), "the tracking shopper's copy"
    )


@pytest.mark.asyncio
async def test_stock_notifications_badge_and_wishlist_follow_the_hub(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store, online=False)
    recorder = Recorder(engine)
    engine.watch_stock(BOUTIQUE)
    wish = await engine.wishlist_add(BOUTIQUE, "mug")
    assert [(w.sku, w.pending) for w in await store.wishlist()] == [("mug", True)]
    engine.set_online(True)
    await eventually(lambda: recorder.outbox(wish) == ["pending", "acked"], "the wishlist ack")
    assert [(w.sku, w.pending) for w in await store.wishlist()] == [("mug", False)]

    async with HubReader(hub) as staff:
        await staff.ok(
            "stock.update",
            {
                "updates": [
                    {"type": "stock.set", "event_id": "s1", "boutique_id": BOUTIQUE, "sku": "mug", "level": 7}
                ]
            },
        )
        await eventually(lambda: _level_is(store, "mug", 7), "the stock frame")
        await staff.ok(
            "stock.update",
            {
                "updates": [
                    {
                        "type": "stock.adjust",
                        "event_id": "s2",
                        "boutique_id": BOUTIQUE,
                        "sku": "mug",
                        "delta": -2,
                    }
                ]
            },
        )
        await eventually(lambda: _level_is(store, "mug", 5), "the second stock frame")
    assert any(c.kind == "stock" and c.sku == "mug" for c in recorder.changes)
    assert [(w.sku, w.level) for w in await store.wishlist()] == [("mug", 5)]

    inbox = f"inbox:u:{SHOPPER}"
    created = await hub.service(
        "/api/v1/notifications", {"user": SHOPPER, "category": "system", "title": "Hello", "id": "n1"}
    )
    await eventually(lambda: _badge_is(store, 2), "the badge")
    back, hello = sorted(await store.notifications(), key=lambda n: n.seq)
    assert (back.category, back.data, back.read) == (
        "stock",
        {"boutique_id": BOUTIQUE, "sku": "mug", "level": 7},
        False,
    )
    assert (hello.stream, hello.seq, hello.title, hello.read) == (inbox, created["seq"], "Hello", False)
    await engine.mark_read(inbox, hello.seq)
    assert await store.badge() == 0
    assert all(n.read for n in await store.notifications())
    await eventually(lambda: _none_pending(store), "the read mark's ack")
    async with HubReader(hub, "shopper", SHOPPER) as shopper:
        reply = await shopper.ok("sync", {"cursors": []})
    assert [s["unread"] for s in reply["streams"] if s["stream"] == inbox] == [0]


@pytest.mark.asyncio
async def test_driver_jobs_and_delivery_steps_go_through_the_outbox(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    order_id, driver = "order-job", "driver-2"
    shopper_store = await engines.store("shopper")
    shopper = engines.start(hub.url, hub.token("shopper", SHOPPER), shopper_store)
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.created",
            "event_id": "c2",
            "order_id": order_id,
            "shopper_id": SHOPPER,
            "boutique_id": BOUTIQUE,
        },
    )
    driver_store = await engines.store("driver")
    engine = engines.start(hub.url, hub.token("driver", driver), driver_store)
    await eventually(lambda: engine.state.phase == "live" and shopper.state.phase == "live", "both live")
    await hub.service(
        "/api/v1/events",
        {"type": "delivery.assigned", "event_id": "a2", "order_id": order_id, "driver_id": driver},
    )
    await eventually(lambda: _job_ids(driver_store, [order_id]), "the job")

    engine.set_online(False)
    step = await engine.update_delivery(order_id, "picked_up")
    [job] = await driver_store.jobs()
    assert (job.step, job.step_pending) == ("picked_up", True)
    engine.set_online(True)
    await eventually(lambda: _none_pending(driver_store), "the step's ack")
    [job] = await driver_store.jobs()
    assert (job.order_id, job.status, job.step, job.step_pending) == (
        order_id,
        "picked_up",
        "picked_up",
        False,
    )
    assert step
    await eventually(
        lambda: _order_status(shopper_store, order_id, "picked_up"), "the shopper's order update"
    )


async def _position_ts_is(store: LocalStore, order_id: str, ts: int) -> bool:
    position = await store.position(order_id)
    return position is not None and position.ts == ts


async def _level_is(store: LocalStore, sku: str, level: int) -> bool:
    row = await store.stock_item(BOUTIQUE, sku)
    return row is not None and row.level == level


async def _badge_is(store: LocalStore, badge: int) -> bool:
    return await store.badge() == badge


async def _job_ids(store: LocalStore, expected: list[str]) -> bool:
    return [j.order_id for j in await store.jobs()] == expected


async def _order_status(store: LocalStore, order_id: str, status: str) -> bool:
    order = await store.order(order_id)
    return order is not None and order.status == status


@pytest.mark.asyncio
async def test_a_write_the_hub_refuses_is_marked_failed_and_the_next_one_still_goes(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store, online=False)
    recorder = Recorder(engine)
    someone_elses = "chat:b:boutique-a:shopper-2"
    refused = await engine.send_chat(someone_elses, "not mine")
    accepted = await engine.send_chat(STREAM, "mine")
    engine.set_online(True)
    await eventually(lambda: recorder.outbox(accepted) == ["pending", "acked"], "the second item's ack")
    assert recorder.outbox(refused) == ["pending", "failed"]
    [failed] = await store.messages(someone_elses)
    assert failed.status == "failed" and failed.error is not None and "forbidden" in failed.error
    assert [(m.text, m.status) for m in await store.messages(STREAM)] == [("mine", "sent")]
