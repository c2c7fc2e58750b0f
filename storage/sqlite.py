"""The embedded default store: one SQLite file in WAL mode.

All writes run on one dedicated thread, so seq assignment is atomic and the event
loop never blocks on disk. Each write is one atomic unit (a savepoint); the writes
that queue up while a commit is in flight are committed together by the next one
(group commit, :mod:`storage.group_commit`), and each caller hears back only after
the commit that made its write durable. Reads run on a second thread with their own
connection (WAL lets them proceed while a write is in flight). ``synchronous=FULL``
makes every committed write survive power loss, which is what "ack after the
durable write" requires. ``commit_stock`` is one such unit: the event id check, the
version check, the SKU's new state and its inventory stream entry commit together
or not at all.

A database file written by an earlier version opens as it is: tables it lacks are
created, and columns added since (:data:`_ADDED_COLUMNS`) are added on open.

Guarantees: see :mod:`storage.base`. SQLite is single-node: several hub processes
must not share one file; use MongoDB for that.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
from storage.group_commit import GroupCommitter, unit_of_work

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT PRIMARY KEY,
    epoch    TEXT NOT NULL,
    head     INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    stream    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    author    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS entries_author_client ON entries (author, client_id);
CREATE TABLE IF NOT EXISTS stream_members (
    member TEXT NOT NULL,
    stream TEXT NOT NULL,
    PRIMARY KEY (member, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_positions (
    stream TEXT NOT NULL,
    party  TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (stream, party)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    stream TEXT NOT NULL,
    user   TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (stream, user, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ack_floors (
    stream TEXT NOT NULL,
    user   TEXT NOT NULL,
    floor  INTEGER NOT NULL,
    PRIMARY KEY (stream, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prefs (
    user  TEXT PRIMARY KEY,
    muted TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    shopper_id  TEXT NOT NULL,
    boutique_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    driver_id   TEXT,
    updated_ts  INTEGER NOT NULL,
    pickup_lat  REAL,
    pickup_lon  REAL,
    dropoff_lat REAL,
    dropoff_lon REAL
);
CREATE INDEX IF NOT EXISTS orders_shopper ON orders (shopper_id, updated_ts);
CREATE INDEX IF NOT EXISTS orders_boutique ON orders (boutique_id, updated_ts);
CREATE INDEX IF NOT EXISTS orders_driver ON orders (driver_id, updated_ts);
CREATE TABLE IF NOT EXISTS events_seen (
    event_id TEXT PRIMARY KEY,
    ts       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stock (
    boutique_id TEXT NOT NULL,
    sku         TEXT NOT NULL,
    level       INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    sources     TEXT NOT NULL,
    low         INTEGER NOT NULL,
    threshold   INTEGER,
    clear       INTEGER,
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (boutique_id, sku)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wishes (
    boutique_id TEXT NOT NULL,
    sku         TEXT NOT NULL,
    user        TEXT NOT NULL,
    added_ts    INTEGER NOT NULL,
    PRIMARY KEY (boutique_id, sku, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wishes_user ON wishes (user, added_ts);
CREATE TABLE IF NOT EXISTS track_points (
    order_id TEXT NOT NULL,
    ts       INTEGER NOT NULL,
    lat      REAL NOT NULL,
    lon      REAL NOT NULL,
    PRIMARY KEY (order_id, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS places (
    boutique_id TEXT PRIMARY KEY,
    lat         REAL NOT NULL,
    lon         REAL NOT NULL
);
"""

_ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "orders": [
        ("pickup_lat", "REAL"),
        ("pickup_lon", "REAL"),
        ("dropoff_lat", "REAL"),
        ("dropoff_lon", "REAL"),
    ],
}
"""Columns added to a table after its first release: a database created by an older
version lacks them until :func:`_migrate` adds them (as NULL) on open."""

_ORDER_COLUMNS = (
    "order_id, shopper_id, boutique_id, status, driver_id, updated_ts, "
    "pickup_lat, pickup_lon, dropoff_lat, dropoff_lon"
)
_STOCK_COLUMNS = "boutique_id, sku, level, version, sources, low, threshold, clear, updated_ts"

_ORDER_FIELDS = frozenset({"shopper_id", "boutique_id", "driver_id"})


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns of :data:`_ADDED_COLUMNS` that the database lacks. Idempotent."""
    with unit_of_work(conn):
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _entry(stream: str, epoch: str, row: tuple[int, int, str, str, bytes]) -> StoredEntry:
    seq, ts, author, client_id, payload = row
    return StoredEntry(
        stream=stream, seq=seq, epoch=epoch, ts=ts, author=author, client_id=client_id, payload=bytes(payload)
    )


class SqliteStore:
    """SQLite implementation of :class:`storage.base.Store`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write")
        self._group_commit = GroupCommitter(self._writer_pool, lambda: self._w)
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._closed = False
        self._closing = False
        """Set when :meth:`close` begins: new writes are refused, queued ones are committed."""

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Open (creating the file, its directory and the schema if needed) the database at ``path``."""
        store = cls(path)
        await store._start()
        return store

    async def _start(self) -> None:
        def init_writer() -> None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self._path)
            self._writer.executescript(_SCHEMA)
            _migrate(self._writer)

        await asyncio.get_running_loop().run_in_executor(self._writer_pool, init_writer)
        if self._path == ":memory:":
            # A private in-memory database is only visible to its own connection.
            self._reader_pool.shutdown(wait=False)
            self._reader_pool = self._writer_pool
            self._reader = self._writer
            return

        def init_reader() -> None:
            self._reader = _connect(self._path)

        await self._run_read(init_reader)

    async def _run_write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` atomically in the next group commit; refused once :meth:`close` has begun."""
        if self._closed or self._closing:
            raise RuntimeError("store is closed")
        return await self._group_commit.run(fn)

    async def _run_read(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn)

    @property
    def _w(self) -> sqlite3.Connection:
        assert self._writer is not None
        return self._writer

    @property
    def _r(self) -> sqlite3.Connection:
        assert self._reader is not None
        return self._reader

    # ------------------------------------------------------------------ streams

    async def append(
        self, stream: str, *, author: str, client_id: str, payload: bytes, ts: int, members: tuple[str, ...]
    ) -> AppendResult:
        def run() -> AppendResult:
            conn = self._w
            with unit_of_work(conn):
                existing = _find_entry(conn, author, client_id)
                if existing is not None:
                    return AppendResult(entry=existing, duplicate=True)
                entry = _insert_entry(
                    conn, stream, author=author, client_id=client_id, payload=payload, ts=ts, members=members
                )
            return AppendResult(entry=entry, duplicate=False)

        return await self._run_write(run)

    def _epoch(self, conn: sqlite3.Connection, stream: str) -> str | None:
        row = conn.execute("SELECT epoch FROM streams WHERE stream = ?", (stream,)).fetchone()
        return None if row is None else str(row[0])

    async def read_after(self, stream: str, after: int, limit: int) -> list[StoredEntry]:
        def run() -> list[StoredEntry]:
            conn = self._r
            epoch = self._epoch(conn, stream)
            if epoch is None:
                return []
            rows = conn.execute(
                "SELECT seq, ts, author, client_id, payload FROM entries "
                "WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (stream, after, limit),
            ).fetchall()
            return [_entry(stream, epoch, r) for r in rows]

        return await self._run_read(run)

    async def read_before(self, stream: str, before: int | None, limit: int) -> list[StoredEntry]:
        def run() -> list[StoredEntry]:
            conn = self._r
            epoch = self._epoch(conn, stream)
            if epoch is None:
                return []
            bound = before if before is not None else 2**62
            rows = conn.execute(
                "SELECT seq, ts, author, client_id, payload FROM entries "
                "WHERE stream = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (stream, bound, limit),
            ).fetchall()
            return [_entry(stream, epoch, r) for r in reversed(rows)]

        return await self._run_read(run)

    async def head(self, stream: str) -> StreamHead | None:
        def run() -> StreamHead | None:
            row = self._r.execute(
                "SELECT epoch, head, last_ts FROM streams WHERE stream = ?", (stream,)
            ).fetchone()
            if row is None:
                return None
            return StreamHead(stream=stream, epoch=row[0], head=row[1], last_ts=row[2])

        return await self._run_read(run)

    async def streams_of(self, member: str, prefix: str, limit: int) -> list[StreamHead]:
        def run() -> list[StreamHead]:
            rows = self._r.execute(
                "SELECT s.stream, s.epoch, s.head, s.last_ts FROM stream_members m "
                "JOIN streams s ON s.stream = m.stream "
                "WHERE m.member = ? AND m.stream >= ? AND m.stream < ? "
                "ORDER BY s.last_ts DESC LIMIT ?",
                (member, prefix, prefix + "\U0010ffff", limit),
            ).fetchall()
            return [StreamHead(stream=r[0], epoch=r[1], head=r[2], last_ts=r[3]) for r in rows]

        return await self._run_read(run)

    # ------------------------------------------------------------------ cursors

    async def advance_read(self, stream: str, party: str, seq: int) -> int:
        def run() -> int:
            conn = self._w
            conn.execute(
                "INSERT INTO read_positions (stream, party, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (stream, party) DO UPDATE SET seq = max(seq, excluded.seq)",
                (stream, party, seq),
            )
            row = conn.execute(
                "SELECT seq FROM read_positions WHERE stream = ? AND party = ?", (stream, party)
            ).fetchone()
            return int(row[0])

        return await self._run_write(run)

    async def read_positions(self, stream: str) -> dict[str, int]:
        def run() -> dict[str, int]:
            rows = self._r.execute(
                "SELECT party, seq FROM read_positions WHERE stream = ?", (stream,)
            ).fetchall()
            return {str(p): int(s) for p, s in rows}

        return await self._run_read(run)

    async def ack(self, stream: str, user: str, seqs: list[int]) -> None:
        def run() -> None:
            conn = self._w
            with unit_of_work(conn):
                row = conn.execute(
                    "SELECT floor FROM ack_floors WHERE stream = ? AND user = ?", (stream, user)
                ).fetchone()
                floor = 0 if row is None else int(row[0])
                conn.executemany(
                    "INSERT OR IGNORE INTO acks (stream, user, seq) VALUES (?, ?, ?)",
                    [(stream, user, s) for s in set(seqs) if s > floor],
                )
                # Advance the floor over the contiguous acked run so unacked() stays an index range scan.
                while conn.execute(
                    "SELECT 1 FROM acks WHERE stream = ? AND user = ? AND seq = ?", (stream, user, floor + 1)
                ).fetchone():
                    floor += 1
                conn.execute(
                    "DELETE FROM acks WHERE stream = ? AND user = ? AND seq <= ?", (stream, user, floor)
                )
                conn.execute(
                    "INSERT INTO ack_floors (stream, user, floor) VALUES (?, ?, ?) "
                    "ON CONFLICT (stream, user) DO UPDATE SET floor = excluded.floor",
                    (stream, user, floor),
                )

        await self._run_write(run)

    async def unacked(self, stream: str, user: str, limit: int) -> list[StoredEntry]:
        def run() -> list[StoredEntry]:
            conn = self._r
            epoch = self._epoch(conn, stream)
            if epoch is None:
                return []
            row = conn.execute(
                "SELECT floor FROM ack_floors WHERE stream = ? AND user = ?", (stream, user)
            ).fetchone()
            floor = 0 if row is None else int(row[0])
            rows = conn.execute(
                "SELECT e.seq, e.ts, e.author, e.client_id, e.payload FROM entries e "
                "WHERE e.stream = ? AND e.seq > ? AND NOT EXISTS ("
                "  SELECT 1 FROM acks a WHERE a.stream = e.stream AND a.user = ? AND a.seq = e.seq) "
                "ORDER BY e.seq LIMIT ?",
                (stream, floor, user, limit),
            ).fetchall()
            return [_entry(stream, epoch, r) for r in rows]

        return await self._run_read(run)

    async def count_after(
        self, stream: str, after: int, *, by: str | None = None, not_by: str | None = None
    ) -> int:
        sql = "SELECT count(*) FROM entries WHERE stream = ? AND seq > ?"
        args: list[object] = [stream, after]
        if by is not None:
            sql += " AND author = ?"
            args.append(by)
        if not_by is not None:
            sql += " AND author != ?"
            args.append(not_by)

        def run() -> int:
            return int(self._r.execute(sql, args).fetchone()[0])

        return await self._run_read(run)

    # ------------------------------------------------------------------ preferences

    async def muted(self, user: str) -> list[str]:
        def run() -> list[str]:
            row = self._r.execute("SELECT muted FROM prefs WHERE user = ?", (user,)).fetchone()
            return [] if row is None or not row[0] else str(row[0]).split(",")

        return await self._run_read(run)

    async def set_muted(self, user: str, categories: list[str]) -> None:
        def run() -> None:
            self._w.execute(
                "INSERT INTO prefs (user, muted) VALUES (?, ?) "
                "ON CONFLICT (user) DO UPDATE SET muted = excluded.muted",
                (user, ",".join(sorted(set(categories)))),
            )

        await self._run_write(run)

    # ------------------------------------------------------------------ orders

    async def upsert_order(self, order: OrderRecord) -> OrderRecord:
        def run() -> OrderRecord:
            self._w.execute(
                "INSERT INTO orders (order_id, shopper_id, boutique_id, status, driver_id, updated_ts, "
                "pickup_lat, pickup_lon, dropoff_lat, dropoff_lon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (order_id) DO UPDATE SET "
                "shopper_id = excluded.shopper_id, boutique_id = excluded.boutique_id, "
                "status = excluded.status, driver_id = excluded.driver_id, updated_ts = excluded.updated_ts, "
                "pickup_lat = excluded.pickup_lat, pickup_lon = excluded.pickup_lon, "
                "dropoff_lat = excluded.dropoff_lat, dropoff_lon = excluded.dropoff_lon",
                (
                    order.order_id,
                    order.shopper_id,
                    order.boutique_id,
                    order.status,
                    order.driver_id,
                    order.updated_ts,
                    *_point_columns(order.pickup),
                    *_point_columns(order.dropoff),
                ),
            )
            return order

        return await self._run_write(run)

    async def get_order(self, order_id: str) -> OrderRecord | None:
        def run() -> OrderRecord | None:
            row = self._r.execute(
                f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = ?",  # noqa: S608 - constant columns
                (order_id,),
            ).fetchone()
            return None if row is None else _order(row)

        return await self._run_read(run)

    async def orders_for(self, *, field: str, value: str, limit: int) -> list[OrderRecord]:
        if field not in _ORDER_FIELDS:
            raise ValueError(f"cannot list orders by {field!r}")

        def run() -> list[OrderRecord]:
            rows = self._r.execute(
                f"SELECT {_ORDER_COLUMNS} FROM orders "  # noqa: S608 - field is allow-listed
                f"WHERE {field} = ? ORDER BY updated_ts DESC LIMIT ?",
                (value, limit),
            ).fetchall()
            return [_order(r) for r in rows]

        return await self._run_read(run)

    # ------------------------------------------------------------------ inventory

    async def stock(self, boutique_id: str, sku: str) -> StockRecord | None:
        return await self._run_read(lambda: _stock_row(self._r, boutique_id, sku))

    async def stock_page(
        self, boutique_id: str, *, skus: list[str] | None, after: str | None, limit: int
    ) -> list[StockRecord]:
        sql = f"SELECT {_STOCK_COLUMNS} FROM stock WHERE boutique_id = ?"  # noqa: S608 - constant columns
        args: list[object] = [boutique_id]
        if skus is not None:
            sql += " AND sku IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(skus))
        if after is not None:
            sql += " AND sku > ?"
            args.append(after)
        sql += " ORDER BY sku LIMIT ?"
        args.append(limit)

        def run() -> list[StockRecord]:
            return [_stock(r) for r in self._r.execute(sql, args).fetchall()]

        return await self._run_read(run)

    async def stock_entry(self, boutique_id: str, event_id: str) -> StoredEntry | None:
        return await self._run_read(lambda: _find_entry(self._r, _stock_author(boutique_id), event_id))

    async def commit_stock(
        self, record: StockRecord, *, expected_version: int, event_id: str, payload: bytes, ts: int
    ) -> StockCommit:
        """As in :class:`storage.base.InventoryStore`: one atomic unit checks the event id,
        then the version, then writes the state and the entry."""
        if record.version != expected_version + 1:
            raise ValueError(f"version {record.version} does not follow expected version {expected_version}")
        b, sku = record.boutique_id, record.sku
        stream, author = inventory(b), _stock_author(b)

        def run() -> StockCommit:
            conn = self._w
            with unit_of_work(conn):
                original = _find_entry(conn, author, event_id)
                current = _stock_row(conn, b, sku)
                if original is not None:
                    return StockCommit(outcome="duplicate", record=current, entry=original)
                if (0 if current is None else current.version) != expected_version:
                    return StockCommit(outcome="conflict", record=current, entry=None)
                conn.execute(
                    "INSERT INTO stock (boutique_id, sku, level, version, sources, low, updated_ts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (boutique_id, sku) DO UPDATE SET level = excluded.level, "
                    "version = excluded.version, sources = excluded.sources, low = excluded.low, "
                    "updated_ts = excluded.updated_ts",
                    (
                        b,
                        sku,
                        record.level,
                        record.version,
                        json.dumps(record.sources),
                        record.low,
                        record.updated_ts,
                    ),
                )
                entry = _insert_entry(
                    conn, stream, author=author, client_id=event_id, payload=payload, ts=ts, members=()
                )
                stored = _stock_row(conn, b, sku)
            return StockCommit(outcome="committed", record=stored, entry=entry)

        return await self._run_write(run)

    async def set_threshold(
        self, boutique_id: str, sku: str, low: int | None, clear: int | None
    ) -> StockRecord:
        def run() -> StockRecord:
            conn = self._w
            with unit_of_work(conn):
                conn.execute(
                    f"INSERT INTO stock ({_STOCK_COLUMNS}) "  # noqa: S608 - constant columns
                    "VALUES (?, ?, 0, 0, '{}', 0, ?, ?, 0) "
                    "ON CONFLICT (boutique_id, sku) DO UPDATE SET "
                    "threshold = excluded.threshold, clear = excluded.clear",
                    (boutique_id, sku, low, clear),
                )
                stored = _stock_row(conn, boutique_id, sku)
            assert stored is not None
            return stored

        return await self._run_write(run)

    # ------------------------------------------------------------------ wishlists

    async def add_wish(self, user: str, boutique_id: str, sku: str, ts: int) -> None:
        def run() -> None:
            self._w.execute(
                "INSERT OR IGNORE INTO wishes (boutique_id, sku, user, added_ts) VALUES (?, ?, ?, ?)",
                (boutique_id, sku, user, ts),
            )

        await self._run_write(run)

    async def remove_wish(self, user: str, boutique_id: str, sku: str) -> None:
        def run() -> None:
            self._w.execute(
                "DELETE FROM wishes WHERE boutique_id = ? AND sku = ? AND user = ?", (boutique_id, sku, user)
            )

        await self._run_write(run)

    async def wishes_of(self, user: str, limit: int) -> list[WishRecord]:
        """As in :class:`storage.base.WishlistStore`; wishes added at the same ts come by
        boutique, then sku."""

        def run() -> list[WishRecord]:
            rows = self._r.execute(
                "SELECT boutique_id, sku, added_ts FROM wishes WHERE user = ? "
                "ORDER BY added_ts DESC, boutique_id, sku LIMIT ?",
                (user, limit),
            ).fetchall()
            return [WishRecord(boutique_id=r[0], sku=r[1], added_ts=r[2]) for r in rows]

        return await self._run_read(run)

    async def wishers(self, boutique_id: str, sku: str, *, after: str | None, limit: int) -> list[str]:
        def run() -> list[str]:
            rows = self._r.execute(
                "SELECT user FROM wishes WHERE boutique_id = ? AND sku = ? AND user > ? "
                "ORDER BY user LIMIT ?",
                (boutique_id, sku, after if after is not None else "", limit),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run_read(run)

    # ------------------------------------------------------------------ tracks and places

    async def add_track_point(self, order_id: str, point: TrackPointRecord) -> None:
        def run() -> None:
            self._w.execute(
                "INSERT OR IGNORE INTO track_points (order_id, ts, lat, lon) VALUES (?, ?, ?, ?)",
                (order_id, point.ts, point.lat, point.lon),
            )

        await self._run_write(run)

    async def track_points(self, order_id: str, limit: int) -> list[TrackPointRecord]:
        def run() -> list[TrackPointRecord]:
            rows = self._r.execute(
                "SELECT ts, lat, lon FROM track_points WHERE order_id = ? ORDER BY ts LIMIT ?",
                (order_id, limit),
            ).fetchall()
            return [TrackPointRecord(ts=r[0], lat=r[1], lon=r[2]) for r in rows]

        return await self._run_read(run)

    async def set_boutique_location(self, boutique_id: str, location: LatLon) -> None:
        def run() -> None:
            self._w.execute(
                "INSERT INTO places (boutique_id, lat, lon) VALUES (?, ?, ?) "
                "ON CONFLICT (boutique_id) DO UPDATE SET lat = excluded.lat, lon = excluded.lon",
                (boutique_id, location[0], location[1]),
            )

        await self._run_write(run)

    async def boutique_location(self, boutique_id: str) -> LatLon | None:
        def run() -> LatLon | None:
            row = self._r.execute(
                "SELECT lat, lon FROM places WHERE boutique_id = ?", (boutique_id,)
            ).fetchone()
            return None if row is None else (float(row[0]), float(row[1]))

        return await self._run_read(run)

    # ------------------------------------------------------------------ event ledger

    async def seen(self, event_id: str) -> bool:
        def run() -> bool:
            return (
                self._r.execute("SELECT 1 FROM events_seen WHERE event_id = ?", (event_id,)).fetchone()
                is not None
            )

        return await self._run_read(run)

    async def mark_seen(self, event_id: str, ts: int) -> bool:
        def run() -> bool:
            cur = self._w.execute(
                "INSERT OR IGNORE INTO events_seen (event_id, ts) VALUES (?, ?)", (event_id, ts)
            )
            return cur.rowcount == 1

        return await self._run_write(run)

    # ------------------------------------------------------------------ lifecycle

    async def ping(self) -> None:
        await self._run_read(lambda: self._r.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed or self._closing:
            return
        self._closing = True

        def close_writer() -> None:
            if self._writer is not None:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._writer.close()

        def close_reader() -> None:
            if self._reader is not None and self._reader is not self._writer:
                self._reader.close()

        await self._group_commit.drain()
        await self._run_read(close_reader)
        await asyncio.get_running_loop().run_in_executor(self._writer_pool, close_writer)
        self._closed = True
        # Both connections are closed and no work is queued: the idle threads exit on their own.
        self._writer_pool.shutdown(wait=False)
        self._reader_pool.shutdown(wait=False)


def _find_entry(conn: sqlite3.Connection, author: str, client_id: str) -> StoredEntry | None:
    """The entry stored under ``(author, client_id)``, if any."""
    row = conn.execute(
        "SELECT e.stream, e.seq, e.ts, e.author, e.client_id, e.payload, s.epoch "
        "FROM entries e JOIN streams s ON s.stream = e.stream "
        "WHERE e.author = ? AND e.client_id = ?",
        (author, client_id),
    ).fetchone()
    return None if row is None else _entry(row[0], row[6], row[1:6])


def _insert_entry(
    conn: sqlite3.Connection,
    stream: str,
    *,
    author: str,
    client_id: str,
    payload: bytes,
    ts: int,
    members: tuple[str, ...],
) -> StoredEntry:
    """Append a new entry at ``head + 1`` (creating the stream and its epoch on its first entry).

    Runs inside the caller's open write transaction, which must have checked that
    ``(author, client_id)`` is not stored yet.
    """
    row = conn.execute("SELECT epoch, head FROM streams WHERE stream = ?", (stream,)).fetchone()
    if row is None:
        epoch, seq = str(ULID()), 1
        conn.execute(
            "INSERT INTO streams (stream, epoch, head, last_ts) VALUES (?, ?, 1, ?)",
            (stream, epoch, ts),
        )
    else:
        epoch, seq = row[0], row[1] + 1
        conn.execute("UPDATE streams SET head = ?, last_ts = ? WHERE stream = ?", (seq, ts, stream))
    conn.execute(
        "INSERT INTO entries (stream, seq, ts, author, client_id, payload) VALUES (?, ?, ?, ?, ?, ?)",
        (stream, seq, ts, author, client_id, payload),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO stream_members (member, stream) VALUES (?, ?)",
        [(member, stream) for member in members],
    )
    return StoredEntry(
        stream=stream, seq=seq, epoch=epoch, ts=ts, author=author, client_id=client_id, payload=payload
    )


def _stock_author(boutique_id: str) -> str:
    """The author of the boutique's inventory stream entries; their client id is the event id."""
    return f"stock:{boutique_id}"


def _stock_row(conn: sqlite3.Connection, boutique_id: str, sku: str) -> StockRecord | None:
    row = conn.execute(
        f"SELECT {_STOCK_COLUMNS} FROM stock WHERE boutique_id = ? AND sku = ?",  # noqa: S608 - constant columns
        (boutique_id, sku),
    ).fetchone()
    return None if row is None else _stock(row)


def _stock(row: tuple[Any, ...]) -> StockRecord:
    return StockRecord(
        boutique_id=row[0],
        sku=row[1],
        level=row[2],
        version=row[3],
        sources={str(k): int(v) for k, v in json.loads(row[4]).items()},
        low=bool(row[5]),
        threshold=row[6],
        clear=row[7],
        updated_ts=row[8],
    )


def _point_columns(point: LatLon | None) -> tuple[float | None, float | None]:
    return (None, None) if point is None else (point[0], point[1])


def _point(lat: float | None, lon: float | None) -> LatLon | None:
    return None if lat is None or lon is None else (float(lat), float(lon))


def _order(row: tuple[Any, ...]) -> OrderRecord:
    return OrderRecord(
        order_id=row[0],
        shopper_id=row[1],
        boutique_id=row[2],
        status=row[3],
        driver_id=row[4],
        updated_ts=row[5],
        pickup=_point(row[6], row[7]),
        dropoff=_point(row[8], row[9]),
    )
