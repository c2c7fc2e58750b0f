"""The engine when things go wrong after the handshake: connections that fail every time,
expiring tokens, malformed local cursors, and delivery jobs taken away while offline.
"""

from __future__ import annotations

import asyncio

import pytest

from clients.common.store import LocalStore
from tests.clients.conftest import (
    BOUTIQUE,
    SHOPPER,
    STREAM,
    Engines,
    HubFactory,
    HubReader,
    Recorder,
    eventually,
)
from tests.support.hub import RunningHub

STORM_WINDOW_S = 4.0
MOST_ATTEMPTS = 9
"""Connection attempts allowed in ``STORM_WINDOW_S`` when every connection fails after
``welcome``. With growing full-jitter waits (ceilings 0.5, 1, 2, 4, 8... s) a simulation of
2 million runs saw 9 attempts in 4 s 3 times and 10 never; a backoff reset by every
``welcome`` (at most 0.5 s each time) makes 14-17 attempts in 4 s here."""


@pytest.mark.asyncio
async def test_a_connection_failing_after_welcome_every_time_backs_off(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    # Acks never come in time: every connection is welcomed, then lost on its first request.
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store, call_timeout=1e-6, backoff_cap=30.0)
    recorder = Recorder(engine)
    await asyncio.sleep(STORM_WINDOW_S)
    attempts = sum(1 for s in recorder.states if s.phase == "connecting")
    welcomed = sum(1 for s in recorder.states if s.phase == "syncing")
    assert welcomed >= 2, "the failure comes after welcome, more than once"
    assert "live" not in recorder.phases()
    assert engine.state.error is not None and "no ack" in engine.state.error
    assert attempts <= MOST_ATTEMPTS, f"{attempts} connection attempts in {STORM_WINDOW_S:g} s"


@pytest.mark.asyncio
async def test_a_token_expiring_mid_connection_stays_reported_as_a_token_error(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    store = await engines.store()
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER, ttl=3), store)
    recorder = Recorder(engine)
    await eventually(lambda: engine.state.phase == "live", "live")
    await eventually(lambda: engine.state.phase != "live", "the hub closing the expired session", timeout=10)
    await eventually(lambda: engine.state.phase == "offline", "offline")
    live = next(i for i, s in enumerate(recorder.states) if s.phase == "live")
    closed = next(i for i, s in enumerate(recorder.states) if i > live and s.phase == "offline")
    error = recorder.states[closed].error
    assert recorder.states[closed].token_error and error is not None and "token_expired" in error
    assert all(s.token_error for s in recorder.states[closed:] if s.error), "until a connection succeeds"

    engine.set_token(hub.token("shopper", SHOPPER))
    await eventually(lambda: engine.state.phase == "live", "live with a fresh token")
    assert engine.state.error is None and not engine.state.token_error


async def _cursors(store: LocalStore) -> list[str]:
    return [c.stream for c in await store.cursors()]


@pytest.mark.asyncio
async def test_malformed_local_cursors_are_dropped_and_the_rest_syncs(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    async with HubReader(hub) as staff:
        await staff.ok("chat.send", {"stream": STREAM, "client_id": "hello", "text": "hello"})
    store = await engines.store()
    await store.bind(SHOPPER, "shopper")
    await store.follow("bogus")  # not a stream id: the hub refuses a `sync` naming it
    await store.reset_stream(STREAM, "e" * 65)  # longer than any epoch: refused too
    engine = engines.start(hub.url, hub.token("shopper", SHOPPER), store)
    await eventually(lambda: engine.state.phase == "live" or engine.state.error is not None, "one sync")
    assert (engine.state.phase, engine.state.error) == ("live", None)
    assert [m.text for m in await store.messages(STREAM)] == ["hello"]
    assert "bogus" not in await _cursors(store)
    assert (await store.cursor(STREAM)).epoch != "e" * 65

    # A catch-up the hub refuses as invalid_id (a hub with stricter ids than this app) only
    # drops that stream: the connection and every other stream go on.
    await store.follow("bogus")
    link = engine._link
    assert link is not None
    await engine._catch_up(link, "bogus")
    assert "bogus" not in await _cursors(store)
    async with HubReader(hub) as staff:
        await staff.ok("chat.send", {"stream": STREAM, "client_id": "again", "text": "again"})
    await eventually(lambda: _texts_are(store, ["hello", "again"]), "the next message")
    assert engine._link is link, "same connection"


async def _texts_are(store: LocalStore, expected: list[str]) -> bool:
    return [m.text for m in await store.messages(STREAM)] == expected


async def _create(hub: RunningHub, order_id: str) -> None:
    await hub.service(
        "/api/v1/events",
        {
            "type": "order.created",
            "event_id": f"c-{order_id}",
            "order_id": order_id,
            "shopper_id": SHOPPER,
            "boutique_id": BOUTIQUE,
        },
    )


async def _assign(hub: RunningHub, event_id: str, order_id: str, driver: str) -> None:
    await hub.service(
        "/api/v1/events",
        {"type": "delivery.assigned", "event_id": event_id, "order_id": order_id, "driver_id": driver},
    )


async def _job_ids(store: LocalStore) -> list[str]:
    return sorted(j.order_id for j in await store.jobs())


@pytest.mark.asyncio
async def test_jobs_taken_away_while_the_driver_was_offline_leave_the_job_list(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    me, other = "driver-2", "driver-3"
    kept, known, missed = "order-kept", "order-known", "order-missed"
    for order_id in (kept, known, missed):
        await _create(hub, order_id)
    for order_id in (kept, known):
        await _assign(hub, f"a-{order_id}", order_id, me)
    store = await engines.store("driver")
    engine = engines.start(hub.url, hub.token("driver", me), store)
    recorder = Recorder(engine)
    await eventually(lambda: engine.state.phase == "live", "live")
    assert await _job_ids(store) == [kept, known]

    engine.set_online(False)
    await eventually(lambda: engine.state.phase == "offline", "offline")
    # Reassigned while offline; and one assigned and taken away before the driver saw it (its
    # "new delivery job" notification is still in the driver's inbox for the catch-up).
    for event_id, order_id, driver in (("r1", known, other), ("a2", missed, me), ("r2", missed, other)):
        await _assign(hub, event_id, order_id, driver)
    back = len(recorder.states)
    engine.set_online(True)
    await eventually(lambda: any(s.phase == "live" for s in recorder.states[back:]), "live again")
    assert await _job_ids(store) == [kept]
    assert [o.order_id for o in await store.orders()] == [kept]
    titles = [n.title for n in await store.notifications(f"inbox:u:{me}")]
    assert titles.count("New delivery job") == 3, "the missed job's notification was caught up"


@pytest.mark.asyncio
async def test_a_step_refused_after_a_reassignment_is_shown_failed_not_pending(
    hub_factory: HubFactory, engines: Engines
) -> None:
    hub = await hub_factory()
    me, order_id = "driver-2", "order-gone"
    await _create(hub, order_id)
    await _assign(hub, "a1", order_id, me)
    store = await engines.store("driver")
    engine = engines.start(hub.url, hub.token("driver", me), store, online=False)
    recorder = Recorder(engine)
    await _assign(hub, "r1", order_id, "driver-3")
    step = await engine.update_delivery(order_id, "picked_up")
    engine.set_online(True)
    await eventually(lambda: recorder.outbox(step) == ["pending", "failed"], "the refusal")
    failed = next(i for i, c in enumerate(recorder.changes) if c.kind == "outbox" and c.status == "failed")
    after = recorder.changes[failed + 1]
    assert (after.kind, after.order_id) == ("job", order_id), "the job is announced with the refusal"
    [item] = await store.outbox()
    assert item.status == "failed" and item.error is not None and "forbidden" in item.error
    for job in await store.jobs():  # already dropped if the order list came after the refusal
        assert (job.step, job.step_pending, job.failed_step) == (None, False, "picked_up")

    engine.set_online(False)
    await eventually(lambda: engine.state.phase == "offline", "offline")
    back = len(recorder.states)
    engine.set_online(True)
    await eventually(lambda: any(s.phase == "live" for s in recorder.states[back:]), "live again")
    assert await _job_ids(store) == [], "a refused step no longer keeps the job"
