"""This hub node: the domains' :class:`~hub.domains.ports.Fanout`, backed by a broker.

A frame goes domain -> node -> broker -> (every node) -> node -> local sockets.
There is exactly one path, so a frame reaches each local socket once per publish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hub.broker.base import Broker, Envelope
from hub.metrics import HubMetrics


class LocalSockets(Protocol):
    """This node's sockets, as the transport exposes them."""

    async def deliver_local(self, rooms: Sequence[str], event: str, data: Any, skip: str | None) -> None:
        """Emit to the local sockets in ``rooms``."""
        ...

    async def evict_local(self, rooms: Sequence[str], holders: str) -> None:
        """Make the local sockets in room ``holders`` leave ``rooms``."""
        ...

    async def resync_local(self) -> None:
        """Tell every local socket to catch up: frames from other nodes may have been dropped."""
        ...


Tap = Callable[[Sequence[str], str, Any], None]
"""``tap(rooms, event, data)``: sees every frame this node publishes. Must not block or raise."""


class Node:
    """Publishes through the broker and applies what the broker delivers."""

    def __init__(self, node_id: str, broker: Broker, metrics: HubMetrics) -> None:
        self.node_id = node_id
        self._tap: Tap | None = None
        self._broker = broker
        self._metrics = metrics
        self._local: LocalSockets | None = None

    async def start(self, local: LocalSockets) -> None:
        """Connect the broker to this node's sockets."""
        self._local = local
        await self._broker.start(self._on_envelope, self._on_recovered)

    def set_tap(self, tap: Tap | None) -> None:
        """Show every frame published from now on to ``tap`` (the Kafka analytics producer).

        This is the one place each domain frame leaves this node, once, before the broker
        copies it to every node; so a tap sees each frame exactly once across the cluster.
        """
        self._tap = tap

    async def publish(self, rooms: Sequence[str], event: str, data: Any, *, skip: str | None = None) -> None:
        self._metrics.child(self._metrics.events_out, event).inc()
        if self._tap is not None:
            self._tap(rooms, event, data)
        await self._broker.publish(
            Envelope(kind="emit", rooms=tuple(rooms), event=event, data=data, skip=skip)
        )

    async def evict(self, rooms: Sequence[str], holders: str) -> None:
        await self._broker.publish(Envelope(kind="evict", rooms=tuple(rooms), holders=holders))

    async def _on_envelope(self, envelope: Envelope) -> None:
        if self._local is None:
            return
        if envelope.kind == "emit":
            await self._local.deliver_local(envelope.rooms, envelope.event, envelope.data, envelope.skip)
        elif envelope.kind == "evict":
            await self._local.evict_local(envelope.rooms, envelope.holders)
        else:
            await self._local.resync_local()

    async def _on_recovered(self) -> None:
        """This node's link is back: every socket on every node may have missed frames, so all resync.

        Other nodes' sockets too: what this node published while cut off reached no one,
        and those nodes may have recovered (and resynced) before this one did.
        """
        await self._broker.publish(Envelope(kind="resync"))

    def healthy(self) -> bool:
        return self._broker.healthy()
