"""SendQueue: asyncio.Queue's semantics for what engineio uses, without its memory while idle."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from hub.transport.send_queue import SendQueue


@pytest.mark.asyncio
async def test_packets_come_out_in_the_order_they_went_in() -> None:
    queue = SendQueue()
    assert queue.empty() and queue.qsize() == 0
    for packet in ("a", "b", None):
        queue.put_nowait(packet)
    queue.put_nowait("c")
    assert not queue.empty() and queue.qsize() == 4
    taken = [queue.get_nowait(), await queue.get(), queue.get_nowait(), await queue.get()]
    assert taken == ["a", "b", None, "c"]
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


@pytest.mark.asyncio
async def test_waiting_gets_are_served_in_the_order_they_started_waiting() -> None:
    queue = SendQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert list(await asyncio.wait_for(asyncio.gather(first, second), 5)) == [1, 2]


@pytest.mark.asyncio
async def test_a_get_that_times_out_takes_nothing() -> None:
    """engineio's long-poll waits with ``wait_for(queue.get(), ...)``; a timed-out poll loses nothing."""
    queue = SendQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    assert queue._getters is None, "the timed-out get is no longer waiting"
    queue.put_nowait("kept")
    assert queue.qsize() == 1
    assert await asyncio.wait_for(queue.get(), 5) == "kept"


@pytest.mark.asyncio
async def test_a_get_cancelled_after_being_woken_passes_the_packet_on() -> None:
    queue = SendQueue()
    woken = asyncio.create_task(queue.get())
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")  # wakes `woken`, which is cancelled before it can run
    woken.cancel()
    assert await asyncio.wait_for(waiting, 5) == "only"
    assert woken.cancelled()
    assert queue.empty()


@pytest.mark.asyncio
async def test_join_waits_until_every_packet_is_marked_done() -> None:
    queue = SendQueue()
    await asyncio.wait_for(queue.join(), 5)  # nothing put: returns at once
    queue.put_nowait("a")
    queue.put_nowait("b")
    joined = asyncio.create_task(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0.01)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 5)
    with pytest.raises(ValueError, match="too many times"):
        queue.task_done()


@pytest.mark.asyncio
async def test_a_cancelled_join_stops_waiting() -> None:
    queue = SendQueue()
    queue.put_nowait("a")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.join(), 0.01)
    assert queue._joiners is None
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(queue.join(), 5)


@pytest.mark.asyncio
async def test_an_idle_queue_costs_a_small_fraction_of_an_asyncio_queue_also_after_use() -> None:
    """The point of the class: what a connection carries while it has nothing to send."""
    n = 1000

    async def idle_after_use(make: type[SendQueue] | type[asyncio.Queue[object]]) -> int:
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            queues = [make() for _ in range(n)]
            for queue in queues:
                for packet in range(3):
                    queue.put_nowait(packet)
                getter = asyncio.ensure_future(queue.get())
                await getter
                while not queue.empty():
                    queue.get_nowait()
                for _ in range(3):
                    queue.task_done()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            if not tracing:
                tracemalloc.stop()
        assert len(queues) == n
        return held // n

    ours = await idle_after_use(SendQueue)
    theirs = await idle_after_use(asyncio.Queue)
    assert ours <= 128, ours
    assert theirs >= 2000, theirs
