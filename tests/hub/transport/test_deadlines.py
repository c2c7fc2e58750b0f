"""Shared deadline structures: callbacks in deadline order, never early, one failing alone."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time

import pytest

from hub.transport.deadlines import ExpiryBuckets, FixedDelayQueue


@pytest.mark.asyncio
async def test_fixed_delay_callbacks_run_in_order_and_never_before_their_delay() -> None:
    loop = asyncio.get_running_loop()
    delay = 0.05
    queue = FixedDelayQueue(delay)
    ran: list[tuple[int, float, float]] = []
    done = asyncio.Event()

    def callback(index: int, added: float) -> None:
        ran.append((index, added, loop.time()))
        if len(ran) == 6:
            done.set()

    for index in range(6):
        queue.add(functools.partial(callback, index, loop.time()))
        if index == 2:
            await asyncio.sleep(0.02)  # a second wave, due after the first
    assert len(queue) == 6
    async with asyncio.timeout(5):
        await done.wait()
    assert [index for index, _, _ in ran] == list(range(6))
    assert all(at >= added + delay for _, added, at in ran), ran
    assert len(queue) == 0


@pytest.mark.asyncio
async def test_fixed_delay_keeps_going_after_a_callback_raises(caplog: pytest.LogCaptureFixture) -> None:
    queue = FixedDelayQueue(0.01)
    after = asyncio.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    queue.add(broken)
    queue.add(after.set)
    with caplog.at_level(logging.ERROR, logger="hub.transport.deadlines"):
        async with asyncio.timeout(5):
            await after.wait()
    assert "deadline callback failed" in caplog.text


@pytest.mark.asyncio
async def test_fixed_delay_rearms_after_running_dry() -> None:
    queue = FixedDelayQueue(0.01)
    first, second = asyncio.Event(), asyncio.Event()
    queue.add(first.set)
    async with asyncio.timeout(5):
        await first.wait()
    queue.add(second.set)
    async with asyncio.timeout(5):
        await second.wait()


class CountingQueue(FixedDelayQueue):
    fires = 0

    def _fire(self) -> None:
        self.fires += 1
        super()._fire()


@pytest.mark.asyncio
async def test_a_callback_that_adds_again_keeps_a_single_timer() -> None:
    """A session's PING leads to the next one; each run must not leave one more timer behind."""
    queue = CountingQueue(0.01)
    runs = 0
    finished = asyncio.Event()

    def again() -> None:
        nonlocal runs
        runs += 1
        if runs < 5:
            queue.add(again)
        else:
            finished.set()

    queue.add(again)
    async with asyncio.timeout(5):
        await finished.wait()
    await asyncio.sleep(0.05)
    assert runs == 5 and len(queue) == 0
    assert queue.fires <= runs + 1, queue.fires  # one per run, and perhaps one early wake-up


class Expired:
    """Records each expired key with the wall-clock time it expired."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, float]] = []
        self.changed = asyncio.Event()

    def __call__(self, key: str) -> None:
        self.keys.append((key, time.time()))
        self.changed.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.keys) < count:
                self.changed.clear()
                await self.changed.wait()
        return [key for key, _ in self.keys]


@pytest.mark.asyncio
async def test_keys_expire_in_deadline_order_and_never_before_their_deadline() -> None:
    expired = Expired()
    buckets = ExpiryBuckets(expired)
    now = time.time()
    # a second or more apart, so no two share a whole second (keys of one second come in any order)
    deadlines = {"late": now + 3.2, "early": now + 0.3, "middle": now + 1.4}
    for key, deadline in deadlines.items():  # the earliest is added after a later one was armed
        buckets.add(key, deadline)
    assert len(buckets) == 3
    assert await expired.until(3) == ["early", "middle", "late"]
    at = dict(expired.keys)
    for key, deadline in deadlines.items():
        assert at[key] >= deadline, (key, at[key], deadline)
    assert at["early"] < deadlines["late"], "the earlier deadline waited for the later one's timer"
    assert len(buckets) == 0


@pytest.mark.asyncio
async def test_a_discarded_key_never_expires_and_its_second_can_be_used_again() -> None:
    expired = Expired()
    buckets = ExpiryBuckets(expired)
    deadline = math.ceil(time.time()) + 1.0
    buckets.add("gone", deadline)
    buckets.discard("gone", deadline)
    buckets.discard("never-added", deadline)
    buckets.add("back", deadline - 0.5)  # same whole second, after its bucket was emptied
    buckets.add("later", deadline + 1)
    assert await expired.until(2) == ["back", "later"]
    await asyncio.sleep(0.1)
    assert [key for key, _ in expired.keys] == ["back", "later"]


@pytest.mark.asyncio
async def test_a_past_deadline_expires_at_once_and_close_stops_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expired = Expired()

    def expire(key: str) -> None:
        expired(key)
        if key == "broken":
            raise RuntimeError("boom")

    buckets = ExpiryBuckets(expire)
    buckets.add("broken", time.time() - 10)
    buckets.add("past", time.time() - 5)
    buckets.add("far", time.time() + 1)
    with caplog.at_level(logging.ERROR, logger="hub.transport.deadlines"):
        assert sorted(await expired.until(2)) == ["broken", "past"]
    assert "deadline callback failed" in caplog.text
    buckets.close()
    assert len(buckets) == 0
    buckets.add("after close", time.time() + 1.5)  # later than "far": it must arm a timer of its own
    assert await expired.until(3) == ["broken", "past", "after close"]
