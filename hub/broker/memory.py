"""Single-node broker: publishing is local delivery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.broker.base import DeliverLocal


class MemoryBroker:
    """The in-process broker for a single hub node (``memory://``)."""

    def __init__(self) -> None:
        self._deliver: DeliverLocal | None = None

    async def start(self, deliver: DeliverLocal) -> None:
        self._deliver = deliver

    async def publish(self, rooms: Sequence[str], event: str, data: Any, skip: str | None) -> None:
        if self._deliver is None:
            raise RuntimeError("broker not started")
        await self._deliver(rooms, event, data, skip)

    def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        self._deliver = None


def open_broker(url: str) -> MemoryBroker:
    """The broker named by ``url``.

    Raises:
        ValueError: for a scheme this build does not support.
    """
    if url in ("memory://", "memory", ""):
        return MemoryBroker()
    raise ValueError(f"unsupported broker URL {url!r}: use memory://")
