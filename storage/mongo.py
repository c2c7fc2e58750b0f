"""The MongoDB store: several hub nodes share one database through ``pymongo.AsyncMongoClient``.

Guarantees: see :mod:`storage.base`; this backend keeps every one of them when any
number of hub processes (each with its own :class:`MongoStore`) use one database.

Durability
    Every write uses write concern ``{w: "majority", j: true}``, so a method returns
    only after the write is journaled on a majority. Readers use read concern
    ``majority``: they never see an entry a failover could roll back. The
    read-modify-write paths (append, ack) read with ``local``, so they see a
    concurrent writer's document as soon as the unique indexes do.

Seq assignment, and why there is no counter
    A per-stream counter bumped with ``$inc`` before the insert leaves a hole when the
    node dies between the two writes: the seq is consumed and no entry ever has it,
    and readers, whose catch-up relies on gap-free seqs, would wait for it forever.
    Instead the entry itself claims its seq: ``append`` inserts
    ``{stream, seq: known_head + 1}`` and the unique ``(stream, seq)`` index decides
    between concurrent appenders. The loser looks up the newest entry and tries the
    seq after it. An entry ``n`` is only ever inserted after entry ``n - 1`` was seen
    stored, and entries are never deleted, so seqs stay gap-free whatever crashes.
    (A multi-document transaction around ``$inc`` + insert would be gap-free too, but
    it needs a replica set, aborts on every write conflict under contention, and costs
    a commit round trip more per append.)

    ``streams`` holds one document per stream: its ``epoch`` (fixed by the upsert that
    creates the document, which the first append of the stream performs), and
    ``head``/``last_ts``/``members``, raised after each insert with ``$max`` semantics.
    That document is a hint kept for cheap reads, never the source of seqs: a node
    that dies between the insert and the hint update leaves the hint behind, and

    - the next append to the stream conflicts on ``(stream, seq)`` and moves past it;
    - the client's retry of the interrupted append gets the original back as a
      duplicate and repairs the hint with the original's seq, ts and members;
    - :meth:`MongoStore.head` never trusts the hint alone: it also asks for entries
      above it, so cursors are judged against the true head.

    Within one process, appends to one stream take turns on an ``asyncio.Lock``, so
    only appenders on different nodes ever race for a seq.

Idempotency
    The unique ``(author, client_id)`` index is the arbiter. ``append`` first looks the
    pair up; two appenders that both miss it race on the index, and the loser gets
    ``DuplicateKeyError``, finds the winner's entry and returns it with
    ``duplicate=True``. A duplicate writes nothing new: its hint repair only restates
    what the original append stored.

Stock commits, without a multi-document transaction
    :meth:`MongoStore.commit_stock` writes two documents, the SKU's state in ``stock``
    and its entry in the boutique's inventory stream, and any number of nodes may
    commit to one SKU at once. The SKU's document is the compare-and-set point, and it
    carries the commit in flight in its ``pending`` field (``null`` when none is):

    1. look the event up (below); if it was committed, return ``duplicate``;
    2. compare-and-set: update the document where ``version == expected`` and
       ``pending == null``, setting the new state and
       ``pending: {event_id, payload, ts}`` (expected 0 with no document: insert it;
       the unique ``(boutique_id, sku)`` index decides between racing inserters);
    3. append the entry through :meth:`MongoStore.append` (stream ``inv:<boutique>``,
       author ``stock:<boutique>``, client id the event id): idempotent, gap-free;
    4. clear ``pending``, filtered on its event id.

    A committer whose step 2 matched nothing re-reads the document and, if it has a
    ``pending``, finishes it (steps 3 and 4, which any node may repeat) before
    answering ``conflict``. So a node that dies after step 2 blocks the SKU only until
    the next commit to it, or until the retry of the same event, which finds the
    pending change, finishes it and answers ``duplicate``. Its state is visible to
    :meth:`MongoStore.stock` from step 2 on, its entry from step 3.

    Looking an event up (:meth:`MongoStore.stock_entry`, step 1) asks for a pending
    change with that event id first and for the entry second. A commit moves from
    pending to entry to cleared in that order, so whatever point a concurrent commit of
    the same event reaches between the two lookups, one of them sees it, or the commit's
    step 2 comes after the lookup and races this one's for the same version. That makes
    an event id commit at most once per boutique as long as it names one SKU; two
    commits of one event id to two SKUs of a boutique, racing from two nodes, can both
    pass step 2, and the loser's state is then stored without an entry of its own.

    Only :meth:`MongoStore.set_threshold` writes ``threshold`` and ``clear``; step 2
    sets the other fields by name and returns the document after the update, so it
    neither overwrites nor invents them. (It does not upsert: SecantusDB's
    ``findAndModify`` with ``upsert`` is unreliable, see :meth:`MongoStore._stream_state`.)
    ``sources`` is stored as ``[[source, version], ...]`` pairs, so a source name is
    never a field name.

Queries
    Every id reaches a query as a plain value (``{"stream": stream}``), never as a
    document built from client input, so no operator can ride in. Entry ranges are
    bounded on ``seq`` as well as sorted (a page after ``n`` lies within
    ``(n, n + limit]`` because seqs are gap-free), so a server that does not walk
    indexes in sort order still reads only about one page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern
from ulid import ULID

from protocol.ids import inventory
from storage.base import (
    AppendResult,
    LatLon,
    OrderRecord,
    StockCommit,
    StockRecord,
    StoredEntry,
    StreamHead,
    TrackPointRecord,
    WishRecord,
)

Doc = dict[str, Any]

DEFAULT_DATABASE: Final = "soko"
PING_TIMEOUT: Final = 2.0
"""Seconds ``ping`` waits for the server, so a readiness probe answers while MongoDB is down."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds ``close`` spends ending server sessions, so a hub stops promptly while MongoDB is down."""

_ORDER_FIELDS = frozenset({"shopper_id", "boutique_id", "driver_id"})
_ENTRY_FIELDS: Final = {"_id": 0, "members": 0}
"""Projection of an entry document onto :class:`StoredEntry`'s fields."""
_STRING_MAX: Final = "\U0010ffff"
"""Sorts after every string that starts with a given prefix (BSON compares UTF-8 bytes)."""

_INDEXES: Final[dict[str, list[IndexModel]]] = {
    "entries": [
        IndexModel([("stream", ASCENDING), ("seq", ASCENDING)], name="stream_seq", unique=True),
        IndexModel([("author", ASCENDING), ("client_id", ASCENDING)], name="author_client_id", unique=True),
    ],
    "streams": [IndexModel([("members", ASCENDING), ("last_ts", DESCENDING)], name="members_last_ts")],
    "read_positions": [
        IndexModel([("stream", ASCENDING), ("party", ASCENDING)], name="stream_party", unique=True)
    ],
    "ack_state": [IndexModel([("stream", ASCENDING), ("user", ASCENDING)], name="stream_user", unique=True)],
    "orders": [
        IndexModel([(field, ASCENDING), ("updated_ts", DESCENDING)], name=f"{field}_updated_ts")
        for field in sorted(_ORDER_FIELDS)
    ],
    "stock": [
        IndexModel([("boutique_id", ASCENDING), ("sku", ASCENDING)], name="boutique_sku", unique=True),
        IndexModel([("boutique_id", ASCENDING), ("pending.event_id", ASCENDING)], name="boutique_pending"),
    ],
    "wishes": [
        IndexModel([("user", ASCENDING), ("added_ts", DESCENDING)], name="user_added_ts"),
        IndexModel(
            [("boutique_id", ASCENDING), ("sku", ASCENDING), ("user", ASCENDING)],
            name="boutique_sku_user",
            unique=True,
        ),
    ],
    "track_points": [IndexModel([("order_id", ASCENDING), ("ts", ASCENDING)], name="order_ts", unique=True)],
}
"""Every index a query here relies on, by collection. ``prefs``, ``events_seen`` and ``places``
use ``_id``."""
_STOCK_FIELDS: Final = {"_id": 0, "pending": 0}
"""Projection of a stock document onto :class:`StockRecord`'s fields."""


class _StreamLocks:
    """One ``asyncio.Lock`` per stream with appends in flight; idle streams hold no lock."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, stream: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(stream, (asyncio.Lock(), 0))
        self._locks[stream] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[stream]
            if users == 1:
                del self._locks[stream]
            else:
                self._locks[stream] = (lock, users - 1)


def _entry(doc: Mapping[str, Any]) -> StoredEntry:
    # BSON hands large integers back as bson.Int64, which the wire codec does not encode.
    return StoredEntry(
        stream=doc["stream"],
        seq=int(doc["seq"]),
        epoch=doc["epoch"],
        ts=int(doc["ts"]),
        author=doc["author"],
        client_id=doc["client_id"],
        payload=bytes(doc["payload"]),
    )


def _order(doc: Mapping[str, Any]) -> OrderRecord:
    return OrderRecord(
        order_id=doc["_id"],
        shopper_id=doc["shopper_id"],
        boutique_id=doc["boutique_id"],
        status=doc["status"],
        driver_id=doc["driver_id"],
        updated_ts=int(doc["updated_ts"]),
        pickup=_point(doc.get("pickup")),
        dropoff=_point(doc.get("dropoff")),
    )


def _point(value: list[float] | None) -> LatLon | None:
    """``[lat, lon]`` as stored, or None (also for an order stored before it had points)."""
    return None if value is None else (float(value[0]), float(value[1]))


def _optional_int(value: int | None) -> int | None:
    return None if value is None else int(value)


def _stock(doc: Mapping[str, Any]) -> StockRecord:
    return StockRecord(
        boutique_id=doc["boutique_id"],
        sku=doc["sku"],
        level=int(doc["level"]),
        version=int(doc["version"]),
        sources={str(source): int(version) for source, version in doc["sources"]},
        low=bool(doc["low"]),
        threshold=_optional_int(doc["threshold"]),
        clear=_optional_int(doc["clear"]),
        updated_ts=int(doc["updated_ts"]),
    )


def _stock_author(boutique_id: str) -> str:
    """The author of the boutique's inventory stream entries; their client id is the event id."""
    return f"stock:{boutique_id}"


class MongoStore:
    """MongoDB implementation of :class:`storage.base.Store`; safe to share one database between nodes."""

    def __init__(self, client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc]) -> None:
        self._client = client
        self._db = db
        local = ReadConcern("local")
        self._entries = db.get_collection("entries")
        self._entries_local = db.get_collection("entries", read_concern=local)
        self._streams = db.get_collection("streams")
        self._streams_local = db.get_collection("streams", read_concern=local)
        self._read_positions = db.get_collection("read_positions")
        self._ack_state = db.get_collection("ack_state", read_concern=local)
        self._prefs = db.get_collection("prefs")
        self._orders = db.get_collection("orders")
        self._events = db.get_collection("events_seen")
        self._stock = db.get_collection("stock")
        self._stock_local = db.get_collection("stock", read_concern=local)
        self._wishes = db.get_collection("wishes")
        self._track_points = db.get_collection("track_points")
        self._places = db.get_collection("places")
        self._locks = _StreamLocks()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> MongoStore:
        """Connect to ``url`` (``mongodb://`` or ``mongodb+srv://``; the database is the URL's
        path, ``soko`` when it has none) and create the indexes that are missing.

        Raises:
            pymongo.errors.PyMongoError: when the URL is invalid or the server cannot be
                reached within the driver's server-selection timeout.
        """
        client: AsyncMongoClient[Doc] = AsyncMongoClient(url)
        try:
            db = client.get_default_database(
                default=DEFAULT_DATABASE,
                write_concern=WriteConcern(w="majority", j=True),
                read_concern=ReadConcern("majority"),
            )
            store = cls(client, db)
            await store._create_indexes()
        except BaseException:
            with pymongo.timeout(CLOSE_TIMEOUT):
                await client.close()
            raise
        return store

    async def _create_indexes(self) -> None:
        """Idempotent: an index that exists with the same name and spec is left alone."""
        for name, indexes in _INDEXES.items():
            await self._db.get_collection(name).create_indexes(indexes)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("store is closed")

    # ------------------------------------------------------------------ streams

    async def append(
        self, stream: str, *, author: str, client_id: str, payload: bytes, ts: int, members: tuple[str, ...]
    ) -> AppendResult:
        self._check_open()
        key = {"author": author, "client_id": client_id}
        async with self._locks.hold(stream):
            original = await self._entries_local.find_one(key)
            if original is not None:
                return await self._duplicate(original)
            state = await self._stream_state(stream)
            seq = state["head"] + 1
            while True:
                doc = {
                    "_id": ObjectId(),
                    "stream": stream,
                    "seq": seq,
                    "epoch": state["epoch"],
                    "ts": ts,
                    "author": author,
                    "client_id": client_id,
                    "payload": payload,
                    "members": list(members),
                }
                try:
                    await self._entries.insert_one(doc)
                    break
                except DuplicateKeyError:
                    original = await self._entries_local.find_one(key)
                    if original is not None:
                        if original["_id"] == doc["_id"]:
                            break  # a driver retry of our own insert after a lost reply
                        return await self._duplicate(original)
                    newest = await self._entries_local.find_one(
                        {"stream": stream, "seq": {"$gte": seq}}, {"seq": 1}, sort=[("seq", DESCENDING)]
                    )
                    if newest is None:
                        raise  # neither index explains the conflict: nothing to retry against
                    seq = newest["seq"] + 1
            await self._raise_hint(stream, seq, ts, members)
        return AppendResult(entry=_entry(doc), duplicate=False)

    async def _stream_state(self, stream: str) -> Doc:
        """The stream's ``epoch`` and ``head`` hint, creating its document (and so fixing its
        epoch) when this is its first append.

        The upsert's result is not used: read back, the document is the one whichever
        node created it first wrote (SecantusDB's ``findAndModify`` may answer ``null``
        to one of several racing upserts, so that is not relied on either).
        """
        projection = {"epoch": 1, "head": 1}
        while True:
            state = await self._streams_local.find_one({"_id": stream}, projection)
            if state is not None:
                return state
            with contextlib.suppress(DuplicateKeyError):  # another node created it meanwhile
                await self._streams_local.update_one(
                    {"_id": stream},
                    {"$setOnInsert": {"epoch": str(ULID()), "head": 0, "last_ts": 0, "members": []}},
                    upsert=True,
                )

    async def _raise_hint(self, stream: str, seq: int, ts: int, members: tuple[str, ...] | list[str]) -> None:
        """Record that entry ``seq`` (written at ``ts`` for ``members``) is stored.

        ``head`` only rises, ``last_ts`` is the ts of the entry at ``head``, and members
        are merged; restating an older entry changes nothing but missing members.
        """
        await self._streams.update_one(
            {"_id": stream},
            [
                {
                    "$set": {
                        "last_ts": {"$cond": [{"$lt": ["$head", seq]}, ts, "$last_ts"]},
                        "head": {"$max": ["$head", seq]},
                        "members": {"$setUnion": ["$members", list(members)]},
                    }
                }
            ],
        )

    async def _duplicate(self, original: Doc) -> AppendResult:
        """The original, once durable: it may have been read before its own append was
        acknowledged, and this majority write is ordered after it, so it waits that out."""
        await self._raise_hint(original["stream"], original["seq"], original["ts"], original["members"])
        return AppendResult(entry=_entry(original), duplicate=True)

    async def read_after(self, stream: str, after: int, limit: int) -> list[StoredEntry]:
        self._check_open()
        if limit <= 0:
            return []
        cursor = self._entries.find(
            {"stream": stream, "seq": {"$gt": after, "$lte": after + limit}},
            _ENTRY_FIELDS,
            sort=[("seq", ASCENDING)],
            limit=limit,
        )
        return [_entry(doc) async for doc in cursor]

    async def read_before(self, stream: str, before: int | None, limit: int) -> list[StoredEntry]:
        self._check_open()
        if limit <= 0:
            return []
        hint = await self._streams.find_one({"_id": stream}, {"head": 1})
        if hint is None:
            return []
        # Entries up to the hint are all there; any above it are few and the sort finds them.
        top = hint["head"] if before is None else min(before - 1, hint["head"])
        seq_range: Doc = {"$gt": top - limit}
        if before is not None:
            seq_range["$lt"] = before
        cursor = self._entries.find(
            {"stream": stream, "seq": seq_range}, _ENTRY_FIELDS, sort=[("seq", DESCENDING)], limit=limit
        )
        return list(reversed([_entry(doc) async for doc in cursor]))

    async def head(self, stream: str) -> StreamHead | None:
        """Exact even when the stored hint trails an interrupted append (see the module docstring)."""
        self._check_open()
        hint = await self._streams.find_one({"_id": stream}, {"epoch": 1, "head": 1, "last_ts": 1})
        if hint is None:
            return None
        head, last_ts = int(hint["head"]), int(hint["last_ts"])
        newer = await self._entries.find_one(
            {"stream": stream, "seq": {"$gt": head}}, {"seq": 1, "ts": 1}, sort=[("seq", DESCENDING)]
        )
        if newer is not None:
            head, last_ts = int(newer["seq"]), int(newer["ts"])
        if head == 0:
            return None
        return StreamHead(stream=stream, epoch=hint["epoch"], head=head, last_ts=last_ts)

    async def streams_of(self, member: str, prefix: str, limit: int) -> list[StreamHead]:
        """As in :class:`storage.base.StreamStore`. ``head`` and ``last_ts`` are the stored
        hints here: they may trail an append that is still in flight (or was interrupted and
        not yet retried) by its entry; :meth:`head` is exact."""
        self._check_open()
        if limit <= 0:
            return []
        cursor = self._streams.find(
            {"members": member, "_id": {"$gte": prefix, "$lt": prefix + _STRING_MAX}},
            {"epoch": 1, "head": 1, "last_ts": 1},
            sort=[("last_ts", DESCENDING), ("_id", ASCENDING)],
            limit=limit,
        )
        return [
            StreamHead(
                stream=doc["_id"], epoch=doc["epoch"], head=int(doc["head"]), last_ts=int(doc["last_ts"])
            )
            async for doc in cursor
        ]

    # ------------------------------------------------------------------ cursors

    async def advance_read(self, stream: str, party: str, seq: int) -> int:
        self._check_open()
        key = {"stream": stream, "party": party}
        try:
            await self._read_positions.update_one(key, {"$max": {"seq": seq}}, upsert=True)
        except DuplicateKeyError:  # a concurrent first advance created it: apply ours to that
            await self._read_positions.update_one(key, {"$max": {"seq": seq}})
        doc = await self._read_positions.find_one(key, {"seq": 1})
        assert doc is not None
        return int(doc["seq"])

    async def read_positions(self, stream: str) -> dict[str, int]:
        self._check_open()
        cursor = self._read_positions.find({"stream": stream}, {"party": 1, "seq": 1})
        return {doc["party"]: int(doc["seq"]) async for doc in cursor}

    async def ack(self, stream: str, user: str, seqs: list[int]) -> None:
        """As in :class:`storage.base.CursorStore`. One document per ``(stream, user)`` holds
        the floor (everything at or below it is acked) and the acked seqs above it; it is
        rewritten with optimistic concurrency on its ``rev``, so concurrent acks merge."""
        self._check_open()
        key = {"stream": stream, "user": user}
        while True:
            state = await self._ack_state.find_one(key)
            floor = 0 if state is None else int(state["floor"])
            above = set() if state is None else set(state["above"])
            new = {s for s in seqs if s > floor} - above
            if not new:
                return
            above |= new
            while floor + 1 in above:
                floor += 1
                above.remove(floor)
            fields = {"floor": floor, "above": sorted(above)}
            if state is None:
                try:
                    await self._ack_state.insert_one({**key, **fields, "rev": 1})
                    return
                except DuplicateKeyError:
                    continue
            result = await self._ack_state.update_one(
                {**key, "rev": state["rev"]}, {"$set": {**fields, "rev": state["rev"] + 1}}
            )
            if result.matched_count == 1:
                return

    async def unacked(self, stream: str, user: str, limit: int) -> list[StoredEntry]:
        self._check_open()
        if limit <= 0:
            return []
        state = await self._ack_state.find_one({"stream": stream, "user": user})
        floor = 0 if state is None else int(state["floor"])
        above: list[int] = [] if state is None else state["above"]
        cursor = self._entries.find(
            # gap-free seqs: the first ``limit`` unacked entries lie within this range
            {"stream": stream, "seq": {"$gt": floor, "$lte": floor + limit + len(above), "$nin": above}},
            _ENTRY_FIELDS,
            sort=[("seq", ASCENDING)],
            limit=limit,
        )
        return [_entry(doc) async for doc in cursor]

    async def count_after(
        self, stream: str, after: int, *, by: str | None = None, not_by: str | None = None
    ) -> int:
        self._check_open()
        query: Doc = {"stream": stream, "seq": {"$gt": after}}
        author: Doc = {}
        if by is not None:
            author["$eq"] = by
        if not_by is not None:
            author["$ne"] = not_by
        if author:
            query["author"] = author
        return await self._entries.count_documents(query)

    # ------------------------------------------------------------------ preferences

    async def muted(self, user: str) -> list[str]:
        self._check_open()
        doc = await self._prefs.find_one({"_id": user})
        return [] if doc is None else list(doc["muted"])

    async def set_muted(self, user: str, categories: list[str]) -> None:
        self._check_open()
        await self._upsert(self._prefs, user, {"muted": sorted(set(categories))})

    # ------------------------------------------------------------------ orders

    async def upsert_order(self, order: OrderRecord) -> OrderRecord:
        self._check_open()
        await self._upsert(
            self._orders,
            order.order_id,
            {
                "shopper_id": order.shopper_id,
                "boutique_id": order.boutique_id,
                "status": order.status,
                "driver_id": order.driver_id,
                "updated_ts": order.updated_ts,
                "pickup": None if order.pickup is None else list(order.pickup),
                "dropoff": None if order.dropoff is None else list(order.dropoff),
            },
        )
        return order

    async def get_order(self, order_id: str) -> OrderRecord | None:
        self._check_open()
        doc = await self._orders.find_one({"_id": order_id})
        return None if doc is None else _order(doc)

    async def orders_for(self, *, field: str, value: str, limit: int) -> list[OrderRecord]:
        if field not in _ORDER_FIELDS:
            raise ValueError(f"cannot list orders by {field!r}")
        self._check_open()
        if limit <= 0:
            return []
        cursor = self._orders.find({field: value}, sort=[("updated_ts", DESCENDING)], limit=limit)
        return [_order(doc) async for doc in cursor]

    async def _upsert(self, collection: AsyncCollection[Doc], _id: str, fields: Doc) -> None:
        """Replace the document ``_id`` with ``fields``, creating it if needed."""
        try:
            await collection.replace_one({"_id": _id}, fields, upsert=True)
        except DuplicateKeyError:  # a concurrent upsert inserted it first: now it is a replace
            await collection.replace_one({"_id": _id}, fields)

    # ------------------------------------------------------------------ inventory

    async def stock(self, boutique_id: str, sku: str) -> StockRecord | None:
        self._check_open()
        doc = await self._stock.find_one({"boutique_id": boutique_id, "sku": sku}, _STOCK_FIELDS)
        return None if doc is None else _stock(doc)

    async def stock_page(
        self, boutique_id: str, *, skus: list[str] | None, after: str | None, limit: int
    ) -> list[StockRecord]:
        self._check_open()
        if limit <= 0:
            return []
        query: Doc = {"boutique_id": boutique_id}
        sku_range: Doc = {}
        if skus is not None:
            sku_range["$in"] = list(skus)
        if after is not None:
            sku_range["$gt"] = after
        if sku_range:
            query["sku"] = sku_range
        cursor = self._stock.find(query, _STOCK_FIELDS, sort=[("sku", ASCENDING)], limit=limit)
        return [_stock(doc) async for doc in cursor]

    async def stock_entry(self, boutique_id: str, event_id: str) -> StoredEntry | None:
        """As in :class:`storage.base.InventoryStore`; a commit of ``event_id`` that was
        interrupted after its compare-and-set is finished first (see the module docstring)."""
        self._check_open()
        return await self._committed_entry(boutique_id, event_id)

    async def _committed_entry(self, boutique_id: str, event_id: str) -> StoredEntry | None:
        """The entry of ``event_id``'s commit, finishing that commit if it is pending.

        Pending first, entry second: see "Stock commits" in the module docstring."""
        pending = await self._stock_local.find_one(
            {"boutique_id": boutique_id, "pending.event_id": event_id}, {"boutique_id": 1, "pending": 1}
        )
        if pending is not None:
            return await self._finish(pending)
        original = await self._entries_local.find_one(
            {"author": _stock_author(boutique_id), "client_id": event_id}
        )
        return None if original is None else (await self._duplicate(original)).entry

    async def _finish(self, doc: Doc) -> StoredEntry:
        """Steps 3 and 4 of the commit pending on stock document ``doc``; any node may repeat them."""
        boutique_id, pending = doc["boutique_id"], doc["pending"]
        result = await self.append(
            inventory(boutique_id),
            author=_stock_author(boutique_id),
            client_id=pending["event_id"],
            payload=bytes(pending["payload"]),
            ts=int(pending["ts"]),
            members=(),
        )
        await self._stock.update_one(
            {"_id": doc["_id"], "pending.event_id": pending["event_id"]}, {"$set": {"pending": None}}
        )
        return result.entry

    async def commit_stock(
        self, record: StockRecord, *, expected_version: int, event_id: str, payload: bytes, ts: int
    ) -> StockCommit:
        """As in :class:`storage.base.InventoryStore`, in the four steps of "Stock commits"
        in the module docstring."""
        if record.version != expected_version + 1:
            raise ValueError(f"version {record.version} does not follow expected version {expected_version}")
        self._check_open()
        claimed = await self._claim(record, expected_version, event_id, payload, ts)
        if isinstance(claimed, StockCommit):
            return claimed
        entry = await self._finish(claimed)
        return StockCommit(outcome="committed", record=_stock(claimed), entry=entry)

    async def _claim(
        self, record: StockRecord, expected_version: int, event_id: str, payload: bytes, ts: int
    ) -> StockCommit | Doc:
        """Steps 1 and 2 of a commit: its outcome when it ends there (duplicate or
        conflict), else the SKU's document as the compare-and-set left it, with this
        commit pending."""
        boutique_id, key = record.boutique_id, {"boutique_id": record.boutique_id, "sku": record.sku}
        inventory(boutique_id)  # refuse an invalid boutique id before anything is written
        original = await self._committed_entry(boutique_id, event_id)
        if original is not None:
            return StockCommit(outcome="duplicate", record=await self._stock_now(key), entry=original)
        fields: Doc = {
            "level": record.level,
            "version": record.version,
            "sources": [[source, version] for source, version in sorted(record.sources.items())],
            "low": record.low,
            "updated_ts": record.updated_ts,
            "pending": {"event_id": event_id, "payload": payload, "ts": ts},
        }
        doc = await self._stock_local.find_one_and_update(
            {**key, "version": expected_version, "pending": None},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            return doc
        if expected_version != 0:
            return await self._lost(key, event_id, own_id=None)
        doc = {"_id": ObjectId(), **key, **fields, "threshold": None, "clear": None}
        try:
            await self._stock.insert_one(doc)
        except DuplicateKeyError:
            return await self._lost(key, event_id, own_id=doc["_id"])
        return doc

    async def _lost(self, key: Doc, event_id: str, *, own_id: ObjectId | None) -> StockCommit:
        """Step 2 matched nothing: finish the commit pending on the SKU, if any, and say why.

        ``own_id`` is the ``_id`` of the document this commit tried to insert: finding it
        stored means a driver retry of that insert lost the reply, and the commit is ours.
        """
        current = await self._stock_local.find_one(key)
        if current is None:
            return StockCommit(outcome="conflict", record=None, entry=None)
        if own_id is not None and current["_id"] == own_id:
            entry = await self._committed_entry(key["boutique_id"], event_id)
            return StockCommit(outcome="committed", record=_stock(current), entry=entry)
        if current.get("pending") is not None:
            entry = await self._finish(current)
            if current["pending"]["event_id"] == event_id:  # the same event, committed by another node
                return StockCommit(outcome="duplicate", record=_stock(current), entry=entry)
        return StockCommit(outcome="conflict", record=_stock(current), entry=None)

    async def _stock_now(self, key: Doc) -> StockRecord | None:
        doc = await self._stock_local.find_one(key, _STOCK_FIELDS)
        return None if doc is None else _stock(doc)

    async def set_threshold(
        self, boutique_id: str, sku: str, low: int | None, clear: int | None
    ) -> StockRecord:
        self._check_open()
        key = {"boutique_id": boutique_id, "sku": sku}
        update: Doc = {"$set": {"threshold": low, "clear": clear}}
        created = {"level": 0, "version": 0, "sources": [], "low": False, "updated_ts": 0, "pending": None}
        try:
            await self._stock.update_one(key, {**update, "$setOnInsert": created}, upsert=True)
        except DuplicateKeyError:  # a concurrent first write created it: now it is an update
            await self._stock.update_one(key, update)
        stored = await self._stock_now(key)
        assert stored is not None
        return stored

    # ------------------------------------------------------------------ wishlists

    async def add_wish(self, user: str, boutique_id: str, sku: str, ts: int) -> None:
        self._check_open()
        with contextlib.suppress(DuplicateKeyError):  # a concurrent add created it: that one stays
            await self._wishes.update_one(
                {"boutique_id": boutique_id, "sku": sku, "user": user},
                {"$setOnInsert": {"added_ts": ts}},
                upsert=True,
            )

    async def remove_wish(self, user: str, boutique_id: str, sku: str) -> None:
        self._check_open()
        await self._wishes.delete_one({"boutique_id": boutique_id, "sku": sku, "user": user})

    async def wishes_of(self, user: str, limit: int) -> list[WishRecord]:
        """As in :class:`storage.base.WishlistStore`; wishes added at the same ts come by
        boutique, then sku."""
        self._check_open()
        if limit <= 0:
            return []
        cursor = self._wishes.find(
            {"user": user},
            {"boutique_id": 1, "sku": 1, "added_ts": 1},
            sort=[("added_ts", DESCENDING), ("boutique_id", ASCENDING), ("sku", ASCENDING)],
            limit=limit,
        )
        return [
            WishRecord(boutique_id=doc["boutique_id"], sku=doc["sku"], added_ts=int(doc["added_ts"]))
            async for doc in cursor
        ]

    async def wishers(self, boutique_id: str, sku: str, *, after: str | None, limit: int) -> list[str]:
        self._check_open()
        if limit <= 0:
            return []
        query: Doc = {"boutique_id": boutique_id, "sku": sku}
        if after is not None:
            query["user"] = {"$gt": after}
        cursor = self._wishes.find(query, {"user": 1}, sort=[("user", ASCENDING)], limit=limit)
        return [doc["user"] async for doc in cursor]

    # ------------------------------------------------------------------ tracks and places

    async def add_track_point(self, order_id: str, point: TrackPointRecord) -> None:
        self._check_open()
        with contextlib.suppress(DuplicateKeyError):  # a point at this ts is stored: it stays
            await self._track_points.insert_one(
                {"order_id": order_id, "ts": point.ts, "lat": point.lat, "lon": point.lon}
            )

    async def track_points(self, order_id: str, limit: int) -> list[TrackPointRecord]:
        self._check_open()
        if limit <= 0:
            return []
        cursor = self._track_points.find(
            {"order_id": order_id}, {"ts": 1, "lat": 1, "lon": 1}, sort=[("ts", ASCENDING)], limit=limit
        )
        return [
            TrackPointRecord(ts=int(doc["ts"]), lat=float(doc["lat"]), lon=float(doc["lon"]))
            async for doc in cursor
        ]

    async def set_boutique_location(self, boutique_id: str, location: LatLon) -> None:
        self._check_open()
        await self._upsert(self._places, boutique_id, {"lat": location[0], "lon": location[1]})

    async def boutique_location(self, boutique_id: str) -> LatLon | None:
        self._check_open()
        doc = await self._places.find_one({"_id": boutique_id})
        return None if doc is None else (float(doc["lat"]), float(doc["lon"]))

    # ------------------------------------------------------------------ event ledger

    async def seen(self, event_id: str) -> bool:
        self._check_open()
        return await self._events.find_one({"_id": event_id}, {"_id": 1}) is not None

    async def mark_seen(self, event_id: str, ts: int) -> bool:
        self._check_open()
        try:
            await self._events.insert_one({"_id": event_id, "ts": ts})
        except DuplicateKeyError:
            return False
        return True

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> None:
        """Raise when the server does not answer within :data:`PING_TIMEOUT` seconds."""
        self._check_open()
        with pymongo.timeout(PING_TIMEOUT):
            await self._client.admin.command("ping")

    async def close(self) -> None:
        """Release the connections; waits at most :data:`CLOSE_TIMEOUT` seconds for the server."""
        if self._closed:
            return
        self._closed = True
        with pymongo.timeout(CLOSE_TIMEOUT):
            await self._client.close()
