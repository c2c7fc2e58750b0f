"""Boutique presence: a boutique is online while any of its staff is connected.

This registry counts this node's staff connections. Transitions (first staff in,
last staff out) are published to the boutique's presence room.
"""

from __future__ import annotations

from collections import Counter

from hub.domains.ports import Fanout, presence_room
from protocol import events
from protocol.codec import to_wire
from protocol.messages import PresenceFrame, PresenceReply


class PresenceRegistry:
    """Counts connected staff per boutique."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._staff: Counter[str] = Counter()

    async def staff_connected(self, boutique: str) -> None:
        """Count one more staff socket; announce when the boutique comes online."""
        self._staff[boutique] += 1
        if self._staff[boutique] == 1:
            await self._announce(boutique, online=True)

    async def staff_disconnected(self, boutique: str) -> None:
        """Count one staff socket less; announce when the boutique goes offline."""
        if self._staff[boutique] <= 0:
            return
        self._staff[boutique] -= 1
        if self._staff[boutique] == 0:
            del self._staff[boutique]
            await self._announce(boutique, online=False)

    def is_online(self, boutique: str) -> bool:
        return self._staff.get(boutique, 0) > 0

    def snapshot(self, boutiques: list[str]) -> PresenceReply:
        """Current presence of the named boutiques."""
        return PresenceReply(
            boutiques=[PresenceFrame(boutique=b, online=self.is_online(b)) for b in boutiques]
        )

    async def _announce(self, boutique: str, *, online: bool) -> None:
        frame = PresenceFrame(boutique=boutique, online=online)
        await self._fanout.publish([presence_room(boutique)], events.PRESENCE, to_wire(frame))
