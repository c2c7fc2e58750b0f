"""IndexedRoomManager keeps python-socketio's room table and its own per-connection index in step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import socketio
from aiohttp import web

from hub.transport.rooms import IndexedRoomManager
from tests.support.rawclient import RawClient

NS = "/"
Served = tuple[socketio.AsyncServer, IndexedRoomManager, str, aiohttp.ClientSession]


def scanned_rooms(manager: IndexedRoomManager, sid: str) -> set[Any]:
    """The rooms of ``sid`` found the way python-socketio finds them: by scanning every room."""
    rooms = manager.rooms.get(NS, {})
    return {name for name, members in rooms.items() if name is not None and sid in members}


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    manager = IndexedRoomManager()
    sio = socketio.AsyncServer(client_manager=manager, async_mode="aiohttp")

    @sio.event
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.event
    async def leave(sid: str, room: str) -> bool:
        await sio.leave_room(sid, room)
        return True

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http = aiohttp.ClientSession()
    try:
        yield sio, manager, f"http://127.0.0.1:{runner.addresses[0][1]}", http
    finally:
        await http.close()
        await sio.shutdown()
        await runner.cleanup()


async def wait_until_gone(manager: IndexedRoomManager, sid: str) -> None:
    for _ in range(200):
        if not manager.is_connected(sid, NS) and not scanned_rooms(manager, sid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{sid} still has rooms {scanned_rooms(manager, sid)}")


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_rooms_follow_joins_leaves_closes_and_disconnects(
    served: Served,
) -> None:
    sio, manager, url, http = served
    clients = [await RawClient.connect(http, url) for _ in range(4)]
    sids = [client.sid for client in clients]
    for index, client in enumerate(clients):
        for room in ("all", f"pair-{index // 2}", f"solo-{index}"):
            await client.emit("join", room, ack=True)
    await clients[0].emit("leave", "all", ack=True)
    await sio.close_room("pair-1")

    assert set(sio.rooms(sids[0])) == {sids[0], "pair-0", "solo-0"}
    assert set(sio.rooms(sids[3])) == {sids[3], "all", "solo-3"}
    for sid in sids:
        assert set(sio.rooms(sid)) == scanned_rooms(manager, sid)

    await clients[1].close()
    await wait_until_gone(manager, sids[1])
    assert sio.rooms(sids[1]) == []
    assert "solo-1" not in manager.rooms[NS], "a room emptied by a disconnect is removed"
    assert set(manager.rooms[NS]["all"]) == {sids[2], sids[3]}
    for sid in (sids[0], sids[2], sids[3]):
        assert set(sio.rooms(sid)) == scanned_rooms(manager, sid)

    for client in clients:
        await client.close()
    for sid in sids:
        await wait_until_gone(manager, sid)
    assert NS not in manager.rooms
    assert manager._memberships == {}
