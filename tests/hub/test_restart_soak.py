"""Zero loss across repeated hub restarts under a running chat load.

The default run uses a CI-sized version; the heavy one is marked ``soak``
(``python3 -m pytest -m soak``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from ulid import ULID

from tests.hub.test_durability import UNLIMITED, try_send
from tests.support.hub import RunningHub
from tests.support.streamclient import StreamClient

HubFactory = Callable[..., Awaitable[RunningHub]]
STREAM = "chat:b:b1:alice"


@pytest.mark.parametrize(
    ("messages", "restarts"),
    [(300, 2), pytest.param(3000, 8, marks=[pytest.mark.soak, pytest.mark.timeout(900)])],
)
@pytest.mark.asyncio
async def test_zero_loss_across_repeated_restarts(
    hub_factory: HubFactory, messages: int, restarts: int
) -> None:
    rng = random.Random(messages * 31 + restarts)
    outbox = [(str(ULID()), f"m{i:05d}") for i in range(messages)]
    acks: dict[str, dict[str, Any]] = {}
    hub = await hub_factory(**UNLIMITED)
    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await shopper.connect()
    await staff.connect()
    stop_points = sorted(rng.sample(range(messages // 10, messages), restarts))

    async def drain(limit: int) -> None:
        """Send unacked messages in order, 10 in flight, until ``limit`` are acked or a send fails."""
        pending = [(cid, text) for cid, text in outbox if cid not in acks]
        for start in range(0, len(pending), 10):
            if len(acks) >= limit:
                return
            batch = pending[start : start + 10]
            results = await asyncio.gather(*(try_send(shopper, cid, t, 5.0) for cid, t in batch))
            for (cid, _), result in zip(batch, results, strict=True):
                if result is not None:
                    acks[cid] = result
            if None in results:
                return

    for point in stop_points:
        sender = asyncio.create_task(drain(messages))
        while len(acks) < point and not sender.done():
            await asyncio.sleep(0.005)
        await hub.stop()  # the hub goes away with sends in flight
        await sender
        hub = await hub_factory(**UNLIMITED)
        # A new python-socketio client, as the apps' Link does. python-engineio 4.15's client,
        # reconnected after the server closed its WebSocket, can keep its old write loop, and
        # two write loops on one queue reorder concurrent emits.
        await shopper.reconnect(hub.url)
    await drain(messages)
    assert len(acks) == messages

    assert [acks[cid]["seq"] for cid, _ in outbox] == list(range(1, messages + 1))
    if staff.sio.connected:
        await staff.disconnect()
    staff.url = hub.url
    await staff.connect()
    assert staff.texts(STREAM) == [text for _, text in outbox]
    assert [e["seq"] for e in staff.entries[STREAM]] == list(range(1, messages + 1))
    await shopper.disconnect()
    await staff.disconnect()
