"""The broker contract.

Pub/sub between nodes is at-most-once: a frame published while a node is cut off
from the broker is not replayed. Durable history lives in the store, and clients
heal gaps by catch-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

DeliverLocal = Callable[[Sequence[str], str, Any, str | None], Awaitable[None]]
"""Emit to this node's sockets in rooms: (rooms, event, data, skip_connection)."""


class Broker(Protocol):
    async def start(self, deliver: DeliverLocal) -> None:
        """Begin delivering published frames, from every node, through ``deliver``."""
        ...

    async def publish(self, rooms: Sequence[str], event: str, data: Any, skip: str | None) -> None:
        """Send a frame to every node (this one included)."""
        ...

    def healthy(self) -> bool:
        """False while the broker cannot reach its peers."""
        ...

    async def close(self) -> None: ...
