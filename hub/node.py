"""This hub node: the domains' :class:`~hub.domains.ports.Fanout`, backed by a broker.

A frame goes domain -> node -> broker -> (every node) -> node's local emit. There is
exactly one path, so a frame reaches each local socket once per publish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.broker.base import Broker, DeliverLocal
from hub.metrics import HubMetrics


class Node:
    """Publishes through the broker and counts what goes out."""

    def __init__(self, node_id: str, broker: Broker, metrics: HubMetrics) -> None:
        self.node_id = node_id
        self._broker = broker
        self._metrics = metrics

    async def start(self, deliver_local: DeliverLocal) -> None:
        """Connect the broker to this node's local emitter."""
        await self._broker.start(deliver_local)

    async def publish(self, rooms: Sequence[str], event: str, data: Any, *, skip: str | None = None) -> None:
        self._metrics.events_out.labels(event).inc()
        await self._broker.publish(rooms, event, data, skip)

    def healthy(self) -> bool:
        return self._broker.healthy()
