"""The gateway's durable, bounded outbox of events for the hub, and each sensor's memory.

Guarantees:

- Durability: every call that changes the outbox is one SQLite transaction (WAL,
  ``synchronous=FULL``) committed before the call returns. Killing the process at any
  point (kill -9, power loss) loses nothing a call returned for and leaves no half of
  a change: a ``put_*`` stores its event and the sensor's memory together or not at all.
- Order: pending items are peeked in the order they were put (``id`` order; ids are
  never reused).
- An item leaves the pending table only by :meth:`Outbox.remove` (the hub acknowledged
  it), :meth:`Outbox.reject` (the hub refused the request itself; it moves to the dead
  letters) or the full-outbox policy below.
- One writer: :meth:`Outbox.open` holds an exclusive ``flock`` on ``<path>.lock`` until
  :meth:`Outbox.close`, so a second gateway configured with the same file fails at start
  instead of interleaving versions and deliveries. :func:`read_status` takes no lock.
- Failures: a SQLite error while the outbox is open (disk full, I/O error) raises
  :class:`OutboxError` naming the file, with the change rolled back as a whole.
- Versions: each stock event carries a source version from a persistent counter that
  strictly rises for the life of the file, across restarts. The counter never falls
  behind the wall clock in milliseconds, so a gateway whose outbox file was lost or
  replaced still sends versions newer than the ones the hub has seen (unless the clock
  went back), instead of having them ignored as stale.
- Bound: while ``max_events`` or more items are pending, a put first coalesces: every
  pending stock event with a newer pending stock event for the same SKU is deleted,
  and every health event with a newer one for the same sensor (both counted as
  ``coalesced``). The survivors keep their order and the latest state of every SKU
  and every sensor is kept. If that frees no room, the oldest health events are
  dropped (counted as ``dropped``). Stock events are never dropped, so the depth stays
  below ``max(max_events, distinct SKUs + 1)``; the gateway config's
  ``max_events >= 2 * sensors`` makes that ``max_events``.
- The event loop never blocks on disk: all SQLite work runs on one dedicated thread,
  one call at a time, over one connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self, TypeVar

import msgspec
from ulid import ULID

from edge.sensors import SensorMemory
from protocol.messages import MAX_HEALTH_DETAIL_CHARS, DeviceHealthReport, StockSet

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemKind = Literal["stock", "health"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    event_id   TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL,
    created_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_kind_key ON pending (kind, key, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_ts  REAL NOT NULL,
    rejected_ts REAL NOT NULL,
    error       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sensors (
    key        TEXT PRIMARY KEY,
    sku        TEXT NOT NULL,
    level      INTEGER,
    health     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    updated_ts REAL NOT NULL,
    pending    INTEGER
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS uplink (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_ok_ts      REAL,
    last_attempt_ts REAL,
    last_error      TEXT,
    last_error_ts   REAL
);
INSERT OR IGNORE INTO uplink (id) VALUES (1);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('version', 0), ('created', 0), ('delivered', 0), ('coalesced', 0), ('dropped', 0), ('rejected', 0),
    ('duplicate', 0), ('stale', 0);
"""


class OutboxError(Exception):
    """An outbox file that cannot be used: missing (for a reader), not an outbox, another
    boutique's, in use by another gateway, or failing to write (disk full, I/O error)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A pending event: ``payload`` is the JSON of a ``StockSet`` or a ``DeviceHealthReport``."""

    id: int
    kind: ItemKind
    event_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SensorStatus:
    """What the outbox remembers of one sensor (``key`` is ``shelf/sensor``)."""

    key: str
    sku: str
    level: int | None
    health: str
    detail: str
    updated_ts: float
    """Unix seconds of the last put for this sensor."""


@dataclass(frozen=True, slots=True)
class OutboxTotals:
    """Events counted since the file was created."""

    created: int
    delivered: int
    """Removed after the hub's ack."""
    coalesced: int
    """Deleted while full because a newer event for the same SKU or sensor was pending."""
    dropped: int
    """Health events deleted while full after coalescing freed no room."""
    rejected: int
    """Moved to the dead letters because the hub refused the request itself."""
    duplicate: int = 0
    """Delivered stock events the hub had already applied (a resend after a lost ack)."""
    stale: int = 0
    """Delivered stock events the hub ignored: their version was not newer than the last it
    applied from this gateway for the SKU (e.g. the outbox file was replaced and the clock
    went back)."""


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """A consistent snapshot of the outbox (one read transaction). Times are Unix seconds."""

    boutique: str
    depth: int
    stock_depth: int
    health_depth: int
    oldest_age_s: float | None
    """Age of the oldest pending event; None when nothing is pending."""
    last_ok_ts: float | None
    last_attempt_ts: float | None
    last_error: str | None
    last_error_ts: float | None
    totals: OutboxTotals
    dead_letters: int
    sensors: list[SensorStatus]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back if the
    block or the commit raises. That error propagates, also when SQLite already rolled back
    by itself (disk full)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback:
                log.error("outbox: cannot roll back after %r: %s", exc, rollback)
        raise


def _lock(path: Path) -> int:
    """Take the exclusive, non-blocking ``flock`` on ``<path>.lock`` and write our pid into it;
    returns the lock file's descriptor (closing it releases the lock).

    Raises:
        OutboxError: another process (or another :class:`Outbox` here) holds the lock.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutboxError(f"cannot create the outbox lock file {lock_path}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise OutboxError(
            f"outbox {path} is in use by another gateway{pid}: "
            "stop it, or give this gateway its own outbox.path"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _bump(conn: sqlite3.Connection, name: str, by: int) -> None:
    if by:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))


def _encode_checked(event: StockSet | DeviceHealthReport) -> bytes:
    """The event's JSON, after checking it against the protocol's constraints.

    Raises:
        ValueError: a field the hub would refuse (an id off its pattern, a negative level...).
    """
    raw = msgspec.json.encode(event)
    try:
        msgspec.json.decode(raw, type=type(event), strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a valid {type(event).__name__}: {exc}") from None
    return raw


def _read_status(conn: sqlite3.Connection, now: float) -> OutboxStatus:
    conn.execute("BEGIN")
    try:
        boutique = conn.execute("SELECT value FROM meta WHERE name = 'boutique'").fetchone()
        depths = dict(conn.execute("SELECT kind, COUNT(*) FROM pending GROUP BY kind").fetchall())
        oldest = conn.execute("SELECT MIN(created_ts) FROM pending").fetchone()[0]
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        last_ok, last_attempt, last_error, last_error_ts = conn.execute(
            "SELECT last_ok_ts, last_attempt_ts, last_error, last_error_ts FROM uplink"
        ).fetchone()
        dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        sensors = [
            SensorStatus(key=r[0], sku=r[1], level=r[2], health=r[3], detail=r[4], updated_ts=r[5])
            for r in conn.execute(
                "SELECT key, sku, level, health, detail, updated_ts FROM sensors ORDER BY key"
            )
        ]
    finally:
        conn.execute("COMMIT")
    stock, health = int(depths.get("stock", 0)), int(depths.get("health", 0))
    return OutboxStatus(
        boutique=str(boutique[0]) if boutique else "",
        depth=stock + health,
        stock_depth=stock,
        health_depth=health,
        oldest_age_s=None if oldest is None else max(0.0, now - oldest),
        last_ok_ts=last_ok,
        last_attempt_ts=last_attempt,
        last_error=last_error,
        last_error_ts=last_error_ts,
        totals=OutboxTotals(
            created=counters["created"],
            delivered=counters["delivered"],
            coalesced=counters["coalesced"],
            dropped=counters["dropped"],
            rejected=counters["rejected"],
            # Absent from a file no gateway of this version has opened yet.
            duplicate=counters.get("duplicate", 0),
            stale=counters.get("stale", 0),
        ),
        dead_letters=int(dead),
        sensors=sensors,
    )


def read_status(path: Path) -> OutboxStatus:
    """The status of the outbox file at ``path``, read-only and without an event loop
    (for ``soko edge status``, while the gateway may be running).

    Raises:
        OutboxError: no file at ``path``, or it is not an edge outbox (the message names the path).
    """
    if not path.is_file():
        raise OutboxError(
            f"no edge outbox at {path}: check outbox.path in the gateway's config "
            "(the gateway creates the file when it first starts)"
        )
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        return _read_status(conn, time.time())
    except (sqlite3.DatabaseError, TypeError, KeyError) as exc:
        raise OutboxError(f"{path} is not an edge outbox ({exc})") from None
    finally:
        conn.close()


class Outbox:
    """See the module docstring. Methods raise :class:`OutboxError` when SQLite fails (the
    change is rolled back whole) and ``RuntimeError`` once :meth:`close` was called."""

    def __init__(self, path: Path, boutique: str, max_events: int) -> None:
        self.path = path
        self.boutique = boutique
        self.max_events = max_events
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-outbox")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._items = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(cls, path: Path, boutique: str, max_events: int) -> Self:
        """Open the outbox at ``path``, creating the file (and its directory) if needed.

        Raises:
            ValueError: ``max_events`` < 1.
            OutboxError: the file cannot be opened as a database, belongs to another
                boutique (the hub would refuse all its pending events), or is open in
                another gateway.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        outbox = cls(path, boutique, max_events)

        def init() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            outbox._lock_fd = _lock(path)
            try:
                try:
                    conn = _connect(str(path))
                    conn.executescript(_SCHEMA)
                except sqlite3.DatabaseError as exc:
                    raise OutboxError(f"{path} is not a usable edge outbox ({exc})") from None
                outbox._conn = conn
                with _immediate(conn):
                    columns = {row[1] for row in conn.execute("PRAGMA table_info(sensors)")}
                    if "pending" not in columns:  # a file from before sensors remembered it
                        conn.execute("ALTER TABLE sensors ADD COLUMN pending INTEGER")
                    conn.execute(
                        "INSERT OR IGNORE INTO meta (name, value) VALUES ('boutique', ?)", (boutique,)
                    )
                    owner = conn.execute("SELECT value FROM meta WHERE name = 'boutique'").fetchone()[0]
                if owner != boutique:
                    raise OutboxError(
                        f"{path} is the outbox of boutique {owner!r}, not {boutique!r}: "
                        "give this gateway its own outbox.path"
                    )
            except BaseException:
                outbox._release()
                raise

        try:
            await outbox._run(init)
        except BaseException:
            outbox._closed = True
            # Queued behind init, which is still running if open() was cancelled.
            outbox._pool.submit(outbox._release)
            outbox._pool.shutdown(wait=False)
            raise
        return outbox

    def _release(self) -> None:
        """Close the connection and drop the lock (on the worker thread; idempotent)."""
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("outbox is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.Error as exc:
            raise OutboxError(f"edge outbox {self.path}: {exc}") from exc

    @property
    def _c(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------------ puts

    async def put_stock(self, shelf: str, sensor: str, sku: str, level: int) -> str:
        """Queue "``sku`` is at ``level``" and remember it as the sensor's level (clearing its
        remembered pending change, now settled); returns the event id.

        Raises:
            ValueError: the event would not be a valid ``StockSet`` (nothing is stored).
        """
        event_id = str(ULID())

        def run() -> None:
            conn = self._c
            now = time.time()
            with _immediate(conn):
                last = conn.execute("SELECT value FROM counters WHERE name = 'version'").fetchone()[0]
                version = max(last + 1, int(now * 1000))
                conn.execute("UPDATE counters SET value = ? WHERE name = 'version'", (version,))
                payload = _encode_checked(
                    StockSet(
                        event_id=event_id, boutique_id=self.boutique, sku=sku, level=level, version=version
                    )
                )
                self._insert(conn, "stock", sku, event_id, payload, now)
                conn.execute(
                    "INSERT INTO sensors (key, sku, level, health, detail, updated_ts, pending) "
                    "VALUES (?, ?, ?, 'ok', '', ?, NULL) ON CONFLICT (key) DO UPDATE SET "
                    "sku = excluded.sku, level = excluded.level, updated_ts = excluded.updated_ts, "
                    "pending = NULL",
                    (f"{shelf}/{sensor}", sku, level, now),
                )

        await self._run(run)
        self._items.set()
        return event_id

    async def put_health(self, shelf: str, sensor: str, sku: str, state: str, detail: str, ts_ms: int) -> str:
        """Queue a ``DeviceHealthReport`` (``detail`` cut to the protocol's limit) and remember
        ``state``/``detail`` as the sensor's health; returns the event id.

        Raises:
            ValueError: the event would not be a valid ``DeviceHealthReport`` (nothing is stored).
        """
        event_id = str(ULID())
        detail = detail[:MAX_HEALTH_DETAIL_CHARS]
        key = f"{shelf}/{sensor}"

        def run() -> None:
            conn = self._c
            now = time.time()
            payload = _encode_checked(
                DeviceHealthReport(
                    event_id=event_id,
                    boutique_id=self.boutique,
                    shelf=shelf,
                    sensor=sensor,
                    sku=sku,
                    state=state,  # type: ignore[arg-type]  # checked by _encode_checked
                    detail=detail,
                    ts=ts_ms,
                )
            )
            with _immediate(conn):
                self._insert(conn, "health", key, event_id, payload, now)
                conn.execute(
                    "INSERT INTO sensors (key, sku, level, health, detail, updated_ts) "
                    "VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "sku = excluded.sku, health = excluded.health, detail = excluded.detail, "
                    "updated_ts = excluded.updated_ts",
                    (key, sku, state, detail, now),
                )

        await self._run(run)
        self._items.set()
        return event_id

    async def remember_pending(self, shelf: str, sensor: str, sku: str, pending: int | None) -> None:
        """Remember the sensor's unsettled candidate level (None: none), so a restart resumes
        its debounce; the next :meth:`put_stock` for the sensor clears it. Queues nothing."""

        def run() -> None:
            conn = self._c
            with _immediate(conn):
                conn.execute(
                    "INSERT INTO sensors (key, sku, level, health, detail, updated_ts, pending) "
                    "VALUES (?, ?, NULL, 'ok', '', ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "sku = excluded.sku, pending = excluded.pending",
                    (f"{shelf}/{sensor}", sku, time.time(), pending),
                )

        await self._run(run)

    def _insert(
        self, conn: sqlite3.Connection, kind: ItemKind, key: str, event_id: str, payload: bytes, now: float
    ) -> None:
        self._make_room(conn)
        conn.execute(
            "INSERT INTO pending (kind, key, event_id, payload, created_ts) VALUES (?, ?, ?, ?, ?)",
            (kind, key, event_id, payload, now),
        )
        _bump(conn, "created", 1)

    def _make_room(self, conn: sqlite3.Connection) -> None:
        """The full-outbox policy of the module docstring, inside the caller's transaction."""
        depth = conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        if depth < self.max_events:
            return
        coalesced = conn.execute(
            "DELETE FROM pending WHERE EXISTS (SELECT 1 FROM pending AS newer "
            "WHERE newer.kind = pending.kind AND newer.key = pending.key AND newer.id > pending.id)"
        ).rowcount
        _bump(conn, "coalesced", coalesced)
        depth -= coalesced
        dropped = 0
        if depth >= self.max_events:
            dropped = conn.execute(
                "DELETE FROM pending WHERE id IN "
                "(SELECT id FROM pending WHERE kind = 'health' ORDER BY id LIMIT ?)",
                (depth - self.max_events + 1,),
            ).rowcount
            _bump(conn, "dropped", dropped)
        log.warning(
            "outbox full (%d events): coalesced %d superseded events, dropped %d health events; %d remain",
            self.max_events,
            coalesced,
            dropped,
            depth - dropped,
        )

    # ------------------------------------------------------------------ reads

    async def memories(self) -> dict[str, SensorMemory]:
        """Each sensor's last level, health and pending candidate, by ``shelf/sensor``."""

        def run() -> dict[str, SensorMemory]:
            rows = self._c.execute("SELECT key, level, health, pending FROM sensors").fetchall()
            return {
                key: SensorMemory(level=level, health=health, pending=pending)
                for key, level, health, pending in rows
            }

        return await self._run(run)

    async def peek(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` pending items, oldest first; they stay pending."""

        def run() -> list[OutboxItem]:
            rows = self._c.execute(
                "SELECT id, kind, event_id, payload FROM pending ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            return [OutboxItem(id=r[0], kind=r[1], event_id=r[2], payload=bytes(r[3])) for r in rows]

        return await self._run(run)

    async def depth(self) -> int:
        """How many items are pending."""
        return int(await self._run(lambda: self._c.execute("SELECT COUNT(*) FROM pending").fetchone()[0]))

    async def wait_for_items(self) -> None:
        """Return as soon as at least one item is pending (at once if one already is)."""
        while True:
            self._items.clear()
            if await self.depth() > 0:
                return
            await self._items.wait()

    async def status(self) -> OutboxStatus:
        """A snapshot of depth, totals, uplink record and sensor memories."""
        return await self._run(lambda: _read_status(self._c, time.time()))

    # ------------------------------------------------------------------ uplink side

    async def remove(self, ids: Sequence[int], *, duplicate: int = 0, stale: int = 0) -> None:
        """Delete delivered items, and add the hub's ``duplicate``/``stale`` answers among them
        to the totals, in one transaction. Ids no longer pending (coalesced meanwhile) are skipped."""

        def run() -> None:
            conn = self._c
            with _immediate(conn):
                removed = conn.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids]).rowcount
                _bump(conn, "delivered", removed)
                _bump(conn, "duplicate", duplicate)
                _bump(conn, "stale", stale)

        await self._run(run)

    async def reject(self, ids: Sequence[int], error: str) -> None:
        """Move items whose request the hub refused (not their connection or token) to the
        dead letters, with ``error``."""

        def run() -> None:
            conn = self._c
            now = time.time()
            with _immediate(conn):
                conn.executemany(
                    "INSERT INTO dead_letters (id, kind, event_id, payload, created_ts, rejected_ts, error) "
                    "SELECT id, kind, event_id, payload, created_ts, ?, ? FROM pending WHERE id = ?",
                    [(now, error, i) for i in ids],
                )
                moved = conn.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids]).rowcount
                _bump(conn, "rejected", moved)

        await self._run(run)

    async def record_uplink(self, ok: bool, error: str | None = None) -> None:
        """Record an attempt to reach the hub: its time, and either success or ``error``."""

        def run() -> None:
            conn = self._c
            now = time.time()
            with _immediate(conn):
                if ok:
                    conn.execute("UPDATE uplink SET last_attempt_ts = ?, last_ok_ts = ?", (now, now))
                else:
                    conn.execute(
                        "UPDATE uplink SET last_attempt_ts = ?, last_error = ?, last_error_ts = ?",
                        (now, error or "unknown error", now),
                    )

        await self._run(run)

    async def close(self) -> None:
        """Close the file (idempotent). Pending items stay for the next :meth:`open`."""
        if self._closed:
            return

        try:
            await self._run(self._release)
        finally:
            self._closed = True
            self._pool.shutdown(wait=False)
