"""What every store guarantees.

A store is the single source of truth for durable streams. Each guarantee below is
exercised by the contract suite in ``tests/storage`` against every backend.

Streams
    A stream is an append-only log. ``append`` assigns ``seq = head + 1`` atomically,
    so seqs of one stream are gap-free, unique and increasing even when several hub
    processes append concurrently. A stream has an ``epoch`` fixed when it is first
    written; a cursor from another epoch is not valid in this one. Entries are never
    deleted or reordered within an epoch. Nothing expires: a reader a week behind
    still catches up.

Idempotency
    ``(author, client_id)`` is unique across the store. Appending with a pair that
    already exists stores nothing and returns the original entry with
    ``duplicate=True``. ``append`` returns only after the entry is durable.

Everything else here (read cursors, acks, preferences, orders, processed events)
is small mutable state keyed by ids; each method says its own guarantee.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class StoredEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One durable log entry. ``payload`` is opaque JSON owned by the domain."""

    stream: str
    seq: int
    epoch: str
    ts: int
    """Milliseconds since the Unix epoch, assigned by the appender."""
    author: str
    client_id: str
    payload: bytes


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    entry: StoredEntry
    duplicate: bool
    """True when ``(author, client_id)`` already existed; ``entry`` is then the original."""


class StreamHead(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    epoch: str
    head: int
    """Seq of the newest entry; 0 for a stream with no entries."""
    last_ts: int


class OrderRecord(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    shopper_id: str
    boutique_id: str
    status: str
    driver_id: str | None
    updated_ts: int


class StreamStore(Protocol):
    """Durable, append-only, per-stream logs."""

    async def append(
        self, stream: str, *, author: str, client_id: str, payload: bytes, ts: int, members: tuple[str, ...]
    ) -> AppendResult:
        """Append one entry, or return the original for a known ``(author, client_id)``.

        ``members`` are the parties (``user:<id>``, ``boutique:<id>``) that may list
        this stream; they are recorded when the stream is created and merged on each
        append. Durable on return.
        """
        ...

    async def read_after(self, stream: str, after: int, limit: int) -> list[StoredEntry]:
        """Entries with ``seq > after``, ascending, at most ``limit``."""
        ...

    async def read_before(self, stream: str, before: int | None, limit: int) -> list[StoredEntry]:
        """The newest ``limit`` entries with ``seq < before`` (any seq when None), ascending."""
        ...

    async def head(self, stream: str) -> StreamHead | None:
        """The stream's epoch and newest seq, or None if nothing was ever appended."""
        ...

    async def streams_of(self, member: str, prefix: str, limit: int) -> list[StreamHead]:
        """Streams whose id starts with ``prefix`` that list ``member``, newest activity first."""
        ...


class CursorStore(Protocol):
    """Per-party positions in streams: read receipts and notification acks."""

    async def advance_read(self, stream: str, party: str, seq: int) -> int:
        """Raise the party's read position to ``seq`` if higher; return the position now held.

        Never moves backwards.
        """
        ...

    async def read_positions(self, stream: str) -> dict[str, int]:
        """Every party's read position in ``stream``."""
        ...

    async def ack(self, stream: str, user: str, seqs: list[int]) -> None:
        """Record that ``user`` received these entries. Idempotent."""
        ...

    async def unacked(self, stream: str, user: str, limit: int) -> list[StoredEntry]:
        """Entries of ``stream`` that ``user`` has not acked, ascending, at most ``limit``."""
        ...

    async def count_after(
        self, stream: str, after: int, *, by: str | None = None, not_by: str | None = None
    ) -> int:
        """How many entries have ``seq > after``, optionally only those written ``by`` an
        author or ``not_by`` one."""
        ...


class PreferenceStore(Protocol):
    async def muted(self, user: str) -> list[str]:
        """The user's muted notification categories; empty when never set."""
        ...

    async def set_muted(self, user: str, categories: list[str]) -> None:
        """Replace the user's muted categories."""
        ...


class OrderStore(Protocol):
    async def upsert_order(self, order: OrderRecord) -> OrderRecord:
        """Create or replace the order; return what is stored."""
        ...

    async def get_order(self, order_id: str) -> OrderRecord | None: ...

    async def orders_for(self, *, field: str, value: str, limit: int) -> list[OrderRecord]:
        """Orders whose ``field`` (shopper_id, boutique_id or driver_id) equals ``value``, newest first."""
        ...


class EventLedger(Protocol):
    """Remembers which external events (service, Kafka, Stripe) were fully applied."""

    async def seen(self, event_id: str) -> bool: ...

    async def mark_seen(self, event_id: str, ts: int) -> bool:
        """Record the event; return False when it was already recorded."""
        ...


class Store(StreamStore, CursorStore, PreferenceStore, OrderStore, EventLedger, Protocol):
    """Everything the hub needs from durable storage."""

    async def ping(self) -> None:
        """Raise when the backend is unreachable."""
        ...

    async def close(self) -> None:
        """Flush and release; the store is unusable afterwards."""
        ...
