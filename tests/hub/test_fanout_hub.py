"""One chat message to a room of 2,000 connections on a real hub (DESIGN.md principle 6).

2,000 raw websocket clients connect as staff of one boutique (so all are in room
``staff:<boutique>``); a shopper sends one message to ``chat:b:<boutique>:<shopper>``.
Every staff socket receives it exactly once. Because the hub runs in this process,
``asyncio.all_tasks()`` counts the hub's tasks too: right after the send is acked
(the hub acks after the fan-out has queued every frame) the count must not have
grown with the number of recipients. A count taken only after the send cannot see
tasks that start and finish within it (python-socketio's stock manager creates one
per recipient and awaits them all before returning), so the count is also sampled
on every event-loop iteration between the send and its ack, and its peak bounded.
RSS growth across the send is printed and bounded.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import pytest

from tests.support.rawclient import RawClient

RECIPIENTS = 2000
BOUTIQUE = "b-fan"
SHOPPER = "sh-fan"
STREAM = f"chat:b:{BOUTIQUE}:{SHOPPER}"
CONNECT_CONCURRENCY = 50
MAX_TASK_GROWTH = 20
"""Tasks the send may add in total; a task per recipient would add about 2,000."""
MAX_RSS_GROWTH_KB = 16 * 1024
"""8 KiB per recipient; the test process holds the hub and the clients, which parse and keep the frame."""


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def sample_task_count(stop: asyncio.Event, samples: list[int]) -> None:
    """Record ``len(asyncio.all_tasks())`` on every event-loop iteration until ``stop`` is set."""
    while not stop.is_set():
        samples.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0)


@contextmanager
def enough_file_descriptors(needed: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed}; raise it (ulimit -Hn) to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def settled_task_count(timeout: float = 30.0) -> int:
    """``len(asyncio.all_tasks())`` once it has stopped changing (connect-time work finished)."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        await asyncio.sleep(0.25)
        now = len(asyncio.all_tasks())
        if now == last or time.monotonic() > deadline:
            return now
        last = now


@pytest.mark.asyncio
async def test_one_message_to_2000_connections_on_the_hub(hub_factory) -> None:  # type: ignore[no-untyped-def]
    with enough_file_descriptors(2 * RECIPIENTS + 512):
        hub = await hub_factory(ping_interval=120.0, ping_timeout=120.0, send_queue_max=1000)
        staff: list[RawClient] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            try:
                gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

                async def join(i: int) -> RawClient:
                    token = hub.token("staff", f"st-{i}", boutique=BOUTIQUE)
                    async with gate:
                        client = await RawClient.connect(http, hub.url, auth={"token": token}, timeout=60)
                    staff.append(client)
                    return client

                started = time.monotonic()
                await asyncio.gather(*(join(i) for i in range(RECIPIENTS)))
                async with asyncio.timeout(120):
                    for client in staff:
                        event, args = await client.next_event(timeout=60)
                        assert event == "welcome" and args[0]["boutique"] == BOUTIQUE, (event, args)
                print(f"\n{RECIPIENTS} staff sockets connected in {time.monotonic() - started:.1f}s")

                shopper = await RawClient.connect(
                    http, hub.url, auth={"token": hub.token("shopper", SHOPPER)}
                )
                assert (await shopper.next_event(timeout=30))[0] == "welcome"

                tasks_before = await settled_task_count()
                rss_before = rss_kb()
                samples: list[int] = []
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_task_count(stop, samples))
                await asyncio.sleep(0)
                reply = await shopper.emit(
                    "chat.send",
                    {"stream": STREAM, "client_id": "fan-1", "text": "hello all"},
                    ack=True,
                    timeout=60,
                )
                tasks_after = len(asyncio.all_tasks()) - 1  # the sampler itself
                stop.set()
                await sampler
                tasks_peak = max(samples) - 1  # the sampler itself
                assert reply is not None and reply[0]["ok"] is True, reply
                assert reply[0]["data"]["seq"] == 1

                async with asyncio.timeout(120):
                    for client in staff:
                        event, args = await client.next_event(timeout=60)
                        assert event == "chat.message", (event, args)
                        assert (
                            args[0]["stream"] == STREAM
                            and args[0]["seq"] == 1
                            and args[0]["text"] == "hello all"
                        )
                rss_after = rss_kb()

                # exactly once: a second message is the next (and only other) frame on every socket
                reply = await shopper.emit(
                    "chat.send",
                    {"stream": STREAM, "client_id": "fan-2", "text": "again"},
                    ack=True,
                    timeout=60,
                )
                assert reply is not None and reply[0]["ok"] is True, reply
                async with asyncio.timeout(120):
                    for client in staff:
                        event, args = await client.next_event(timeout=60)
                        assert (event, args[0]["seq"]) == ("chat.message", 2), (event, args)
                        assert client.events.empty() and not client.closed.is_set()

                growth_kb = rss_after - rss_before
                print(
                    f"asyncio tasks: {tasks_before} before the send, {tasks_after} right after its ack "
                    f"(+{tasks_after - tasks_before}); peak {tasks_peak} over {len(samples)} loop iterations "
                    f"during the send (+{tasks_peak - tasks_before})"
                )
                print(
                    f"VmRSS: {rss_before} kB before, {rss_after} kB after all {RECIPIENTS} deliveries "
                    f"(+{growth_kb} kB, {growth_kb * 1024 / RECIPIENTS:.0f} B per recipient)"
                )
                assert tasks_after - tasks_before <= MAX_TASK_GROWTH, (tasks_before, tasks_after)
                assert tasks_peak - tasks_before <= MAX_TASK_GROWTH, (tasks_before, tasks_peak)
                assert growth_kb <= MAX_RSS_GROWTH_KB, (rss_before, rss_after)
                await shopper.close()
            finally:
                await asyncio.gather(*(c.close() for c in staff), return_exceptions=True)
