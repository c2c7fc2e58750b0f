"""Graceful shutdown of a real ``soko hub`` process: SIGTERM tells clients to come back, and nothing is
lost."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.hub import HubProcess, mint
from tests.support.streamclient import StreamClient

STREAM = "chat:b:b1:alice"


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[Callable[[Path], HubProcess]]:
    """Make ``HubProcess`` objects; every one still running at teardown is stopped."""
    made: list[HubProcess] = []

    def make(data: Path) -> HubProcess:
        proc = HubProcess(data)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        await proc.stop()


@pytest.mark.asyncio
async def test_sigterm_closes_sessions_with_server_shutdown_and_keeps_the_data(
    processes: Callable[[Path], HubProcess], tmp_path: Path
) -> None:
    data = tmp_path / "hubdata"
    first = processes(data)
    await first.start()

    shopper = StreamClient(first.url, mint("shopper", "alice"))
    staff = StreamClient(first.url, mint("staff", "bob", "b1"))
    await shopper.connect()
    await staff.connect()
    texts = [f"before shutdown {i}" for i in range(20)]
    acks = [await shopper.send(STREAM, t) for t in texts]
    assert [a["seq"] for a in acks] == list(range(1, 21))
    await staff.wait_for(lambda: len(staff.entries[STREAM]) == 20, timeout=20)

    first.signal(signal.SIGTERM)
    for c in (shopper, staff):
        await c.wait_for(lambda c=c: len(c.closing) >= 1, timeout=20)
        [closing] = c.closing
        assert closing["reconnect"] is True
        assert (closing["error"]["code"], closing["error"]["name"], closing["error"]["temporary"]) == (
            3003,
            "server_shutdown",
            True,
        )
        assert isinstance(closing["error"]["message"], str) and closing["error"]["message"]
    assert await first.wait(timeout=30) == 0
    assert "Traceback" not in first.stderr()
    for c in (shopper, staff):
        await c.wait_for(lambda c=c: not c.sio.connected, timeout=20)

    second = processes(data)
    await second.start()
    # the staff member resumes from its cursors: nothing missing, nothing reset
    staff.url = second.url
    await staff.connect()
    assert staff.resets == []
    assert staff.texts(STREAM) == texts
    # a fresh device catches up on everything sent before the shutdown
    fresh = StreamClient(second.url, mint("staff", "carol", "b1"))
    await fresh.connect()
    assert fresh.texts(STREAM) == texts
    assert [e["seq"] for e in fresh.entries[STREAM]] == list(range(1, 21))
    assert [e["client_id"] for e in fresh.entries[STREAM]] == [a["client_id"] for a in acks]
    # and the stream continues in the same epoch
    shopper.url = second.url
    await shopper.connect()
    more = await shopper.send(STREAM, "after restart")
    assert (more["seq"], more["epoch"]) == (21, acks[0]["epoch"])
    await staff.wait_for(lambda: staff.texts(STREAM) == [*texts, "after restart"], timeout=20)
    for c in (shopper, staff, fresh):
        await c.disconnect()

    second.signal(signal.SIGTERM)
    assert await second.wait(timeout=30) == 0


@pytest.mark.asyncio
async def test_a_request_on_a_closing_connection_is_deferred_not_refused(hub) -> None:
    """Between session.closing and the socket's end, requests get a temporary error, so a
    client (the edge uplink, the console outbox) keeps them and resends after reconnecting."""
    import socketio

    from hub.app import GATEWAY

    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        hub.url, auth={"token": hub.token("device", "gw1", "b1")}, transports=["websocket"], wait_timeout=10
    )
    try:
        gateway = hub.app[GATEWAY]
        for conn in gateway._connections.values():  # the hub is closing this socket
            conn.closing = True
        update = {"type": "stock.set", "event_id": "e1", "boutique_id": "b1", "sku": "mug", "level": 3}
        reply = await sio.call("stock.update", {"updates": [update]}, timeout=10)
        assert reply["ok"] is False
        assert reply["error"]["name"] == "unavailable" and reply["error"]["temporary"] is True
    finally:
        await sio.disconnect()
