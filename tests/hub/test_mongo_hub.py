"""Hubs on MongoDB (a SecantusDB server): chat survives a hub restart, two nodes share the
durable streams, and ``soko hub`` picks the store up from ``SOKO_STORE``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from ulid import ULID

from tests.support.hub import HubProcess, RunningHub, mint
from tests.support.streamclient import StreamClient

HubFactory = Callable[..., Awaitable[RunningHub]]

STREAM = "chat:b:b1:alice"


def seqs(client: StreamClient) -> list[int]:
    return [e["seq"] for e in client.entries[STREAM]]


@pytest.mark.asyncio
async def test_chat_round_trip_survives_a_hub_restart(hub_factory: HubFactory, mongo_url: str) -> None:
    hub1 = await hub_factory(store=mongo_url)
    shopper = StreamClient(hub1.url, hub1.token("shopper", "alice"))
    staff = StreamClient(hub1.url, hub1.token("staff", "bob", boutique="b1"))
    await shopper.connect()
    await staff.connect()
    outbox = [(str(ULID()), f"message {i}") for i in range(10)]
    acks = [await shopper.send(STREAM, text, client_id=cid) for cid, text in outbox[:5]]
    assert [(a["seq"], a["duplicate"]) for a in acks] == [(s, False) for s in range(1, 6)]
    await staff.wait_for(lambda: len(staff.entries[STREAM]) == 5, timeout=20)
    await staff.disconnect()
    acks += [await shopper.send(STREAM, text, client_id=cid) for cid, text in outbox[5:]]
    await shopper.disconnect()
    await hub1.stop()

    hub2 = await hub_factory(store=mongo_url)  # a new process would see the same: the state is in MongoDB
    staff.url = shopper.url = hub2.url
    await staff.connect()  # with its old cursors: recovered in the same epoch, 6..10 caught up
    assert staff.resets == []
    assert staff.texts(STREAM) == [text for _, text in outbox]
    assert seqs(staff) == list(range(1, 11))

    await shopper.connect()
    retry = await shopper.send(STREAM, "edited", client_id=outbox[2][0])  # an outbox retry after the restart
    assert retry == {**acks[2], "duplicate": True}
    after = await shopper.send(STREAM, "after the restart")
    assert (after["seq"], after["epoch"], after["duplicate"]) == (11, acks[0]["epoch"], False)
    await staff.wait_for(lambda: seqs(staff) == list(range(1, 12)), timeout=20)
    history = await staff.ok("chat.history", {"stream": STREAM})
    assert [e["text"] for e in history["entries"]] == [text for _, text in outbox] + ["after the restart"]
    await shopper.disconnect()
    await staff.disconnect()


@pytest.mark.asyncio
async def test_two_hub_nodes_append_to_one_conversation_without_gaps(
    hub_factory: HubFactory, mongo_url: str
) -> None:
    """No broker between the nodes here: the shared store alone keeps seqs gap-free, and a
    client of either node catches up on what the other stored."""
    nodes = [await hub_factory(store=mongo_url) for _ in range(2)]
    shopper = StreamClient(nodes[0].url, nodes[0].token("shopper", "alice"))
    staff = StreamClient(nodes[1].url, nodes[1].token("staff", "bob", boutique="b1"))
    await shopper.connect()
    await staff.connect()

    async def burst(client: StreamClient, who: str) -> list[int]:
        acks = await asyncio.gather(*(client.send(STREAM, f"{who} {i}") for i in range(15)))
        return [a["seq"] for a in acks]

    from_shopper, from_staff = await asyncio.gather(burst(shopper, "alice"), burst(staff, "bob"))
    assert sorted(from_shopper + from_staff) == list(range(1, 31))
    for client in (shopper, staff):
        await client.sync()
        assert seqs(client) == list(range(1, 31))
    assert shopper.entries[STREAM] == staff.entries[STREAM]
    await shopper.disconnect()
    await staff.disconnect()


@pytest.mark.asyncio
async def test_soko_hub_takes_the_store_url_from_soko_store(
    tmp_path: Path, hub_factory: HubFactory, mongo_url: str
) -> None:
    proc = HubProcess(tmp_path / "procdata", extra_env={"SOKO_STORE": mongo_url})
    await proc.start()  # ready only once /readyz has pinged the store
    try:
        shopper = StreamClient(proc.url, mint("shopper", "alice"))
        await shopper.connect()
        sent = await shopper.send(STREAM, "through soko hub")
        await shopper.disconnect()
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.stop()
    assert not (tmp_path / "procdata" / "soko.db").exists()  # nothing went to the default SQLite file

    hub = await hub_factory(store=mongo_url)
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect()
    [entry] = staff.entries[STREAM]
    assert (entry["seq"], entry["epoch"], entry["text"]) == (sent["seq"], sent["epoch"], "through soko hub")
    await staff.disconnect()
