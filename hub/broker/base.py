"""The broker contract.

Pub/sub between nodes is at-most-once: an envelope published while a node is cut
off from the broker is not replayed. Durable history lives in the store, and
clients heal gaps by catch-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What travels between nodes.

    ``emit``: deliver ``event``/``data`` to the sockets in ``rooms``, except ``skip``.
    ``evict``: remove the sockets that are in ``holders`` from every room in ``rooms``.
    """

    kind: Literal["emit", "evict"]
    rooms: tuple[str, ...]
    event: str = ""
    data: Any = None
    skip: str | None = None
    holders: str = ""


OnEnvelope = Callable[[Envelope], Awaitable[None]]


class Broker(Protocol):
    async def start(self, on_envelope: OnEnvelope) -> None:
        """Begin handing envelopes published by every node (this one included) to ``on_envelope``."""
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Send an envelope to every node (this one included)."""
        ...

    def healthy(self) -> bool:
        """False while the broker cannot reach its peers."""
        ...

    async def close(self) -> None: ...
