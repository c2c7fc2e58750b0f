"""A bare Socket.IO server with the hub's transport (FanoutManager, HubSocketServer), for transport tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
import socketio
from aiohttp import web

from hub.transport.fanout import FanoutManager
from hub.transport.session import HubSocketServer
from tests.support.rawclient import RawClient

ROOM = "room"


@dataclass
class Hub:
    sio: socketio.AsyncServer
    manager: FanoutManager
    url: str
    http: aiohttp.ClientSession
    runner: web.AppRunner
    slow: list[str] = field(default_factory=list)
    disconnects: list[tuple[str, str]] = field(default_factory=list)
    clients: list[RawClient] = field(default_factory=list)

    async def raw(self) -> RawClient:
        client = await RawClient.connect(self.http, self.url)
        self.clients.append(client)
        return client


StartFanoutHub = Callable[..., Awaitable[Hub]]


@pytest_asyncio.fixture
async def fanout_hub() -> AsyncIterator[StartFanoutHub]:
    """Start a Socket.IO server with a FanoutManager on a random port; every connection joins ROOM.

    ``server_options`` go to :class:`HubSocketServer`, the other keyword arguments to the manager.
    """
    stack = contextlib.AsyncExitStack()

    async def start(server_options: dict[str, Any] | None = None, **manager_kwargs: Any) -> Hub:
        slow: list[str] = []
        manager = FanoutManager(on_slow_consumer=slow.append, **manager_kwargs)
        sio = HubSocketServer(client_manager=manager, async_mode="aiohttp", **(server_options or {}))
        app = web.Application()
        sio.attach(app)
        app.on_shutdown.append(lambda _app: sio.shutdown())  # as the hub's gateway does
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        hub = Hub(
            sio=sio, manager=manager, url=f"http://127.0.0.1:{port}", http=http, runner=runner, slow=slow
        )

        @sio.event
        async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
            await sio.enter_room(sid, ROOM)

        @sio.event
        async def disconnect(sid: str, reason: str) -> None:
            hub.disconnects.append((sid, reason))

        @sio.event
        async def ping_me(sid: str, data: Any) -> Any:
            return {"pong": data}

        async def stop() -> None:
            await http.close()  # aborts every client connection at once
            await manager.wait_evictions()
            await runner.cleanup()  # its on_shutdown shuts sio down

        stack.push_async_callback(stop)
        return hub

    async with stack:
        yield start
