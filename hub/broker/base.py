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
    ``resync``: tell every socket to catch up from the store (a node's link came back,
    so envelopes it published, or was sent, meanwhile may be missing everywhere).
    """

    kind: Literal["emit", "evict", "resync"]
    rooms: tuple[str, ...] = ()
    event: str = ""
    data: Any = None
    skip: str | None = None
    holders: str = ""


OnEnvelope = Callable[[Envelope], Awaitable[None]]
OnRecovered = Callable[[], Awaitable[None]]


class Broker(Protocol):
    async def start(self, on_envelope: OnEnvelope, on_recovered: OnRecovered) -> None:
        """Begin handing envelopes published by every node (this one included) to ``on_envelope``.

        ``on_recovered`` runs when the link to the other nodes works again after a loss,
        during which envelopes may have been dropped.
        """
        ...

    async def publish(self, envelope: Envelope) -> None:
        """Send an envelope to every node (this one included)."""
        ...

    def healthy(self) -> bool:
        """False while the broker cannot reach its peers."""
        ...

    async def close(self) -> None: ...
