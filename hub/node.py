"""This hub node: the domains' :class:`~hub.domains.ports.Fanout`, backed by a broker.

A frame goes domain -> node -> broker -> (every node) -> node -> local sockets.
There is exactly one path, so a frame reaches each local socket once per publish.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class Node:
    """Publishes through the broker and applies what the broker delivers."""

    def __init__(self, node_id: str, broker: Broker, metrics: HubMetrics) -> None:
        self.node_id = node_id
        self._broker = broker
        self._metrics = metrics
        self._local: LocalSockets | None = None

    async def start(self, local: LocalSockets) -> None:
        """Connect the broker to this node's sockets."""
        self._local = local
        await self._broker.start(self._on_envelope)

    async def publish(self, rooms: Sequence[str], event: str, data: Any, *, skip: str | None = None) -> None:
        self._metrics.events_out.labels(event).inc()
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
        else:
            await self._local.evict_local(envelope.rooms, envelope.holders)

    def healthy(self) -> bool:
        return self._broker.healthy()
