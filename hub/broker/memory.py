"""Single-node broker: publishing is local delivery."""

from __future__ import annotations

from hub.broker.base import Envelope, OnEnvelope, OnRecovered


class MemoryBroker:
    """The in-process broker for a single hub node (``memory://``)."""

    def __init__(self) -> None:
        self._on_envelope: OnEnvelope | None = None

    async def start(self, on_envelope: OnEnvelope, on_recovered: OnRecovered) -> None:
        self._on_envelope = on_envelope

    async def publish(self, envelope: Envelope) -> None:
        if self._on_envelope is None:
            raise RuntimeError("broker not started")
        await self._on_envelope(envelope)

    def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        self._on_envelope = None
