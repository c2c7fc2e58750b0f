"""A test client that keeps a live copy of stock the way the protocol says clients should.

Per SKU it keeps the state with the highest version it was shown (a snapshot item, a
live ``stock`` frame or a catch-up entry) and ignores lower ones; it records every
frame it ignored so tests can tell reordering from regression. It can rejoin after a
disconnect either by watching again (snapshot) or by catching up the inventory stream
from the cursor it holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio


class StockClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.view: dict[str, tuple[int, int]] = {}
        """sku -> (level, version)."""
        self.ignored = 0
        """Frames older than what the view already held (reordered delivery, never applied)."""
        self.frames = 0
        self.stream = ""
        self.epoch = ""
        self.cursor = 0
        """Highest seq of the inventory stream this client applied contiguously."""
        self.only: set[str] | None = None
        """The SKUs watched, when not a whole boutique; changes of others are not kept."""
        self.sio = self._new_socket()

    def _new_socket(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)
        sio.on("stock", self._on_stock)
        return sio

    async def connect(self) -> None:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )

    async def disconnect(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        self.sio = self._new_socket()

    async def ok(self, event: str, data: Any) -> Any:
        reply = await self.sio.call(event, data, timeout=30)
        assert reply["ok"], reply
        return reply["data"]

    def _offer(self, sku: str, level: int, version: int) -> None:
        if self.only is not None and sku not in self.only:
            return
        held = self.view.get(sku)
        if held is not None and held[1] >= version:
            if held[1] > version:
                self.ignored += 1
            else:
                assert held[0] == level, f"{sku} v{version}: level {level} differs from {held[0]}"
            return
        self.view[sku] = (level, version)

    async def _on_stock(self, frame: dict[str, Any]) -> None:
        self.frames += 1
        self._offer(frame["sku"], frame["level"], frame["version"])
        if frame["seq"] == self.cursor + 1 and frame["epoch"] == self.epoch:
            self.cursor = frame["seq"]

    async def watch(self, boutique: str, skus: list[str] | None = None) -> dict[str, Any]:
        """Watch, then page through the whole snapshot."""
        self.only = set(skus) if skus else None
        snapshot: dict[str, Any] = await self.ok("stock.watch", {"boutique_id": boutique, "skus": skus or []})
        self.stream, self.epoch = snapshot["stream"], snapshot["epoch"]
        self.cursor = max(self.cursor, snapshot["head"]) if self.epoch else 0
        page = snapshot
        while True:
            for item in page["items"]:
                self._offer(item["sku"], item["level"], item["version"])
            if not page["has_more"]:
                return snapshot
            page = await self.ok(
                "stock.levels",
                {"boutique_id": boutique, "skus": skus or [], "after": page["next_after"]},
            )

    async def catch_up(self) -> int:
        """Apply every inventory entry after the cursor; returns how many were read."""
        read = 0
        while True:
            page = await self.ok(
                "catchup",
                {"stream": self.stream, "epoch": self.epoch or None, "after": self.cursor, "limit": 500},
            )
            assert page["recovered"], page
            self.epoch = page["epoch"]
            for entry in page["entries"]:
                self._offer(entry["sku"], entry["level"], entry["version"])
                self.cursor = entry["seq"]
                read += 1
            if not page["has_more"]:
                return read

    async def wait_for(self, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)
