"""The app's local store: everything the UI shows, readable offline, in one SQLite file.

Guarantees:

- Durability: every method that changes the store is one SQLite transaction (WAL,
  ``synchronous=FULL``) committed before it returns. Killing the process at any point
  loses nothing a call returned for and leaves no half of a change; in particular a
  queued write (:meth:`LocalStore.queue_chat` ...) is in the outbox once the call returns.
- The event loop never blocks on disk: all SQLite work runs on one dedicated worker
  thread, one call at a time, over one connection. Every public method is ``async``.
- One user per file: :meth:`LocalStore.bind` records the first user that signs in;
  another user is refused (:class:`StoreOwnerError`), so one person's outbox is never
  sent with another's token.
- Streams (chat and inbox logs): per stream a cursor ``(epoch, seq)``: every entry
  ``1..seq`` of ``epoch`` is held. Entries above the cursor may also be held (a message of
  ours the hub acknowledged before we saw the entries in between); they are replaced
  when the cursor reaches them. Applying an entry is idempotent by ``(stream, seq)``.
- Outbox: pending writes keep the order they were queued in (``id`` order) and leave
  the outbox only when settled by the hub's ack (:meth:`settle_chat` and friends) or
  refused for good (:meth:`fail`, kept as ``failed`` so the UI can show it).
- Latest values: stock keeps per ``(boutique, sku)`` the highest ``version`` ever seen
  (a lower or equal one changes nothing); a driver position is the newest kept fix per
  order.

Reads return plain frozen dataclasses; writes that the engine performs are public
(the engine is their only caller) and documented as such.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

import msgspec
from ulid import ULID

from protocol.ids import StreamKind, parse_stream
from protocol.messages import (
    MAX_TEXT_CHARS,
    ChatFrame,
    ChatSend,
    ChatSent,
    Conversation,
    DeliveryStep,
    DeliveryUpdate,
    DeliveryUpdated,
    DurableFrame,
    NotificationFrame,
    NotifyReadRequest,
    OrderStatus,
    OrderView,
    PositionFrame,
    ReadFrame,
    ReadRequest,
    StockFrame,
    StockItem,
    StockSnapshot,
    WishlistItem,
    WishlistRequest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

OutboxKind = Literal["chat", "read", "notify_read", "delivery", "wishlist_add", "wishlist_remove"]
"""What an outbox item sends: ``chat.send``, ``chat.read``, ``notify.read``, ``delivery.update``,
``wishlist.add``, ``wishlist.remove``."""
MessageStatus = Literal["sent", "pending", "failed"]
FrameOutcome = Literal["applied", "ignored", "gap", "epoch"]
"""What :meth:`LocalStore.apply_frame` did with a live durable frame: ``applied`` (it was the
next entry), ``ignored`` (already held), ``gap`` (entries are missing before it: catch up),
``epoch`` (another epoch than the cursor's: resync). Nothing is stored for ``gap``/``epoch``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT PRIMARY KEY,
    epoch    TEXT,
    seq      INTEGER NOT NULL DEFAULT 0,
    head     INTEGER NOT NULL DEFAULT 0,
    unread   INTEGER NOT NULL DEFAULT 0,
    read_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    stream      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    epoch       TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    author      TEXT,
    author_role TEXT,
    client_id   TEXT,
    text        TEXT,
    nid         TEXT,
    category    TEXT,
    title       TEXT,
    body        TEXT,
    data        TEXT,
    alert       INTEGER,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id  TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    stream     TEXT,
    order_id   TEXT,
    payload    BLOB NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    error      TEXT,
    created_ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, id);
CREATE TABLE IF NOT EXISTS stock (
    boutique_id TEXT NOT NULL,
    sku         TEXT NOT NULL,
    level       INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    low         INTEGER NOT NULL DEFAULT 0,
    threshold   INTEGER,
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (boutique_id, sku)
);
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    shopper_id  TEXT NOT NULL,
    boutique_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    driver_id   TEXT,
    updated_ts  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (order_id TEXT PRIMARY KEY, frame BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    stream        TEXT PRIMARY KEY,
    head          INTEGER NOT NULL DEFAULT 0,
    last_ts       INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    peer_read_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS wishlist (
    boutique_id TEXT NOT NULL,
    sku         TEXT NOT NULL,
    added_ts    INTEGER NOT NULL,
    level       INTEGER,
    PRIMARY KEY (boutique_id, sku)
);
CREATE TABLE IF NOT EXISTS jobs (
    order_id    TEXT PRIMARY KEY,
    assigned_ts INTEGER NOT NULL,
    step        TEXT,
    step_acked  INTEGER NOT NULL DEFAULT 1,
    acked_step  TEXT,
    failed_step TEXT,
    step_error  TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_JOB_COLUMNS_SINCE_V1 = ("acked_step TEXT", "failed_step TEXT", "step_error TEXT")
"""Columns added to ``jobs`` after its first version; :meth:`LocalStore.open` adds them to older files."""

ENDED_STATUSES = frozenset({"delivered", "cancelled"})
"""Order statuses after which nothing changes and nobody is tracked."""
STATUS_ORDER: tuple[str, ...] = get_args(OrderStatus)
"""Order statuses in the order an order moves through them: ``protocol.messages.OrderStatus``
lists them by the hub's rank (``hub.domains.orders.STATUS_RANK``; a test holds the two equal).
A status is never replaced by one earlier in this order."""
_STATUS_RANK = {status: rank for rank, status in enumerate(STATUS_ORDER)}


class StoreError(Exception):
    """The store file cannot be used: not a store, or failing to write (disk full, I/O error)."""


class StoreOwnerError(StoreError):
    """The store belongs to another user than the one signing in."""


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message as the UI shows it.

    ``status``: ``sent`` (a stream entry, acknowledged by the hub), ``pending`` (in the outbox,
    not yet acknowledged; ``seq`` is None) or ``failed`` (the hub refused it for good; ``error``
    says why). ``mine``: written by the store's user.
    """

    stream: str
    seq: int | None
    ts: int
    author: str
    author_role: str
    client_id: str
    text: str
    status: MessageStatus
    mine: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """One conversation the user holds a copy of.

    ``unread``: messages of the other side after our read mark; ``peer_read_seq``: how far the
    other side has read (read receipts); ``pending``: our messages still in the outbox.
    """

    stream: str
    last_ts: int
    last_text: str | None
    unread: int
    read_seq: int
    peer_read_seq: int
    pending: int


@dataclass(frozen=True, slots=True)
class Notification:
    """One inbox entry. ``read``: at or before the inbox's read mark set by :meth:`LocalStore.queue_read`."""

    stream: str
    seq: int
    ts: int
    id: str
    category: str
    title: str
    body: str
    data: dict[str, Any]
    alert: bool
    read: bool


@dataclass(frozen=True, slots=True)
class StockRow:
    """The latest known state of a SKU (highest ``version`` seen)."""

    boutique_id: str
    sku: str
    level: int
    version: int
    low: bool
    threshold: int | None
    updated_ts: int


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An order as last reported by the hub (``order.list``, ``order.watch``, ``order.updated``)."""

    order_id: str
    shopper_id: str
    boutique_id: str
    status: str
    driver_id: str | None
    updated_ts: int


@dataclass(frozen=True, slots=True)
class Position:
    """The newest kept driver fix of an order (``ts``: device time, ms) and its ETA, if any."""

    order_id: str
    driver_id: str
    lat: float
    lon: float
    accuracy: float
    speed: float | None
    heading: float | None
    ts: int
    eta_seconds: int | None
    eta_distance_m: int | None


@dataclass(frozen=True, slots=True)
class WishlistRow:
    """A wishlisted product. ``pending``: added here and not yet acknowledged by the hub."""

    boutique_id: str
    sku: str
    added_ts: int
    level: int | None
    pending: bool


@dataclass(frozen=True, slots=True)
class Job:
    """A delivery job of the driver.

    ``status``: the order's status at the hub (None until the order itself is known);
    ``step``: the last step the driver took here (``accepted``, ``picked_up``, ``delivered``),
    ``step_pending`` while it is still in the outbox. When the hub refuses a step for good
    (e.g. the order was reassigned), ``step`` goes back to the last step the hub accepted
    (unless another step is still pending) and ``failed_step``/``step_error`` say which
    step was refused and why, until the driver takes another step.
    """

    order_id: str
    assigned_ts: int
    status: str | None
    boutique_id: str | None
    shopper_id: str | None
    step: str | None
    step_pending: bool
    failed_step: str | None = None
    step_error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A queued write. ``payload`` is the JSON request of ``kind``'s event."""

    id: int
    client_id: str
    kind: OutboxKind
    stream: str | None
    order_id: str | None
    payload: bytes
    status: MessageStatus
    error: str | None
    created_ts: int


@dataclass(frozen=True, slots=True)
class StreamCursor:
    """Where the local copy of a stream ends (``epoch`` None: no copy yet) and the head last seen."""

    stream: str
    epoch: str | None
    seq: int
    head: int


# ---------------------------------------------------------------------------- helpers


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def _tx(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction, committed at the end or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _now_ms() -> int:
    return int(time.time() * 1000)


def _kind_of(stream: str) -> StreamKind:
    return parse_stream(stream).kind


class LocalStore:
    """The local SQLite store; see the module docstring. Open with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="soko-store")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._user: str | None = None
        self._outbox_items = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        """Open (creating if needed) the store at ``path``.

        Raises:
            StoreError: the file is not a usable store.
        """
        store = cls(Path(path))

        def init() -> None:
            store.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = _connect(str(store.path))
                conn.executescript(_SCHEMA)
                have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
                for column in _JOB_COLUMNS_SINCE_V1:
                    if column.split()[0] not in have:
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column}")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{store.path} is not a usable store ({exc})") from None
            store._conn = conn
            row = conn.execute("SELECT value FROM meta WHERE name = 'user'").fetchone()
            store._user = row[0] if row else None

        try:
            await store._run(init)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close the file (idempotent). Everything stays for the next :meth:`open`."""
        if self._closed:
            return

        def release() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, release)
        finally:
            self._closed = True
            self._pool.shutdown(wait=False)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"local store {self.path}: {exc}") from exc

    @property
    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    # ------------------------------------------------------------------ owner

    @property
    def user(self) -> str | None:
        """The user this store belongs to (None until the first :meth:`bind`)."""
        return self._user

    async def bind(self, user: str, role: str) -> None:
        """Record ``user`` (from ``welcome``) as the store's owner, or check that it is.

        Raises:
            StoreOwnerError: the store already belongs to another user.
        """

        def run() -> None:
            conn = self._c
            with _tx(conn):
                row = conn.execute("SELECT value FROM meta WHERE name = 'user'").fetchone()
                if row is not None and row[0] != user:
                    raise StoreOwnerError(
                        f"{self.path} holds the data of user {row[0]!r}, not {user!r}: use another store file"
                    )
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('user', ?)", (user,))
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('role', ?)", (role,))
            self._user = user

        await self._run(run)

    async def role(self) -> str | None:
        """The owner's role from the last :meth:`bind` (None before)."""
        row = await self._run(
            lambda: self._c.execute("SELECT value FROM meta WHERE name = 'role'").fetchone()
        )
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ UI reads

    async def messages(self, stream: str, limit: int = 500) -> list[Message]:
        """The newest ``limit`` messages of a chat stream, ascending by seq, then the outbox's
        pending and failed messages for it in the order they were written."""

        def run() -> list[Message]:
            conn, me = self._c, self._user
            rows = conn.execute(
                "SELECT stream, seq, ts, author, author_role, client_id, text FROM entries "
                "WHERE stream = ? AND kind = 'chat' ORDER BY seq DESC LIMIT ?",
                (stream, limit),
            ).fetchall()
            out = [
                Message(
                    stream=r[0],
                    seq=r[1],
                    ts=r[2],
                    author=r[3],
                    author_role=r[4],
                    client_id=r[5],
                    text=r[6],
                    status="sent",
                    mine=r[3] == me,
                )
                for r in reversed(rows)
            ]
            sent = {m.client_id for m in out if m.mine}
            for item in conn.execute(
                "SELECT client_id, payload, status, error, created_ts FROM outbox "
                "WHERE kind = 'chat' AND stream = ? ORDER BY id",
                (stream,),
            ):
                if item[0] in sent:
                    continue
                send = msgspec.json.decode(item[1], type=ChatSend)
                out.append(
                    Message(
                        stream=stream,
                        seq=None,
                        ts=item[4],
                        author=me or "",
                        author_role="",
                        client_id=item[0],
                        text=send.text,
                        status=item[2],
                        mine=True,
                        error=item[3],
                    )
                )
            return out

        return await self._run(run)

    async def conversations(self) -> list[ConversationRow]:
        """Every chat stream held (entries, outbox items or a ``chat.list`` row), newest activity first."""

        def run() -> list[ConversationRow]:
            conn, me = self._c, self._user or ""
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT stream FROM streams WHERE stream LIKE 'chat:%' UNION "
                    "SELECT stream FROM conversations UNION "
                    "SELECT stream FROM outbox WHERE kind = 'chat' AND status = 'pending'"
                )
            }
            out: list[ConversationRow] = []
            for stream in names:
                conv = conn.execute(
                    "SELECT last_ts, read_seq, peer_read_seq FROM conversations WHERE stream = ?", (stream,)
                ).fetchone()
                last_ts, read_seq, peer = conv if conv else (0, 0, 0)
                last = conn.execute(
                    "SELECT ts, text FROM entries WHERE stream = ? AND kind = 'chat' "
                    "ORDER BY seq DESC LIMIT 1",
                    (stream,),
                ).fetchone()
                pending, pending_ts = conn.execute(
                    "SELECT COUNT(*), MAX(created_ts) FROM outbox "
                    "WHERE kind = 'chat' AND stream = ? AND status = 'pending'",
                    (stream,),
                ).fetchone()
                unread = conn.execute(
                    "SELECT COUNT(*) FROM entries WHERE stream = ? AND kind = 'chat' AND seq > ? "
                    "AND author != ?",
                    (stream, read_seq, me),
                ).fetchone()[0]
                out.append(
                    ConversationRow(
                        stream=stream,
                        last_ts=max(last_ts, last[0] if last else 0, pending_ts or 0),
                        last_text=last[1] if last else None,
                        unread=unread,
                        read_seq=read_seq,
                        peer_read_seq=peer,
                        pending=pending,
                    )
                )
            out.sort(key=lambda c: (-c.last_ts, c.stream))
            return out

        return await self._run(run)

    async def notifications(self, stream: str | None = None, limit: int = 200) -> list[Notification]:
        """The newest ``limit`` notifications of ``stream`` (None: every inbox), newest first."""

        def run() -> list[Notification]:
            rows = self._c.execute(
                "SELECT e.stream, e.seq, e.ts, e.nid, e.category, e.title, e.body, e.data, e.alert, "
                "e.seq <= COALESCE(s.read_seq, 0) FROM entries e LEFT JOIN streams s ON s.stream = e.stream "
                "WHERE e.kind = 'notification' AND (? IS NULL OR e.stream = ?) "
                "ORDER BY e.ts DESC, e.seq DESC LIMIT ?",
                (stream, stream, limit),
            ).fetchall()
            return [
                Notification(
                    stream=r[0],
                    seq=r[1],
                    ts=r[2],
                    id=r[3],
                    category=r[4],
                    title=r[5],
                    body=r[6],
                    data=json.loads(r[7]) if r[7] else {},
                    alert=bool(r[8]),
                    read=bool(r[9]),
                )
                for r in rows
            ]

        return await self._run(run)

    async def badge(self, stream: str | None = None) -> int:
        """Unread notifications of ``stream`` (None: all inboxes), as last told by the hub and
        lowered at once by :meth:`queue_read`."""

        def run() -> int:
            if stream is not None:
                row = self._c.execute("SELECT unread FROM streams WHERE stream = ?", (stream,)).fetchone()
                return int(row[0]) if row else 0
            row = self._c.execute("SELECT COALESCE(SUM(unread), 0) FROM streams WHERE stream LIKE 'inbox:%'")
            return int(row.fetchone()[0])

        return await self._run(run)

    async def stock(self, boutique_id: str) -> list[StockRow]:
        """Every SKU of the boutique known here, by SKU."""
        rows = await self._run(
            lambda: self._c.execute(
                "SELECT boutique_id, sku, level, version, low, threshold, updated_ts FROM stock "
                "WHERE boutique_id = ? ORDER BY sku",
                (boutique_id,),
            ).fetchall()
        )
        return [_stock_row(r) for r in rows]

    async def stock_item(self, boutique_id: str, sku: str) -> StockRow | None:
        """One SKU's latest state, or None when unknown here."""
        row = await self._run(
            lambda: self._c.execute(
                "SELECT boutique_id, sku, level, version, low, threshold, updated_ts FROM stock "
                "WHERE boutique_id = ? AND sku = ?",
                (boutique_id, sku),
            ).fetchone()
        )
        return None if row is None else _stock_row(row)

    async def boutiques(self) -> list[str]:
        """Boutiques with any known stock, orders or wishlist items, sorted."""
        rows = await self._run(
            lambda: self._c.execute(
                "SELECT boutique_id FROM stock UNION SELECT boutique_id FROM orders "
                "UNION SELECT boutique_id FROM wishlist ORDER BY 1"
            ).fetchall()
        )
        return [r[0] for r in rows]

    async def orders(self) -> list[OrderRow]:
        """Known orders, most recently updated first."""
        rows = await self._run(
            lambda: self._c.execute(
                "SELECT order_id, shopper_id, boutique_id, status, driver_id, updated_ts FROM orders "
                "ORDER BY updated_ts DESC, order_id"
            ).fetchall()
        )
        return [OrderRow(*r) for r in rows]

    async def order(self, order_id: str) -> OrderRow | None:
        """One order, or None when unknown here."""
        row = await self._run(
            lambda: self._c.execute(
                "SELECT order_id, shopper_id, boutique_id, status, driver_id, updated_ts FROM orders "
                "WHERE order_id = ?",
                (order_id,),
            ).fetchone()
        )
        return None if row is None else OrderRow(*row)

    async def position(self, order_id: str) -> Position | None:
        """The newest driver position of the order, or None (none yet, or tracking ended)."""
        row = await self._run(
            lambda: self._c.execute("SELECT frame FROM positions WHERE order_id = ?", (order_id,)).fetchone()
        )
        if row is None:
            return None
        f = msgspec.json.decode(row[0], type=PositionFrame)
        return Position(
            order_id=f.order_id,
            driver_id=f.driver_id,
            lat=f.lat,
            lon=f.lon,
            accuracy=f.accuracy,
            speed=f.speed,
            heading=f.heading,
            ts=f.ts,
            eta_seconds=f.eta.seconds if f.eta else None,
            eta_distance_m=f.eta.distance_m if f.eta else None,
        )

    async def wishlist(self) -> list[WishlistRow]:
        """The wishlist as it will be once the outbox is delivered, newest first."""

        def run() -> list[WishlistRow]:
            pending = {
                (r[0], r[1])
                for r in self._c.execute(
                    "SELECT json_extract(payload, '$.boutique_id'), json_extract(payload, '$.sku') "
                    "FROM outbox WHERE kind = 'wishlist_add' AND status = 'pending'"
                )
            }
            rows = self._c.execute(
                "SELECT boutique_id, sku, added_ts, level FROM wishlist "
                "ORDER BY added_ts DESC, boutique_id, sku"
            ).fetchall()
            return [WishlistRow(r[0], r[1], r[2], r[3], (r[0], r[1]) in pending) for r in rows]

        return await self._run(run)

    async def jobs(self) -> list[Job]:
        """The driver's jobs (from ``delivery`` notifications naming the driver and from its
        orders), unfinished first, newest first."""

        def run() -> list[Job]:
            me = self._user
            rows = self._c.execute(
                "SELECT j.order_id, j.assigned_ts, o.status, o.boutique_id, o.shopper_id, j.step, "
                "j.step_acked, j.failed_step, j.step_error FROM jobs j "
                "LEFT JOIN orders o ON o.order_id = j.order_id WHERE o.driver_id IS NULL OR o.driver_id = ?",
                (me,),
            ).fetchall()
            jobs = [Job(r[0], r[1], r[2], r[3], r[4], r[5], not r[6], r[7], r[8]) for r in rows]
            jobs.sort(key=lambda j: (j.status in ENDED_STATUSES, -j.assigned_ts, j.order_id))
            return jobs

        return await self._run(run)

    async def outbox(self, limit: int = 1000) -> list[OutboxItem]:
        """Pending and failed outbox items, oldest first."""
        rows = await self._run(
            lambda: self._c.execute(
                "SELECT id, client_id, kind, stream, order_id, payload, status, error, created_ts "
                "FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_outbox_item(r) for r in rows]

    async def pending_count(self) -> int:
        """How many outbox items wait for the hub."""
        row = await self._run(
            lambda: self._c.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()
        )
        return int(row[0])

    async def get(self, key: str, default: Any = None) -> Any:
        """A UI value stored with :meth:`put` (JSON), or ``default``."""
        row = await self._run(
            lambda: self._c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        )
        return default if row is None else json.loads(row[0])

    async def put(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable UI value under ``key``."""
        text = json.dumps(value)

        def run() -> None:
            with _tx(self._c):
                self._c.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, text))

        await self._run(run)

    # ------------------------------------------------------------------ outbox (queued by the engine)

    async def queue_chat(self, stream: str, text: str) -> str:
        """Queue ``chat.send`` of ``text`` to ``stream`` with a new ULID ``client_id``; returns it.

        Raises:
            ValueError: not a chat stream, empty text, or text over the protocol's limit
                (nothing is queued).
        """
        if _kind_of(stream) not in (StreamKind.BOUTIQUE_CHAT, StreamKind.ORDER_CHAT):
            raise ValueError(f"not a chat stream: {stream!r}")
        if not text.strip():
            raise ValueError("empty message")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"message longer than {MAX_TEXT_CHARS} characters")
        client_id = str(ULID())
        payload = msgspec.json.encode(ChatSend(stream=stream, client_id=client_id, text=text))
        await self._queue(client_id, "chat", payload, stream=stream)
        return client_id

    async def queue_read(self, stream: str, seq: int) -> str | None:
        """Move our read mark of ``stream`` (a chat or an inbox) to ``seq`` now, and queue telling
        the hub (``chat.read``, or ``notify.read`` for an inbox, which also zeroes the local
        badge up to ``seq``). A mark not past the current one queues nothing (returns None);
        a newer mark replaces a still-pending older one of the same stream. Returns the
        item's ``client_id``.

        Raises:
            ValueError: ``stream`` is neither a chat nor an inbox stream, or ``seq`` < 0.
        """
        if seq < 0:
            raise ValueError("seq must be >= 0")
        kind_of = _kind_of(stream)
        if kind_of in (StreamKind.BOUTIQUE_CHAT, StreamKind.ORDER_CHAT):
            kind: OutboxKind = "read"
            payload = msgspec.json.encode(ReadRequest(stream=stream, seq=seq))
        elif kind_of in (StreamKind.USER_INBOX, StreamKind.BOUTIQUE_INBOX):
            kind = "notify_read"
            payload = msgspec.json.encode(NotifyReadRequest(stream=stream, seq=seq))
        else:
            raise ValueError(f"no read marks on {stream!r}")
        client_id = str(ULID())

        def run() -> str | None:
            conn = self._c
            with _tx(conn):
                if kind == "read":
                    conn.execute("INSERT OR IGNORE INTO conversations (stream) VALUES (?)", (stream,))
                    current = conn.execute(
                        "SELECT read_seq FROM conversations WHERE stream = ?", (stream,)
                    ).fetchone()[0]
                    if seq <= current:
                        return None
                    conn.execute("UPDATE conversations SET read_seq = ? WHERE stream = ?", (seq, stream))
                else:
                    conn.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (stream,))
                    current = conn.execute(
                        "SELECT read_seq FROM streams WHERE stream = ?", (stream,)
                    ).fetchone()[0]
                    if seq <= current:
                        return None
                    newly = conn.execute(
                        "SELECT COUNT(*) FROM entries WHERE stream = ? AND seq > ? AND seq <= ?",
                        (stream, current, seq),
                    ).fetchone()[0]
                    conn.execute(
                        "UPDATE streams SET read_seq = ?, unread = MAX(0, unread - ?) WHERE stream = ?",
                        (seq, newly, stream),
                    )
                conn.execute(
                    "DELETE FROM outbox WHERE kind = ? AND stream = ? AND status = 'pending'", (kind, stream)
                )
                self._insert_outbox(conn, client_id, kind, payload, stream=stream)
            return client_id

        result = await self._run(run)
        if result is not None:
            self._outbox_items.set()
        return result

    async def queue_delivery(self, order_id: str, step: DeliveryStep) -> str:
        """Queue ``delivery.update`` of ``step`` for the driver's job ``order_id`` (its ``event_id``
        is a new ULID, returned) and record the step on the job at once (``step_pending``;
        an earlier refusal shown on the job is cleared).

        Raises:
            ValueError: ``step`` is not ``accepted``, ``picked_up`` or ``delivered``.
        """
        if step not in ("accepted", "picked_up", "delivered"):
            raise ValueError(f"unknown delivery step {step!r}")
        event_id = str(ULID())
        payload = msgspec.json.encode(DeliveryUpdate(event_id=event_id, order_id=order_id, step=step))

        def run() -> None:
            conn = self._c
            with _tx(conn):
                conn.execute(
                    "INSERT INTO jobs (order_id, assigned_ts, step, step_acked) VALUES (?, ?, ?, 0) "
                    "ON CONFLICT (order_id) DO UPDATE SET step = excluded.step, step_acked = 0, "
                    "failed_step = NULL, step_error = NULL",
                    (order_id, _now_ms(), step),
                )
                self._insert_outbox(conn, event_id, "delivery", payload, order_id=order_id)

        await self._run(run)
        self._outbox_items.set()
        return event_id

    async def queue_wishlist(self, add: bool, boutique_id: str, sku: str) -> str:
        """Queue ``wishlist.add`` (``add``) or ``wishlist.remove`` and show it in :meth:`wishlist`
        at once; returns the item's ``client_id``."""
        client_id = str(ULID())
        payload = msgspec.json.encode(WishlistRequest(boutique_id=boutique_id, sku=sku))
        kind: OutboxKind = "wishlist_add" if add else "wishlist_remove"

        def run() -> None:
            conn = self._c
            with _tx(conn):
                if add:
                    level = conn.execute(
                        "SELECT level FROM stock WHERE boutique_id = ? AND sku = ?", (boutique_id, sku)
                    ).fetchone()
                    conn.execute(
                        "INSERT OR IGNORE INTO wishlist (boutique_id, sku, added_ts, level) "
                        "VALUES (?, ?, ?, ?)",
                        (boutique_id, sku, _now_ms(), level[0] if level else None),
                    )
                else:
                    conn.execute("DELETE FROM wishlist WHERE boutique_id = ? AND sku = ?", (boutique_id, sku))
                self._insert_outbox(conn, client_id, kind, payload)

        await self._run(run)
        self._outbox_items.set()
        return client_id

    async def _queue(
        self, client_id: str, kind: OutboxKind, payload: bytes, *, stream: str | None = None
    ) -> None:
        def run() -> None:
            with _tx(self._c):
                self._insert_outbox(self._c, client_id, kind, payload, stream=stream)

        await self._run(run)
        self._outbox_items.set()

    @staticmethod
    def _insert_outbox(
        conn: sqlite3.Connection,
        client_id: str,
        kind: OutboxKind,
        payload: bytes,
        *,
        stream: str | None = None,
        order_id: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO outbox (client_id, kind, stream, order_id, payload, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (client_id, kind, stream, order_id, payload, _now_ms()),
        )

    # ------------------------------------------------------------------ outbox (drained by the engine)

    async def pending(self, limit: int = 1) -> list[OutboxItem]:
        """Up to ``limit`` pending items, oldest first; they stay pending until settled."""
        rows = await self._run(
            lambda: self._c.execute(
                "SELECT id, client_id, kind, stream, order_id, payload, status, error, created_ts "
                "FROM outbox WHERE status = 'pending' ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_outbox_item(r) for r in rows]

    async def wait_for_pending(self) -> None:
        """Return as soon as at least one item is pending (at once if one already is)."""
        while True:
            self._outbox_items.clear()
            if await self.pending_count() > 0:
                return
            await self._outbox_items.wait()

    async def settle_chat(self, item_id: int, sent: ChatSent) -> bool:
        """The hub stored the message of outbox item ``item_id``: remove the item and hold the
        entry at ``sent.seq`` (unless the local copy of the stream is of another epoch), in one
        transaction. Returns False when the item was no longer pending."""

        def run() -> bool:
            conn = self._c
            with _tx(conn):
                row = conn.execute(
                    "SELECT payload FROM outbox WHERE id = ? AND status = 'pending'", (item_id,)
                ).fetchone()
                if row is None:
                    return False
                send = msgspec.json.decode(row[0], type=ChatSend)
                conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
                cur = conn.execute(
                    "SELECT epoch, seq FROM streams WHERE stream = ?", (sent.stream,)
                ).fetchone()
                if cur is None or (cur[0] in (None, sent.epoch) and sent.seq > cur[1]):
                    conn.execute(
                        "INSERT OR IGNORE INTO entries (stream, seq, epoch, ts, kind, author, author_role, "
                        "client_id, text) VALUES (?, ?, ?, ?, 'chat', ?, ?, ?, ?)",
                        (
                            sent.stream,
                            sent.seq,
                            sent.epoch,
                            sent.ts,
                            self._user or "",
                            "",
                            sent.client_id,
                            send.text,
                        ),
                    )
                conn.execute(
                    "INSERT INTO conversations (stream, last_ts) VALUES (?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET last_ts = MAX(last_ts, excluded.last_ts)",
                    (sent.stream, sent.ts),
                )
            return True

        return await self._run(run)

    async def settle_delivery(self, item_id: int, reply: DeliveryUpdated) -> bool:
        """The hub applied (or had applied) the delivery step of item ``item_id``: remove it,
        record its step as the job's last accepted one (clearing an earlier refusal) and take
        the order's status from ``reply`` unless the order is already further along (a newer
        ``order.updated`` may have been applied first; see :data:`STATUS_ORDER`). Returns
        False when the item was no longer pending."""

        def run() -> bool:
            conn = self._c
            with _tx(conn):
                row = conn.execute(
                    "SELECT payload FROM outbox WHERE id = ? AND status = 'pending' AND kind = 'delivery'",
                    (item_id,),
                ).fetchone()
                if row is None:
                    return False
                update = msgspec.json.decode(row[0], type=DeliveryUpdate)
                conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
                conn.execute(
                    "UPDATE jobs SET acked_step = ?, failed_step = NULL, step_error = NULL "
                    "WHERE order_id = ?",
                    (update.step, update.order_id),
                )
                if not self._delivery_pending(conn, update.order_id):
                    conn.execute("UPDATE jobs SET step_acked = 1 WHERE order_id = ?", (update.order_id,))
                held = conn.execute(
                    "SELECT status FROM orders WHERE order_id = ?", (reply.order_id,)
                ).fetchone()
                if held is not None and _STATUS_RANK.get(reply.status, -1) > _STATUS_RANK.get(held[0], -1):
                    conn.execute(
                        "UPDATE orders SET status = ? WHERE order_id = ?", (reply.status, reply.order_id)
                    )
            return True

        return await self._run(run)

    @staticmethod
    def _delivery_pending(conn: sqlite3.Connection, order_id: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM outbox WHERE kind = 'delivery' AND order_id = ? AND status = 'pending'",
                (order_id,),
            ).fetchone()
            is not None
        )

    async def settle_wishlist(self, item_id: int, items: Sequence[WishlistItem] | None) -> bool:
        """The hub applied the wishlist change of item ``item_id``: remove it and, when no other
        wishlist change is pending, take the hub's wishlist ``items`` (None: keep the local one).
        Returns False when the item was no longer pending."""

        def run() -> bool:
            conn = self._c
            with _tx(conn):
                if (
                    conn.execute(
                        "DELETE FROM outbox WHERE id = ? AND status = 'pending'", (item_id,)
                    ).rowcount
                    == 0
                ):
                    return False
                if items is not None:
                    self._replace_wishlist(conn, items)
            return True

        return await self._run(run)

    async def settle(self, item_id: int) -> bool:
        """The hub acknowledged item ``item_id`` (a read mark): remove it. False when not pending."""

        def run() -> bool:
            with _tx(self._c):
                n = self._c.execute(
                    "DELETE FROM outbox WHERE id = ? AND status = 'pending'", (item_id,)
                ).rowcount
            return bool(n)

        return await self._run(run)

    async def fail(self, item_id: int, error: str) -> None:
        """The hub refused item ``item_id`` for good: keep it as ``failed`` with ``error``; it is
        never sent again. For a delivery step the job shows the refusal (``failed_step``,
        ``step_error``) and, unless another step of that job is still pending, goes back to
        the last step the hub accepted, no longer pending."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                row = conn.execute("SELECT kind, payload FROM outbox WHERE id = ?", (item_id,)).fetchone()
                conn.execute("UPDATE outbox SET status = 'failed', error = ? WHERE id = ?", (error, item_id))
                if row is None or row[0] != "delivery":
                    return
                update = msgspec.json.decode(row[1], type=DeliveryUpdate)
                conn.execute(
                    "UPDATE jobs SET failed_step = ?, step_error = ? WHERE order_id = ?",
                    (update.step, error, update.order_id),
                )
                if not self._delivery_pending(conn, update.order_id):
                    conn.execute(
                        "UPDATE jobs SET step = acked_step, step_acked = 1 WHERE order_id = ?",
                        (update.order_id,),
                    )

        await self._run(run)

    async def discard(self, client_id: str) -> None:
        """Remove a failed outbox item the user dismissed (a pending one is left alone)."""

        def run() -> None:
            with _tx(self._c):
                self._c.execute("DELETE FROM outbox WHERE client_id = ? AND status = 'failed'", (client_id,))

        await self._run(run)

    # ------------------------------------------------------------------ streams (applied by the engine)

    async def cursors(self) -> list[StreamCursor]:
        """Every stream held, with its cursor (``epoch`` None: no copy yet), by stream id."""
        rows = await self._run(
            lambda: self._c.execute("SELECT stream, epoch, seq, head FROM streams ORDER BY stream").fetchall()
        )
        return [StreamCursor(*r) for r in rows]

    async def cursor(self, stream: str) -> StreamCursor:
        """The stream's cursor (``epoch`` None, seq 0 when not held)."""
        row = await self._run(
            lambda: self._c.execute(
                "SELECT stream, epoch, seq, head FROM streams WHERE stream = ?", (stream,)
            ).fetchone()
        )
        return StreamCursor(stream, None, 0, 0) if row is None else StreamCursor(*row)

    async def follow(self, stream: str) -> None:
        """Hold ``stream`` from now on (no entries yet); the next sync or catch-up fills it."""

        def run() -> None:
            with _tx(self._c):
                self._c.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (stream,))

        await self._run(run)

    async def reset_stream(self, stream: str, epoch: str | None, head: int = 0) -> None:
        """Drop the local copy of ``stream`` (entries and read marks, also unsent ones; for ``inv:``
        stock keeps its versions) and restart its cursor at seq 0 of ``epoch``."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                self._reset(conn, stream, epoch, head)

        await self._run(run)

    @staticmethod
    def _reset(conn: sqlite3.Connection, stream: str, epoch: str | None, head: int) -> None:
        """Drop entries, read marks and unsent read marks (seqs of the old epoch mean nothing in
        the new one)."""
        conn.execute("DELETE FROM entries WHERE stream = ?", (stream,))
        conn.execute(
            "DELETE FROM outbox WHERE stream = ? AND kind IN ('read', 'notify_read') AND status = 'pending'",
            (stream,),
        )
        conn.execute(
            "INSERT INTO streams (stream, epoch, seq, head) VALUES (?, ?, 0, ?) ON CONFLICT (stream) "
            "DO UPDATE SET epoch = excluded.epoch, seq = 0, head = excluded.head, read_seq = 0",
            (stream, epoch or None, head),
        )
        conn.execute(
            "UPDATE conversations SET head = 0, read_seq = 0, peer_read_seq = 0 WHERE stream = ?", (stream,)
        )

    async def forget_stream(self, stream: str) -> None:
        """Stop holding ``stream`` (the hub no longer shows it to us): drop its entries and cursor."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                conn.execute("DELETE FROM entries WHERE stream = ?", (stream,))
                conn.execute("DELETE FROM streams WHERE stream = ?", (stream,))

        await self._run(run)

    async def set_head(self, stream: str, head: int, unread: int | None = None) -> None:
        """Record the hub's ``head`` of ``stream`` (and, for an inbox, its ``unread`` count)."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                conn.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (stream,))
                conn.execute("UPDATE streams SET head = ? WHERE stream = ?", (head, stream))
                if unread is not None:
                    conn.execute("UPDATE streams SET unread = ? WHERE stream = ?", (unread, stream))

        await self._run(run)

    async def apply_page(
        self, stream: str, epoch: str, recovered: bool, entries: Sequence[DurableFrame], head: int
    ) -> StreamCursor:
        """Apply one ``catchup`` page in one transaction and return the new cursor.

        ``recovered`` False first drops the local copy and restarts at seq 0 of ``epoch``.
        Entries at or below the cursor are skipped; the others are applied in seq order while
        each is the cursor's next one (a page never skips, so this takes them all).
        """

        def run() -> StreamCursor:
            conn = self._c
            with _tx(conn):
                if not recovered:
                    self._reset(conn, stream, epoch, head)
                conn.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (stream,))
                cur_epoch, seq = conn.execute(
                    "SELECT epoch, seq FROM streams WHERE stream = ?", (stream,)
                ).fetchone()
                if cur_epoch is None and epoch:
                    cur_epoch = epoch
                for frame in sorted(entries, key=lambda f: f.seq):
                    if frame.seq <= seq:
                        continue
                    if frame.seq != seq + 1:
                        break
                    self._apply_entry(conn, frame)
                    seq = frame.seq
                conn.execute(
                    "UPDATE streams SET epoch = ?, seq = ?, head = MAX(head, ?) WHERE stream = ?",
                    (cur_epoch, seq, head, stream),
                )
            return StreamCursor(stream, cur_epoch, seq, head)

        return await self._run(run)

    async def apply_frame(self, frame: DurableFrame) -> FrameOutcome:
        """Apply a live durable frame by the cursor rules of the protocol, in one transaction:
        ``seq <= cursor`` is ignored, ``cursor + 1`` is applied and advances the cursor, a higher
        seq is a ``gap`` and another epoch is ``epoch`` (both store nothing). A stream held
        without a copy yet (epoch None) takes the frame's epoch when the frame is seq 1.
        A live notification's ``badge`` becomes the inbox's unread count."""

        def run() -> FrameOutcome:
            conn = self._c
            with _tx(conn):
                row = conn.execute(
                    "SELECT epoch, seq FROM streams WHERE stream = ?", (frame.stream,)
                ).fetchone()
                epoch, seq = row if row else (None, 0)
                if isinstance(frame, NotificationFrame) and frame.seq > seq:
                    conn.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (frame.stream,))
                    conn.execute(
                        "UPDATE streams SET unread = ? WHERE stream = ?", (frame.badge, frame.stream)
                    )
                if epoch is not None and epoch != frame.epoch:
                    return "epoch"
                if frame.seq <= seq:
                    return "ignored"
                if frame.seq > seq + 1:
                    return "gap"
                self._apply_entry(conn, frame)
                conn.execute(
                    "INSERT INTO streams (stream, epoch, seq, head) VALUES (?, ?, ?, ?) ON CONFLICT (stream) "
                    "DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, "
                    "head = MAX(head, excluded.head)",
                    (frame.stream, frame.epoch, frame.seq, frame.seq),
                )
            return "applied"

        return await self._run(run)

    def _apply_entry(self, conn: sqlite3.Connection, frame: DurableFrame) -> None:
        """Store one entry (the caller holds the transaction and checked the seq)."""
        if isinstance(frame, ChatFrame):
            conn.execute(
                "INSERT OR REPLACE INTO entries (stream, seq, epoch, ts, kind, author, author_role, "
                "client_id, text) VALUES (?, ?, ?, ?, 'chat', ?, ?, ?, ?)",
                (
                    frame.stream,
                    frame.seq,
                    frame.epoch,
                    frame.ts,
                    frame.author,
                    frame.author_role,
                    frame.client_id,
                    frame.text,
                ),
            )
            conn.execute(
                "INSERT INTO conversations (stream, head, last_ts) VALUES (?, ?, ?) ON CONFLICT (stream) "
                "DO UPDATE SET head = MAX(head, excluded.head), last_ts = MAX(last_ts, excluded.last_ts)",
                (frame.stream, frame.seq, frame.ts),
            )
        elif isinstance(frame, NotificationFrame):
            conn.execute(
                "INSERT OR REPLACE INTO entries (stream, seq, epoch, ts, kind, nid, category, title, body, "
                "data, alert) VALUES (?, ?, ?, ?, 'notification', ?, ?, ?, ?, ?, ?)",
                (
                    frame.stream,
                    frame.seq,
                    frame.epoch,
                    frame.ts,
                    frame.id,
                    frame.category,
                    frame.title,
                    frame.body,
                    json.dumps(frame.data),
                    int(frame.alert),
                ),
            )
            if job_order_of(frame, self._user) is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO jobs (order_id, assigned_ts) VALUES (?, ?)",
                    (frame.data["order_id"], frame.ts),
                )
        else:
            self._apply_stock(conn, frame.boutique_id, frame.sku, frame.level, frame.version, frame.ts, None)

    # ------------------------------------------------------------------ latest values (applied by the engine)

    async def apply_stock_frame(self, frame: StockFrame) -> bool:
        """Keep ``frame``'s level when its version is higher than the SKU's; True when it was."""

        def run() -> bool:
            with _tx(self._c):
                return self._apply_stock(
                    self._c, frame.boutique_id, frame.sku, frame.level, frame.version, frame.ts, None
                )

        return await self._run(run)

    async def apply_stock_snapshot(self, snapshot: StockSnapshot) -> None:
        """Keep each item of a ``stock.watch``/``stock.levels`` reply whose version is higher than
        the SKU's (thresholds and ``low`` are taken from the item when it wins)."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                for item in snapshot.items:
                    self._apply_stock(
                        conn, snapshot.boutique_id, item.sku, item.level, item.version, item.updated_ts, item
                    )

        await self._run(run)

    @staticmethod
    def _apply_stock(
        conn: sqlite3.Connection,
        boutique_id: str,
        sku: str,
        level: int,
        version: int,
        ts: int,
        item: StockItem | None,
    ) -> bool:
        row = conn.execute(
            "SELECT version FROM stock WHERE boutique_id = ? AND sku = ?", (boutique_id, sku)
        ).fetchone()
        if row is not None and row[0] > version:
            return False
        if row is not None and row[0] == version and item is None:
            return False
        low = int(item.low) if item else 0
        threshold = item.threshold if item else None
        conn.execute(
            "INSERT INTO stock (boutique_id, sku, level, version, low, threshold, updated_ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (boutique_id, sku) DO UPDATE SET "
            "level = excluded.level, version = excluded.version, updated_ts = excluded.updated_ts"
            + (", low = excluded.low, threshold = excluded.threshold" if item else ""),
            (boutique_id, sku, level, version, low, threshold, ts),
        )
        conn.execute(
            "UPDATE wishlist SET level = ? WHERE boutique_id = ? AND sku = ?", (level, boutique_id, sku)
        )
        return True

    async def set_stock_cursor(self, stream: str, epoch: str, head: int) -> None:
        """After a stock snapshot read at ``(epoch, head)``: move the ``inv:`` cursor there unless it
        is already at or past it in the same epoch (an empty ``epoch`` means no change yet)."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                row = conn.execute("SELECT epoch, seq FROM streams WHERE stream = ?", (stream,)).fetchone()
                if row is not None and row[0] == (epoch or None) and row[1] >= head:
                    return
                conn.execute(
                    "INSERT INTO streams (stream, epoch, seq, head) VALUES (?, ?, ?, ?) ON CONFLICT (stream) "
                    "DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, head = excluded.head",
                    (stream, epoch or None, head, head),
                )

        await self._run(run)

    async def set_orders(self, orders: Iterable[OrderView], *, complete: bool = False) -> None:
        """Store these orders; for a driver, each assigned to the store's user becomes a job.
        ``complete``: the hub listed every order of ours, so others held here are dropped
        with their positions and jobs (a job whose step is still in the outbox stays): an
        order reassigned to another driver leaves the job list."""
        views = list(orders)

        def run() -> None:
            conn = self._c
            with _tx(conn):
                for view in views:
                    self._upsert_order(conn, view)
                if complete:
                    keep = [v.order_id for v in views]
                    marks = ",".join("?" * len(keep)) or "''"
                    conn.execute(f"DELETE FROM orders WHERE order_id NOT IN ({marks})", keep)  # noqa: S608
                    conn.execute(f"DELETE FROM positions WHERE order_id NOT IN ({marks})", keep)  # noqa: S608
                    conn.execute(
                        f"DELETE FROM jobs WHERE order_id NOT IN ({marks}) AND order_id NOT IN "  # noqa: S608
                        "(SELECT order_id FROM outbox WHERE kind = 'delivery' AND status = 'pending' "
                        "AND order_id IS NOT NULL)",
                        keep,
                    )

        await self._run(run)

    def _upsert_order(self, conn: sqlite3.Connection, view: OrderView) -> None:
        conn.execute(
            "INSERT INTO orders (order_id, shopper_id, boutique_id, status, driver_id, updated_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET "
            "shopper_id = excluded.shopper_id, boutique_id = excluded.boutique_id, "
            "status = excluded.status, driver_id = excluded.driver_id, updated_ts = excluded.updated_ts "
            "WHERE excluded.updated_ts >= orders.updated_ts",
            (view.order_id, view.shopper_id, view.boutique_id, view.status, view.driver_id, view.updated_ts),
        )
        if view.driver_id is not None and view.driver_id == self._user and view.shopper_id != self._user:
            conn.execute(
                "INSERT OR IGNORE INTO jobs (order_id, assigned_ts) VALUES (?, ?)",
                (view.order_id, view.updated_ts),
            )
        if view.status in ENDED_STATUSES:
            conn.execute("DELETE FROM positions WHERE order_id = ?", (view.order_id,))

    async def set_order(self, view: OrderView) -> None:
        """Store one order (a newer ``updated_ts`` wins); see :meth:`set_orders`."""
        await self.set_orders([view])

    async def set_position(self, frame: PositionFrame | None, order_id: str) -> None:
        """Keep ``frame`` as the order's newest driver position when it is newer (device ``ts``)
        than the one held; None forgets the position (tracking ended)."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                if frame is None:
                    conn.execute("DELETE FROM positions WHERE order_id = ?", (order_id,))
                    return
                row = conn.execute("SELECT frame FROM positions WHERE order_id = ?", (order_id,)).fetchone()
                if row is not None and msgspec.json.decode(row[0], type=PositionFrame).ts > frame.ts:
                    return
                conn.execute(
                    "INSERT OR REPLACE INTO positions (order_id, frame) VALUES (?, ?)",
                    (order_id, msgspec.json.encode(frame)),
                )

        await self._run(run)

    async def set_conversations(self, conversations: Iterable[Conversation]) -> None:
        """Take read marks and activity times from a ``chat.list`` reply (our read mark never moves
        back past one we set locally and have not yet sent)."""
        rows = list(conversations)

        def run() -> None:
            conn = self._c
            with _tx(conn):
                for c in rows:
                    conn.execute(
                        "INSERT INTO conversations (stream, head, last_ts, read_seq, peer_read_seq) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
                        "head = MAX(head, excluded.head), last_ts = MAX(last_ts, excluded.last_ts), "
                        "read_seq = MAX(read_seq, excluded.read_seq), "
                        "peer_read_seq = MAX(peer_read_seq, excluded.peer_read_seq)",
                        (c.stream, c.head, c.last_ts, c.read_seq, c.peer_read_seq),
                    )

        await self._run(run)

    async def set_read(self, frame: ReadFrame, mine: bool) -> None:
        """Apply a ``chat.read`` frame: our own read mark (``mine``, from another device) or the
        peer's; a mark only moves forward."""
        column = "read_seq" if mine else "peer_read_seq"

        def run() -> None:
            conn = self._c
            with _tx(conn):
                conn.execute("INSERT OR IGNORE INTO conversations (stream) VALUES (?)", (frame.stream,))
                conn.execute(
                    f"UPDATE conversations SET {column} = MAX({column}, ?) WHERE stream = ?",  # noqa: S608
                    (frame.seq, frame.stream),
                )

        await self._run(run)

    async def set_badge(self, stream: str, badge: int) -> None:
        """An inbox's unread count, as the hub reports it."""

        def run() -> None:
            conn = self._c
            with _tx(conn):
                conn.execute("INSERT OR IGNORE INTO streams (stream) VALUES (?)", (stream,))
                conn.execute("UPDATE streams SET unread = ? WHERE stream = ?", (badge, stream))

        await self._run(run)

    async def set_wishlist(self, items: Sequence[WishlistItem]) -> bool:
        """Take the hub's wishlist, unless a wishlist change is still pending (then the local one
        is newer). Returns whether it was taken."""

        def run() -> bool:
            conn = self._c
            with _tx(conn):
                if conn.execute(
                    "SELECT 1 FROM outbox WHERE kind LIKE 'wishlist_%' AND status = 'pending'"
                ).fetchone():
                    return False
                self._replace_wishlist(conn, items)
            return True

        return await self._run(run)

    @staticmethod
    def _replace_wishlist(conn: sqlite3.Connection, items: Sequence[WishlistItem]) -> None:
        if conn.execute(
            "SELECT 1 FROM outbox WHERE kind LIKE 'wishlist_%' AND status = 'pending'"
        ).fetchone():
            return
        conn.execute("DELETE FROM wishlist")
        conn.executemany(
            "INSERT OR REPLACE INTO wishlist (boutique_id, sku, added_ts, level) VALUES (?, ?, ?, ?)",
            [(i.boutique_id, i.sku, i.added_ts, i.level) for i in items],
        )


def job_order_of(frame: NotificationFrame, user: str | None) -> str | None:
    """The order id of a "new delivery job" notification for driver ``user``, else None: category
    ``delivery`` with ``data.driver_id == user`` and a string ``data.order_id``, sent to that
    user's own inbox."""
    if user is None or frame.category != "delivery" or frame.stream != f"inbox:u:{user}":
        return None
    order_id = frame.data.get("order_id")
    if frame.data.get("driver_id") != user or not isinstance(order_id, str):
        return None
    return order_id


def _stock_row(r: Sequence[Any]) -> StockRow:
    return StockRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6])


def _outbox_item(r: Sequence[Any]) -> OutboxItem:
    return OutboxItem(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7], r[8])
