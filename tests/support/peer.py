"""A party on the hub (staff, a shopper, a driver) over its own python-socketio client, for tests
that need the other side of a conversation or to read what the hub stores."""

from __future__ import annotations

from typing import Any

import socketio


class Peer:
    """Connects over WebSocket on ``async with``; records every server event it receives."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.sio.on("*", self._record)

    async def _record(self, event: str, data: Any) -> None:
        self.events.append((event, data))

    def of(self, event: str) -> list[Any]:
        """The payloads of every ``event`` received so far, in order."""
        return [d for e, d in self.events if e == event]

    async def __aenter__(self) -> Peer:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.sio.disconnect()

    async def ok(self, event: str, data: Any) -> Any:
        """The ack's data; fails the test when the hub answers an error."""
        reply = await self.sio.call(event, data, timeout=10)
        assert reply["ok"], reply
        return reply["data"]

    async def history(self, stream: str) -> list[dict[str, Any]]:
        """Every entry of ``stream``, ascending (pages of 500 backwards)."""
        entries: list[dict[str, Any]] = []
        before = None
        while True:
            page = await self.ok("chat.history", {"stream": stream, "before": before, "limit": 500})
            entries[:0] = page["entries"]
            if not page["has_more"] or not page["entries"]:
                return entries
            before = page["entries"][0]["seq"]
