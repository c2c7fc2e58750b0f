"""What the domains need from the outside world, as narrow Protocols.

The transport and the broker implement these; domains never import them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol


class Fanout(Protocol):
    """Delivers a frame to every socket in some rooms, on every hub node.

    Between nodes delivery is at-most-once; durable frames are healed by client
    catch-up from the store. ``data`` is JSON-compatible builtins.
    """

    async def publish(self, rooms: Sequence[str], event: str, data: Any, *, skip: str | None = None) -> None:
        """Deliver ``event`` to ``rooms``, except the connection ``skip``."""
        ...

    async def evict(self, rooms: Sequence[str], holders: str) -> None:
        """On every node, make the sockets in room ``holders`` leave ``rooms`` (access was revoked)."""
        ...


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def user_room(user_id: str) -> str:
    """Every socket of one user."""
    return f"user:{user_id}"


def staff_room(boutique_id: str) -> str:
    """Every staff socket of one boutique."""
    return f"staff:{boutique_id}"


def order_room(order_id: str) -> str:
    """Every socket watching one order."""
    return f"order:{order_id}"


def presence_room(boutique_id: str) -> str:
    """Every socket watching one boutique's presence."""
    return f"presence:{boutique_id}"


def track_room(order_id: str) -> str:
    """Every socket following one order's driver (``track.position``, ``track.ended``)."""
    return f"track:{order_id}"


def stock_room(boutique_id: str) -> str:
    """Every socket watching a whole boutique's stock."""
    return f"stock:{boutique_id}"


def sku_room(boutique_id: str, sku: str) -> str:
    """Every socket watching one product of a boutique."""
    return f"stock:{boutique_id}:{sku}"
