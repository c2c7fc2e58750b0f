"""Boutique presence: a boutique is online while any of its staff is connected to any node.

Who is connected is kept in a :class:`PresenceLedger`: in memory for one node, in
Redis when nodes share a broker. The ledger reports transitions (first staff
socket in, last one out, or the last one's node died), and this registry publishes
them to the boutique's presence room.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from hub.domains.ports import Fanout, presence_room
from protocol import events
from protocol.codec import to_wire
from protocol.messages import PresenceFrame, PresenceReply

OnOffline = Callable[[str], Awaitable[None]]


class PresenceLedger(Protocol):
    """Which staff sockets (``member`` = ``<node>:<sid>``) are connected, per boutique."""

    async def join(self, boutique: str, member: str) -> bool:
        """Record ``member``; True when the boutique had no live member before."""
        ...

    async def leave(self, boutique: str, member: str) -> bool:
        """Forget ``member``; True when it was the boutique's last live member."""
        ...

    async def online(self, boutiques: Sequence[str]) -> set[str]:
        """The boutiques among ``boutiques`` with at least one live member."""
        ...

    async def start(self, on_offline: OnOffline) -> None:
        """Begin calling ``on_offline(boutique)`` when members vanish without leaving (a node died)."""
        ...

    async def close(self) -> None: ...


class LocalPresenceLedger:
    """The single-node ledger: members live in this process only, and never vanish unannounced."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}

    async def join(self, boutique: str, member: str) -> bool:
        members = self._members.setdefault(boutique, set())
        members.add(member)
        return len(members) == 1

    async def leave(self, boutique: str, member: str) -> bool:
        members = self._members.get(boutique)
        if members is None or member not in members:
            return False
        members.discard(member)
        if members:
            return False
        del self._members[boutique]
        return True

    async def online(self, boutiques: Sequence[str]) -> set[str]:
        return {b for b in boutiques if b in self._members}

    async def start(self, on_offline: OnOffline) -> None:
        return None

    async def close(self) -> None:
        self._members.clear()


class PresenceRegistry:
    """Announces boutiques coming online and going offline."""

    def __init__(self, fanout: Fanout, ledger: PresenceLedger) -> None:
        self._fanout = fanout
        self._ledger = ledger

    async def start(self) -> None:
        """Start announcing boutiques whose last staff node died."""
        await self._ledger.start(self._went_offline)

    async def staff_connected(self, boutique: str, member: str) -> None:
        """Count one more staff socket; announce when the boutique comes online."""
        if await self._ledger.join(boutique, member):
            await self._announce(boutique, online=True)

    async def staff_disconnected(self, boutique: str, member: str) -> None:
        """Count one staff socket less; announce when the boutique goes offline."""
        if await self._ledger.leave(boutique, member):
            await self._announce(boutique, online=False)

    async def snapshot(self, boutiques: list[str]) -> PresenceReply:
        """Current presence of the named boutiques, across all nodes."""
        online = await self._ledger.online(boutiques)
        return PresenceReply(boutiques=[PresenceFrame(boutique=b, online=b in online) for b in boutiques])

    async def _went_offline(self, boutique: str) -> None:
        await self._announce(boutique, online=False)

    async def _announce(self, boutique: str, *, online: bool) -> None:
        frame = PresenceFrame(boutique=boutique, online=online)
        await self._fanout.publish([presence_room(boutique)], events.PRESENCE, to_wire(frame))
