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

from typing import Literal, Protocol

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


LatLon = tuple[float, float]
"""A WGS84 point as ``(lat, lon)`` in decimal degrees."""


class OrderRecord(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    shopper_id: str
    boutique_id: str
    status: str
    driver_id: str | None
    updated_ts: int
    pickup: LatLon | None = None
    dropoff: LatLon | None = None


class StockRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The current state of one SKU of one boutique. Owned by the inventory domain;
    the store only keeps it and guards ``version``."""

    boutique_id: str
    sku: str
    level: int
    version: int
    """Rises by exactly one with each committed change; 0 before the first (threshold only)."""
    sources: dict[str, int]
    """Per source (``device:<id>``, ``service``...), the highest source version applied."""
    low: bool
    """A low-stock alert is raised and not yet re-armed."""
    threshold: int | None
    clear: int | None
    updated_ts: int


class StockCommit(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :meth:`InventoryStore.commit_stock`.

    ``committed``: ``record`` is stored and ``entry`` appended. ``duplicate``: the event id
    was committed before; ``entry`` is that original entry and ``record`` the SKU's state now.
    ``conflict``: the SKU's version was not ``expected_version``; nothing was written and
    ``record`` is the state now (None if the SKU does not exist).
    """

    outcome: Literal["committed", "duplicate", "conflict"]
    record: StockRecord | None
    entry: StoredEntry | None


class WishRecord(msgspec.Struct, frozen=True, kw_only=True):
    boutique_id: str
    sku: str
    added_ts: int


class TrackPointRecord(msgspec.Struct, frozen=True, kw_only=True):
    ts: int
    lat: float
    lon: float


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


class InventoryStore(Protocol):
    """Per-SKU stock state, and each boutique's inventory stream (``inv:<boutique>``).

    :meth:`commit_stock` is the only writer of stock state. It is a compare-and-set on
    the SKU's ``version`` that also appends the change to the boutique's stream, keyed
    ``(author="stock:<boutique>", client_id=event_id)``, all or nothing as seen by any
    later :meth:`commit_stock`: concurrent committers on any number of nodes never both
    win one version, and an event id is committed at most once per boutique. Readers
    (:meth:`stock`, :meth:`stock_page`) may briefly see a committed state before its
    stream entry is readable (MongoDB finishes an interrupted commit on the next commit of
    the SKU or on a retry of the same event).
    """

    async def stock(self, boutique_id: str, sku: str) -> StockRecord | None: ...

    async def stock_page(
        self, boutique_id: str, *, skus: list[str] | None, after: str | None, limit: int
    ) -> list[StockRecord]:
        """SKUs of the boutique (only those in ``skus`` when given) with ``sku > after``,
        ascending by sku, at most ``limit``."""
        ...

    async def stock_entry(self, boutique_id: str, event_id: str) -> StoredEntry | None:
        """The inventory stream entry committed for ``event_id``, if any."""
        ...

    async def commit_stock(
        self, record: StockRecord, *, expected_version: int, event_id: str, payload: bytes, ts: int
    ) -> StockCommit:
        """Store ``record`` (whose version must be ``expected_version + 1``) if the SKU's
        version is ``expected_version`` (0 also when the SKU does not exist yet), and append
        ``payload`` to the boutique's inventory stream. Durable on return.

        Every field of ``record`` is stored except ``threshold`` and ``clear``, which only
        :meth:`set_threshold` writes; the returned record carries the stored ones.

        Raises:
            ValueError: when ``record.version != expected_version + 1``.
        """
        ...

    async def set_threshold(
        self, boutique_id: str, sku: str, low: int | None, clear: int | None
    ) -> StockRecord:
        """Set (``low`` None: remove) the SKU's alert threshold and return the SKU's state.

        Does not change ``version``. A SKU without state is created at level 0 and
        version 0, so a threshold can be declared before any stock arrives.
        """
        ...


class WishlistStore(Protocol):
    async def add_wish(self, user: str, boutique_id: str, sku: str, ts: int) -> None:
        """Idempotent: adding a wish that exists keeps its original ``added_ts``."""
        ...

    async def remove_wish(self, user: str, boutique_id: str, sku: str) -> None:
        """Idempotent."""
        ...

    async def wishes_of(self, user: str, limit: int) -> list[WishRecord]:
        """The user's wishes, newest first."""
        ...

    async def wishers(self, boutique_id: str, sku: str, *, after: str | None, limit: int) -> list[str]:
        """Users who wish for the SKU with ``user > after``, ascending, at most ``limit``."""
        ...


class TrackStore(Protocol):
    async def add_track_point(self, order_id: str, point: TrackPointRecord) -> None:
        """Append a sampled position to the order's track. A point with the same ``ts``
        as a stored one is ignored."""
        ...

    async def track_points(self, order_id: str, limit: int) -> list[TrackPointRecord]:
        """The order's track, oldest first, at most ``limit`` points (the oldest ones)."""
        ...


class PlaceStore(Protocol):
    async def set_boutique_location(self, boutique_id: str, location: LatLon) -> None:
        """Create or replace where the boutique is."""
        ...

    async def boutique_location(self, boutique_id: str) -> LatLon | None: ...


class EventLedger(Protocol):
    """Remembers which external events (service, Kafka, Stripe) were fully applied."""

    async def seen(self, event_id: str) -> bool: ...

    async def mark_seen(self, event_id: str, ts: int) -> bool:
        """Record the event; return False when it was already recorded."""
        ...


class Store(
    StreamStore,
    CursorStore,
    PreferenceStore,
    OrderStore,
    EventLedger,
    InventoryStore,
    WishlistStore,
    TrackStore,
    PlaceStore,
    Protocol,
):
    """Everything the hub needs from durable storage."""

    async def ping(self) -> None:
        """Raise when the backend is unreachable."""
        ...

    async def close(self) -> None:
        """Flush and release; the store is unusable afterwards."""
        ...
