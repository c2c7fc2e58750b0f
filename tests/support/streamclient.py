"""A test client that follows the documented catch-up algorithm over python-socketio.

It keeps, per stream, the epoch, the cursor and every entry applied, applying only
``seq == cursor + 1``; a live frame beyond that is a gap and triggers catch-up. It
records every durable frame it was *shown* so tests can check exactly-once, order and
no-leak properties.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import socketio
from ulid import ULID


class StreamClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        transports: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.transports = transports or ["websocket"]
        self.headers = headers or {}
        self.epochs: dict[str, str] = {}
        self.cursors: dict[str, int] = defaultdict(int)
        self.entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.live: list[tuple[str, Any]] = []
        self.closing: list[dict[str, Any]] = []
        self.resets: list[str] = []
        self._lock = asyncio.Lock()
        self._catching: set[str] = set()
        self._buffered: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.resyncs = 0
        self.sio = self._new_socket()

    def _new_socket(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)
        for event in ("chat.message", "notification"):
            sio.on(event, self._make_durable_handler(event))
        for event in ("chat.read", "chat.typing", "presence", "order.updated", "notify.badge", "welcome"):
            sio.on(event, self._make_live_handler(event))
        sio.on("session.closing", self._on_closing)
        sio.on("resync", self._on_resync)
        return sio

    async def _on_resync(self, _data: Any) -> None:
        self.resyncs += 1
        await self.sync()

    async def reconnect(self, url: str) -> None:
        """Connect a new socket to ``url`` (e.g. a surviving node), keeping every cursor, then sync."""
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        self.url = url
        self._catching.clear()
        self._buffered.clear()
        self.sio = self._new_socket()
        await self.connect()

    def _make_live_handler(self, event: str):  # type: ignore[no-untyped-def]
        async def handler(data: Any) -> None:
            self.live.append((event, data))

        return handler

    def _make_durable_handler(self, event: str):  # type: ignore[no-untyped-def]
        async def handler(data: Any) -> None:
            self.live.append((event, data))
            await self._on_durable(data)

        return handler

    async def _on_closing(self, data: Any) -> None:
        self.closing.append(data)

    async def connect(self, *, sync: bool = True) -> None:
        await self.sio.connect(
            self.url,
            auth={"token": self.token},
            transports=self.transports,
            headers=self.headers,
            wait_timeout=10,
        )
        if sync:
            await self.sync()

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()

    async def call(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def ok(self, event: str, data: Any) -> Any:
        reply = await self.call(event, data)
        assert reply["ok"], reply
        return reply["data"]

    async def send(self, stream: str, text: str, client_id: str | None = None) -> dict[str, Any]:
        return await self.ok(
            "chat.send", {"stream": stream, "client_id": client_id or str(ULID()), "text": text}
        )

    async def _on_durable(self, frame: dict[str, Any]) -> None:
        stream, seq = frame["stream"], frame["seq"]
        if stream in self._catching:
            self._buffered[stream].append(frame)  # applied in order once the catch-up ends
            return
        if self.epochs.get(stream) not in (None, frame["epoch"]):
            await self.catch_up(stream)
            return
        if seq <= self.cursors[stream]:
            return
        if seq == self.cursors[stream] + 1:
            self.epochs[stream] = frame["epoch"]
            self._apply(frame)
            return
        await self.catch_up(stream)

    def _apply(self, frame: dict[str, Any]) -> None:
        self.entries[frame["stream"]].append(frame)
        self.cursors[frame["stream"]] = frame["seq"]

    async def sync(self) -> list[dict[str, Any]]:
        cursors = [{"stream": s, "epoch": self.epochs.get(s), "seq": c} for s, c in self.cursors.items()]
        reply = await self.ok("sync", {"cursors": cursors})
        for status in reply["streams"]:
            if status["behind"] or not status["recovered"]:
                await self.catch_up(status["stream"])
        return reply["streams"]

    async def catch_up(self, stream: str, limit: int = 100) -> None:
        self._catching.add(stream)
        try:
            while True:
                page = await self.ok(
                    "catchup",
                    {
                        "stream": stream,
                        "epoch": self.epochs.get(stream),
                        "after": self.cursors[stream],
                        "limit": limit,
                    },
                )
                if not page["recovered"]:
                    self.resets.append(stream)
                    self.entries[stream] = []
                    self.cursors[stream] = 0
                self.epochs[stream] = page["epoch"]
                for frame in page["entries"]:
                    if frame["seq"] == self.cursors[stream] + 1:
                        self._apply(frame)
                if not page["has_more"]:
                    break
        finally:
            self._catching.discard(stream)
        for frame in sorted(self._buffered.pop(stream, []), key=lambda f: f["seq"]):
            if frame["epoch"] == self.epochs.get(stream) and frame["seq"] == self.cursors[stream] + 1:
                self._apply(frame)
            elif frame["seq"] > self.cursors[stream] + 1:
                await self.catch_up(stream)  # still a gap: page again
                return

    def texts(self, stream: str) -> list[str]:
        return [e["text"] for e in self.entries[stream]]

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)
