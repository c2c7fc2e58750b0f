"""The sync engine: keeps a :class:`~clients.common.store.LocalStore` in step with the hub.

The UI talks only to this class and the store. It never waits on the network: writes
return once they are committed locally, reads come from the store, and every change is
announced to subscribers after it was committed.

Guarantees (see docs/protocol.md for the wire rules they follow):

- Connection: one Socket.IO connection at a time (WebSocket, auth ``{"token": ...}``),
  reconnected after any failure with capped, fully jittered exponential backoff (0.5 s
  doubling to ``backoff_cap``), reset once a connection completed its initial sync (a
  hub that welcomes and then fails every sync is retried at a growing pace). The token
  is read again at every connect (:meth:`SyncEngine.set_token`). A refused or expired
  token is reported in :attr:`SyncEngine.state` (``token_error``, kept until the next
  connection succeeds) and retried at the capped pace.
- Catch-up: on every connect, after a gap, an epoch change or a ``resync`` frame the
  engine sends ``sync`` with its cursors and pages every stream found behind with
  ``catchup``; each page is applied in one local transaction. ``recovered: false`` drops
  the local copy of that stream (entries and read marks) and restarts it at seq 0 of
  the given epoch. Streams the hub no longer shows, refuses, or whose held cursor is
  malformed are dropped. The order, conversation and wishlist lists are read after the
  catch-up. Progress is reported as ``syncing done/total``.
- Live frames are applied one at a time in arrival order: ``seq <= cursor`` ignored,
  ``cursor + 1`` applied, a higher seq is a gap (catch-up), another epoch a resync.
  Frames that arrive while a catch-up runs wait their turn (at most ``MAX_BUFFERED``;
  beyond that they are dropped and a full resync follows, which loses nothing durable).
- Outbox: items are sent one at a time, oldest first, each retried (same ``client_id``)
  until acked, across reconnects and restarts; the hub dedups retries, so each write
  takes effect exactly once and in order. Temporary refusals back off and retry the same
  item; a refusal of the request itself marks the item ``failed`` and moves on.
- Latest values are never queued: while offline only the newest location fix is kept
  and sent once connected; typing is dropped when offline; watches (stock, order,
  track) are sent again after every reconnect.
- Killing the process at any point loses nothing a call returned for and duplicates
  nothing: all durable state is in the store, and every write is idempotent at the hub.
- Background work never dies silently: failures are logged, reported in the state and
  retried; ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from clients.common.backoff import delay
from clients.common.link import TOKEN_ERRORS, Link, LinkLostError, RequestRefused, TokenRejectedError
from clients.common.state import Change, SyncState
from clients.common.store import (
    ENDED_STATUSES,
    LocalStore,
    OutboxItem,
    StoreError,
    StoreOwnerError,
    job_order_of,
)
from protocol import events
from protocol.codec import decode_value, to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import StreamKind, inventory, parse_stream
from protocol.messages import (
    MAX_CURSORS,
    BadgeFrame,
    CatchupPage,
    CatchupRequest,
    ChatFrame,
    ChatSent,
    ConversationList,
    ConversationListRequest,
    Cursor,
    DeliveryStep,
    DeliveryUpdated,
    DurableFrame,
    LocationAccepted,
    LocationUpdate,
    NotificationFrame,
    NotifyAckRequest,
    OrderList,
    OrderListRequest,
    OrderUpdatedFrame,
    OrderView,
    OrderWatchRequest,
    PositionFrame,
    ReadFrame,
    SessionClosing,
    StockFrame,
    StockLevelsRequest,
    StockSnapshot,
    StockWatchRequest,
    SyncReply,
    SyncRequest,
    TrackEndedFrame,
    TrackRequest,
    TrackSnapshot,
    TypingFrame,
    TypingRequest,
    Wishlist,
    WishlistListRequest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BUFFERED = 10_000
"""Most server frames held while the engine is busy (catching up); beyond, resync instead."""
RETRY_CAP_S = 2.0
"""Longest wait before resending a request the hub refused as temporary (rate limit, busy)."""
ORDER_LIST_LIMIT = 100
"""Orders asked for at every connect (``order.list``, newest first)."""

_SLOWEST_ATTEMPT = 64
"""A failure count at which every reconnect waits up to ``backoff_cap``."""
_Queued = tuple[Literal["frame"], str, Any] | tuple[Literal["command"], str, str]
_DURABLE: dict[str, type[ChatFrame] | type[NotificationFrame] | type[StockFrame]] = {
    events.CHAT_MESSAGE: ChatFrame,
    events.NOTIFICATION: NotificationFrame,
    events.STOCK: StockFrame,
}
_OUTBOX_EVENTS = {
    "chat": events.CHAT_SEND,
    "read": events.CHAT_READ,
    "notify_read": events.NOTIFY_READ,
    "delivery": events.DELIVERY_UPDATE,
    "wishlist_add": events.WISHLIST_ADD,
    "wishlist_remove": events.WISHLIST_REMOVE,
}


class _SessionEnded(Exception):  # noqa: N818 (control flow inside the engine)
    """The current connection must be dropped; ``text`` says why (for the state's error)."""

    def __init__(self, text: str, token_error: bool = False) -> None:
        super().__init__(text)
        self.token_error = token_error


class SyncEngine:
    """Background sync between a :class:`LocalStore` and the hub at ``hub_url``.

    Args:
        hub_url: the hub's base URL, e.g. ``http://127.0.0.1:8080``.
        token: the JWT, or a callable returning the current one (called at every connect).
        store: the open local store; the engine never closes it.
        page_size: entries per ``catchup`` page (1-500).
        call_timeout: seconds to wait for any ack before treating the link as lost.
        backoff_cap: longest wait between two connection attempts, in seconds.
        online: start connected (True) or offline until :meth:`set_online` (False).

    Use: ``task = asyncio.create_task(engine.run())`` ... ``await engine.close()``.
    """

    def __init__(
        self,
        hub_url: str,
        token: str | Callable[[], str],
        store: LocalStore,
        *,
        page_size: int = 200,
        call_timeout: float = 15.0,
        backoff_cap: float = 30.0,
        online: bool = True,
    ) -> None:
        if not 1 <= page_size <= 500:
            raise ValueError(f"page_size must be in 1..500, not {page_size}")
        self.hub_url = hub_url
        self.store = store
        self._token: str | Callable[[], str] = token
        self._page_size = page_size
        self._call_timeout = call_timeout
        self._backoff_cap = backoff_cap
        self._state = SyncState(user=store.user)
        self._subscribers: list[Callable[[Change], None]] = []
        self._online = online
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._running = False
        self._stopped = asyncio.Event()
        self._link: Link | None = None
        self._queue: deque[_Queued] = deque()
        self._queued = asyncio.Event()
        self._overflow = False
        self._failures = 0
        self._location: LocationUpdate | None = None
        self._location_ready = asyncio.Event()
        self._stock_watches: set[str] = set()
        self._order_watches: set[str] = set()
        self._track_watches: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.last_location: LocationAccepted | None = None
        """The hub's answer to the last location fix sent (None before the first)."""

    # ------------------------------------------------------------------ observing

    @property
    def state(self) -> SyncState:
        """The current :class:`SyncState` (an immutable value; a new one on every change)."""
        return self._state

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` on the event loop after each change was committed to the
        store (and on each state change). Returns a function that unsubscribes. A callback
        that raises is logged and stays subscribed; it must not block."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, change: Change) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("engine: a subscriber failed on %s", change.kind)

    def _set_state(self, **fields: Any) -> None:
        new = dataclasses.replace(self._state, **fields)
        if new != self._state:
            self._state = new
            self._emit(Change("state", state=new))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, sync and follow the hub until :meth:`close`; reconnects after every failure.

        Raises:
            RuntimeError: ``run`` is already running.
        """
        if self._running:
            raise RuntimeError("the engine is already running")
        self._running = True
        self._stopped.clear()
        try:
            while not self._closing.is_set():
                if not self._online:
                    self._set_state(phase="offline", done=0, total=0)
                    await self._sleep_until_woken(None)
                    continue
                self._set_state(phase="connecting", done=0, total=0)
                self._wake.clear()
                failure = await self._interruptible(self._connection())
                if self._closing.is_set():
                    break
                self._set_state(phase="offline", done=0, total=0)
                if failure is None:  # switched offline on purpose
                    continue
                self._failures += 1
                await self._sleep_until_woken(delay(self._failures, self._backoff_cap))
        finally:
            self._set_state(phase="offline", done=0, total=0)
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            self._running = False
            self._stopped.set()

    async def _interruptible(self, work: Coroutine[Any, Any, str]) -> str | None:
        """Run one connection; cancel it (returning None) as soon as close or set_online(False)."""
        self._interrupt.clear()
        session = asyncio.ensure_future(work)
        interrupted = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({session, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
            if not session.done():
                session.cancel()
            results = await asyncio.gather(session, return_exceptions=True)
        result = results[0]
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                return None
            raise result
        return result

    async def close(self) -> None:
        """Stop :meth:`run` (disconnecting) and wait until it returned. Idempotent. Queued
        writes stay in the store for the next run."""
        self._closing.set()
        self._interrupt.set()
        self._wake.set()
        if self._running:
            await self._stopped.wait()

    def set_online(self, online: bool) -> None:
        """Go offline (disconnect and stay disconnected; writes keep queueing) or back online
        (connect at once, without waiting out a backoff)."""
        self._online = online
        self._failures = 0
        self._wake.set()
        if not online:
            self._interrupt.set()

    def set_token(self, token: str | Callable[[], str]) -> None:
        """Use ``token`` from the next connect on, and reconnect at once if the last attempt
        failed (e.g. the old token expired or was refused)."""
        self._token = token
        self._failures = 0
        self._wake.set()

    async def _sleep_until_woken(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: forever) or until close / set_online / set_token (also when one
        of those came during the connection attempt that just ended)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ one connection

    async def _connection(self) -> str:
        """Run one connection until it fails; returns why (already reported and logged)."""
        link = Link(self._on_frame)
        self._link = link
        self._queue.clear()
        self._overflow = False
        tasks: list[asyncio.Task[None]] = []
        try:
            token = self._token() if callable(self._token) else self._token
            welcome = await link.connect(self.hub_url, token)
            await self.store.bind(welcome.user, welcome.role)
            self._set_state(
                phase="syncing",
                done=0,
                total=0,
                error=None,
                token_error=False,
                user=welcome.user,
                role=welcome.role,
            )
            log.info("engine: connected to %s as %s %s", self.hub_url, welcome.role, welcome.user)
            tasks = [
                asyncio.create_task(self._dispatch(link), name="soko-dispatch"),
                asyncio.create_task(self._drain(link), name="soko-outbox"),
                asyncio.create_task(self._send_locations(link), name="soko-location"),
            ]
            lost = asyncio.create_task(link.lost.wait())
            done, _ = await asyncio.wait({*tasks, lost}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            for task in done:
                failure = None if task is lost or task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
            if self._state.error is not None:  # the hub said why (session.closing)
                raise _SessionEnded(self._state.error, token_error=self._state.token_error)
            raise LinkLostError("the connection to the hub dropped")
        except TokenRejectedError as exc:
            return self._failed(str(exc), token_error=True)
        except _SessionEnded as exc:
            return self._failed(str(exc), token_error=exc.token_error)
        except LinkLostError as exc:
            return self._failed(str(exc))
        except StoreOwnerError as exc:
            return self._failed(str(exc))
        except StoreError as exc:
            log.exception("engine: local store failure")
            return self._failed(f"local store failure: {exc}")
        except Exception as exc:
            log.exception("engine: unexpected failure")
            return self._failed(f"unexpected failure: {exc!r}")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._link = None
            await link.close()

    def _failed(self, text: str, token_error: bool = False) -> str:
        log.warning("engine: %s", text)
        self._set_state(error=text, token_error=token_error)
        return text

    async def _request(self, link: Link, event: str, payload: Any, reply: type[T]) -> T:
        """``call`` with retries of temporary refusals (rate limit, busy: jittered, capped at
        ``RETRY_CAP_S``) and the ack decoded into ``reply``.

        Raises:
            RequestRefused: a non-temporary refusal.
            _SessionEnded: a token refusal (reconnect with a fresh token).
            LinkLostError: the link dropped.
        """
        attempt = 0
        while True:
            try:
                data = await link.call(event, payload, self._call_timeout)
            except RequestRefused as exc:
                if exc.error.code in TOKEN_ERRORS and exc.error.code != ErrorCode.FORBIDDEN:
                    raise _SessionEnded(str(exc), token_error=True) from None
                if not exc.error.temporary:
                    raise
                attempt += 1
                await asyncio.sleep(delay(attempt, RETRY_CAP_S, base=0.1))
                continue
            try:
                return msgspec.convert(data, reply)
            except msgspec.ValidationError as exc:
                raise LinkLostError(f"the hub's answer to {event} was not understood: {exc}") from None

    # ------------------------------------------------------------------ frames and commands

    def _on_frame(self, event: str, data: Any) -> None:
        """Called by the link, synchronously and in arrival order."""
        if self._link is None or self._link.lost.is_set():
            return
        if event == events.SESSION_CLOSING:
            self._on_closing(data)
            return
        if len(self._queue) >= MAX_BUFFERED:
            if not self._overflow:
                log.warning("engine: more than %d frames waiting; dropping them and resyncing", MAX_BUFFERED)
            self._overflow = True
            self._queue = deque(e for e in self._queue if e[0] == "command")
            return
        self._queue.append(("frame", event, data))
        self._queued.set()

    def _command(self, name: str, arg: str) -> None:
        if self._link is not None:
            self._queue.append(("command", name, arg))
            self._queued.set()

    def _on_closing(self, data: Any) -> None:
        """``session.closing``: report why; when the hub says reconnecting will not help
        (``reconnect: false``), retry only at the capped pace."""
        try:
            closing = msgspec.convert(data, SessionClosing)
        except msgspec.ValidationError:
            return
        error = closing.error
        text = f"the hub is closing the connection: {error.name}: {error.message}"
        log.info("engine: %s", text)
        self._set_state(error=text, token_error=error.code in TOKEN_ERRORS)
        if not closing.reconnect:
            self._failures = max(self._failures, _SLOWEST_ATTEMPT)

    async def _dispatch(self, link: Link) -> None:
        """Initial sync, then every queued frame and command, one at a time, in order.

        The reconnect backoff restarts only once the initial sync completed: a hub that
        accepts the connection and then fails every sync is retried at a growing pace."""
        await self._full_sync(link)
        self._failures = 0
        while True:
            if self._overflow:
                self._overflow = False
                await self._full_sync(link)
                continue
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self._queue.popleft()
            if item[0] == "command":
                await self._run_command(link, item[1], item[2])
            else:
                await self._handle_frame(link, item[1], item[2])

    async def _run_command(self, link: Link, name: str, arg: str) -> None:
        try:
            if name == "stock.watch":
                await self._watch_stock_now(link, arg)
            elif name == "order.watch":
                await self._watch_order_now(link, arg)
            elif name == "track.watch":
                await self._watch_track_now(link, arg)
        except RequestRefused as exc:
            log.warning("engine: %s", exc)

    async def _handle_frame(self, link: Link, event: str, data: Any) -> None:
        durable = _DURABLE.get(event)
        try:
            if durable is not None:
                await self._live_durable(link, msgspec.convert(data, durable))
            elif event == events.CHAT_READ_FRAME:
                read = msgspec.convert(data, ReadFrame)
                await self.store.set_read(read, mine=read.party == f"user:{self._state.user}")
                self._emit(Change("read", stream=read.stream))
            elif event == events.CHAT_TYPING_FRAME:
                typing = msgspec.convert(data, TypingFrame)
                if typing.user != self._state.user:
                    self._emit(Change("typing", stream=typing.stream, user=typing.user))
            elif event == events.NOTIFY_BADGE:
                badge = msgspec.convert(data, BadgeFrame)
                await self.store.set_badge(badge.stream, badge.badge)
                self._emit(Change("badge", stream=badge.stream))
            elif event == events.ORDER_UPDATED:
                await self._apply_order(msgspec.convert(data, OrderUpdatedFrame).order)
            elif event == events.TRACK_POSITION:
                position = msgspec.convert(data, PositionFrame)
                await self.store.set_position(position, position.order_id)
                self._emit(Change("position", order_id=position.order_id))
            elif event == events.TRACK_ENDED:
                ended = msgspec.convert(data, TrackEndedFrame)
                await self.store.set_position(None, ended.order_id)
                self._emit(Change("position", order_id=ended.order_id))
            elif event == events.RESYNC:
                await self._full_sync(link)
        except msgspec.ValidationError as exc:
            log.warning("engine: ignoring a %s frame not understood: %s", event, exc)
        except RequestRefused as exc:
            log.warning("engine: while handling %s: %s", event, exc)

    async def _live_durable(self, link: Link, frame: DurableFrame) -> None:
        """The cursor rules for one live durable frame (stock: highest version per SKU first)."""
        if isinstance(frame, StockFrame):
            if await self.store.apply_stock_frame(frame):
                self._emit(Change("stock", boutique_id=frame.boutique_id, sku=frame.sku))
            if frame.boutique_id not in self._stock_watches:
                return  # a per-product watcher sees seq jumps; nothing to catch up
        outcome = await self.store.apply_frame(frame)
        if isinstance(frame, NotificationFrame):
            self._ack_notifications(link, frame.stream, [frame.seq])
            self._emit(Change("badge", stream=frame.stream))
        if outcome == "applied":
            self._announce([frame], live=True)
        elif outcome == "gap":
            cursor = await self.store.cursor(frame.stream)
            self._set_state(phase="syncing", done=0, total=frame.seq - cursor.seq)
            await self._catch_up(link, frame.stream)
            self._set_state(phase="live", done=0, total=0)
        elif outcome == "epoch":
            if isinstance(frame, StockFrame):
                await self.store.reset_stream(frame.stream, None)
                await self._watch_stock_now(link, frame.boutique_id)
            else:
                await self._full_sync(link)

    def _announce(self, frames: Sequence[DurableFrame], *, live: bool) -> None:
        """Changes for applied entries. A live notification about an order also watches that
        order (so its status follows), once."""
        for stream in dict.fromkeys(f.stream for f in frames if not isinstance(f, StockFrame)):
            self._emit(Change("entries", stream=stream))
        for frame in frames:
            if isinstance(frame, StockFrame) and not live:  # live ones were announced by version
                self._emit(Change("stock", boutique_id=frame.boutique_id, sku=frame.sku))
            if not isinstance(frame, NotificationFrame):
                continue
            job = job_order_of(frame, self._state.user)
            if job is not None:
                self._emit(Change("job", order_id=job))
            order_id = frame.data.get("order_id")
            if live and frame.category in ("order", "delivery") and isinstance(order_id, str):
                self.watch_order(order_id)

    def _ack_notifications(self, link: Link, stream: str, seqs: list[int]) -> None:
        """Tell the hub these inbox entries are stored (best effort: unacked ones come again)."""
        for start in range(0, len(seqs), 500):
            payload = to_wire(NotifyAckRequest(stream=stream, seqs=seqs[start : start + 500]))
            self._spawn(self._best_effort(link, events.NOTIFY_ACK, payload))

    async def _best_effort(self, link: Link, event: str, payload: Any) -> None:
        try:
            await link.call(event, payload, self._call_timeout)
        except (LinkLostError, RequestRefused) as exc:
            log.debug("engine: %s not delivered: %s", event, exc)

    # ------------------------------------------------------------------ catch-up

    async def _full_sync(self, link: Link) -> None:
        """Watches again, ``sync`` and catch-up of every stream behind, then the lists (orders,
        conversations, wishlist: read after the history, so they win over it); ends ``live``.

        A held cursor the protocol would refuse (a malformed stream id or epoch) is dropped
        with its stream and logged, so it cannot get the whole ``sync`` refused."""
        for boutique in sorted(self._stock_watches):
            await self._guarded(self._watch_stock_now(link, boutique))
        for order_id in sorted(self._track_watches):
            await self._guarded(self._watch_track_now(link, order_id))
        held: list[str] = []
        cursors: list[Cursor] = []
        for c in await self.store.cursors():
            if c.stream.startswith("inv:"):
                continue
            wire = {"stream": c.stream, "epoch": c.epoch, "seq": c.seq if c.epoch else 0}
            try:
                cursors.append(decode_value(wire, Cursor))
            except SokoError as exc:
                log.warning("engine: dropping %r, a malformed cursor: %s", c.stream, exc)
                await self.store.forget_stream(c.stream)
                self._emit(Change("entries", stream=c.stream))
                continue
            held.append(c.stream)
        reply = await self._request(
            link, events.SYNC, to_wire(SyncRequest(cursors=cursors[:MAX_CURSORS])), SyncReply
        )
        visible = {s.stream for s in reply.streams}
        for stream in held:
            if stream not in visible:
                await self.store.forget_stream(stream)
                self._emit(Change("entries", stream=stream))
        behind: list[str] = []
        total = 0
        for status in reply.streams:
            inbox = status.stream.startswith("inbox:")
            if not status.recovered:
                await self.store.reset_stream(status.stream, status.epoch, status.head)
                self._emit(Change("entries", stream=status.stream))
            await self.store.set_head(status.stream, status.head, status.unread if inbox else None)
            if inbox:
                self._emit(Change("badge", stream=status.stream))
            cursor = await self.store.cursor(status.stream)
            if status.head > cursor.seq:
                behind.append(status.stream)
                total += status.head - cursor.seq
        self._set_state(phase="syncing", done=0, total=total)
        for stream in behind:
            await self._catch_up(link, stream)
        await self._refresh_lists(link)
        self._set_state(phase="live", done=0, total=0)

    async def _catch_up(self, link: Link, stream: str) -> None:
        """Page ``stream`` from its cursor until the hub has no more, one local transaction per
        page, adding the applied entries to the state's ``done``. A stream the hub
        refuses (``forbidden``, ``not_found``, ``invalid_id``) is dropped and logged."""
        while True:
            cursor = await self.store.cursor(stream)
            request = CatchupRequest(
                stream=stream, epoch=cursor.epoch, after=cursor.seq, limit=self._page_size
            )
            try:
                page = await self._request(link, events.CATCHUP, to_wire(request), CatchupPage)
            except RequestRefused as exc:
                if exc.error.code in (ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.INVALID_ID):
                    log.warning("engine: dropping the local copy of %s: %s", stream, exc)
                    await self.store.forget_stream(stream)
                    self._emit(Change("entries", stream=stream))
                    return
                raise
            new = await self.store.apply_page(stream, page.epoch, page.recovered, page.entries, page.head)
            base = cursor.seq if page.recovered else 0
            applied = [f for f in page.entries if base < f.seq <= new.seq]
            if stream.startswith("inbox:") and page.entries:
                self._ack_notifications(link, stream, [f.seq for f in page.entries])
            if not page.recovered:
                self._emit(Change("entries", stream=stream))
            self._announce(applied, live=False)
            self._set_state(done=min(self._state.total, self._state.done + len(applied)))
            if not page.has_more:
                return
            if new.seq <= base:
                log.warning("engine: catch-up of %s made no progress at seq %d; stopping", stream, new.seq)
                return

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one optional step of a sync; a refusal is logged, not fatal."""
        try:
            await work
        except RequestRefused as exc:
            log.warning("engine: %s", exc)

    async def _refresh_lists(self, link: Link) -> None:
        """Orders (and their watches), conversations and, for shoppers, the wishlist."""
        role = self._state.role
        try:
            orders = await self._request(
                link, events.ORDER_LIST, to_wire(OrderListRequest(limit=ORDER_LIST_LIMIT)), OrderList
            )
        except RequestRefused as exc:
            log.warning("engine: %s", exc)
        else:
            await self.store.set_orders(orders.orders, complete=len(orders.orders) < ORDER_LIST_LIMIT)
            self._emit(Change("order"))
            if role == "driver":
                self._emit(Change("job"))
            for view in orders.orders:
                if view.status not in ENDED_STATUSES:
                    self._order_watches.add(view.order_id)
        for order_id in sorted(self._order_watches):
            await self._guarded(self._watch_order_now(link, order_id))
        try:
            conversations = await self._request(
                link, events.CHAT_LIST, to_wire(ConversationListRequest(limit=500)), ConversationList
            )
        except RequestRefused as exc:
            log.warning("engine: %s", exc)
        else:
            await self.store.set_conversations(conversations.conversations)
            self._emit(Change("conversations"))
        if role == "shopper":
            try:
                wishlist = await self._request(
                    link, events.WISHLIST_LIST, to_wire(WishlistListRequest(limit=500)), Wishlist
                )
            except RequestRefused as exc:
                log.warning("engine: %s", exc)
            else:
                if await self.store.set_wishlist(wishlist.items):
                    self._emit(Change("wishlist"))

    async def _apply_order(self, view: OrderView) -> None:
        await self.store.set_order(view)
        self._emit(Change("order", order_id=view.order_id))
        if view.driver_id is not None and view.driver_id == self._state.user:
            self._emit(Change("job", order_id=view.order_id))
        if view.status in ENDED_STATUSES:
            self._order_watches.discard(view.order_id)

    # ------------------------------------------------------------------ watches

    async def _watch_stock_now(self, link: Link, boutique_id: str) -> None:
        """``stock.watch`` the whole boutique, page the rest with ``stock.levels``, keep the
        highest versions and move the ``inv:`` cursor to the snapshot's head (live frames
        after it follow the gap rule; a gap is caught up with ``catchup``)."""
        if boutique_id not in self._stock_watches:
            return
        snapshot = await self._request(
            link, events.STOCK_WATCH, to_wire(StockWatchRequest(boutique_id=boutique_id)), StockSnapshot
        )
        first = snapshot
        while True:
            await self.store.apply_stock_snapshot(snapshot)
            if not snapshot.has_more or snapshot.next_after is None:
                break
            request = StockLevelsRequest(boutique_id=boutique_id, after=snapshot.next_after)
            snapshot = await self._request(link, events.STOCK_LEVELS, to_wire(request), StockSnapshot)
        await self.store.set_stock_cursor(first.stream or inventory(boutique_id), first.epoch, first.head)
        self._emit(Change("stock", boutique_id=boutique_id))

    async def _watch_order_now(self, link: Link, order_id: str) -> None:
        if order_id not in self._order_watches:
            return
        view = await self._request(
            link, events.ORDER_WATCH, to_wire(OrderWatchRequest(order_id=order_id)), OrderView
        )
        await self._apply_order(view)

    async def _watch_track_now(self, link: Link, order_id: str) -> None:
        if order_id not in self._track_watches:
            return
        snapshot = await self._request(
            link, events.TRACK_WATCH, to_wire(TrackRequest(order_id=order_id)), TrackSnapshot
        )
        if snapshot.position is not None:
            await self.store.set_position(snapshot.position, order_id)
        elif not snapshot.active:
            await self.store.set_position(None, order_id)
        self._emit(Change("position", order_id=order_id))

    def watch_stock(self, boutique_id: str) -> None:
        """Keep the boutique's stock current (snapshot now if connected, frames after, and again
        after every reconnect) until :meth:`unwatch_stock`."""
        if boutique_id not in self._stock_watches:
            self._stock_watches.add(boutique_id)
            self._command("stock.watch", boutique_id)

    def unwatch_stock(self, boutique_id: str) -> None:
        """Stop following the boutique's stock (what is known stays in the store)."""
        if boutique_id in self._stock_watches:
            self._stock_watches.discard(boutique_id)
            self._fire(events.STOCK_UNWATCH, StockWatchRequest(boutique_id=boutique_id))

    def watch_order(self, order_id: str) -> None:
        """Follow the order's status (``order.updated``) until it ends or :meth:`unwatch_order`.
        Orders of ours that are not finished are watched automatically at every connect."""
        if order_id not in self._order_watches:
            self._order_watches.add(order_id)
            self._command("order.watch", order_id)

    def unwatch_order(self, order_id: str) -> None:
        """Stop following the order's status."""
        if order_id in self._order_watches:
            self._order_watches.discard(order_id)
            self._fire(events.ORDER_UNWATCH, OrderWatchRequest(order_id=order_id))

    def watch_track(self, order_id: str) -> None:
        """Follow the order's driver position (latest only: the store keeps the newest fix) until
        :meth:`unwatch_track`; sent again after every reconnect."""
        if order_id not in self._track_watches:
            self._track_watches.add(order_id)
            self._command("track.watch", order_id)

    def unwatch_track(self, order_id: str) -> None:
        """Stop following the order's driver."""
        if order_id in self._track_watches:
            self._track_watches.discard(order_id)
            self._fire(events.TRACK_UNWATCH, TrackRequest(order_id=order_id))

    def _fire(self, event: str, request: msgspec.Struct) -> None:
        """Send a latest-value request now if connected; drop it otherwise."""
        link = self._link
        if link is not None and not link.lost.is_set():
            self._spawn(self._best_effort(link, event, to_wire(request)))

    # ------------------------------------------------------------------ outbox

    async def send_chat(self, stream: str, text: str) -> str:
        """Queue a chat message; returns its ``client_id`` once it is in the outbox (shown as
        pending by :meth:`LocalStore.messages`). Never waits for the network.

        Raises:
            ValueError: not a chat stream, empty or too long text (nothing queued).
        """
        client_id = await self.store.queue_chat(stream, text)
        self._emit(Change("outbox", stream=stream, client_id=client_id, status="pending"))
        self._emit(Change("entries", stream=stream))
        return client_id

    async def mark_read(self, stream: str, seq: int) -> None:
        """We have read ``stream`` (a chat or an inbox) up to ``seq``: moves the local read mark
        (and badge) now and tells the hub through the outbox. A mark not past the current one
        does nothing.

        Raises:
            ValueError: ``stream`` has no read marks (inventory), or ``seq`` < 0.
        """
        client_id = await self.store.queue_read(stream, seq)
        if client_id is None:
            return
        self._emit(Change("outbox", stream=stream, client_id=client_id, status="pending"))
        inbox = parse_stream(stream).kind in (StreamKind.USER_INBOX, StreamKind.BOUTIQUE_INBOX)
        self._emit(Change("badge" if inbox else "read", stream=stream))

    async def update_delivery(self, order_id: str, step: DeliveryStep) -> str:
        """Driver: queue ``delivery.update`` (``accepted``, ``picked_up`` or ``delivered``) for a
        job; the job shows the step at once (pending until acked). Returns the event id.

        Raises:
            ValueError: an unknown step.
        """
        event_id = await self.store.queue_delivery(order_id, step)
        self._emit(Change("outbox", order_id=order_id, client_id=event_id, status="pending"))
        self._emit(Change("job", order_id=order_id))
        return event_id

    async def wishlist_add(self, boutique_id: str, sku: str) -> str:
        """Shopper: add a product to the wishlist (shown at once, sent through the outbox)."""
        client_id = await self.store.queue_wishlist(True, boutique_id, sku)
        self._emit(Change("outbox", client_id=client_id, status="pending"))
        self._emit(Change("wishlist"))
        return client_id

    async def wishlist_remove(self, boutique_id: str, sku: str) -> str:
        """Shopper: remove a product from the wishlist (at once here, sent through the outbox)."""
        client_id = await self.store.queue_wishlist(False, boutique_id, sku)
        self._emit(Change("outbox", client_id=client_id, status="pending"))
        self._emit(Change("wishlist"))
        return client_id

    async def _drain(self, link: Link) -> None:
        """Send outbox items one at a time, oldest first, each until acked or refused for good."""
        while True:
            items = await self.store.pending(1)
            if not items:
                await self.store.wait_for_pending()
                continue
            await self._deliver(link, items[0])

    async def _deliver(self, link: Link, item: OutboxItem) -> None:
        event = _OUTBOX_EVENTS[item.kind]
        payload = msgspec.json.decode(item.payload)
        try:
            if item.kind == "chat":
                sent = await self._request(link, event, payload, ChatSent)
                settled = await self.store.settle_chat(item.id, sent)
            elif item.kind == "delivery":
                updated = await self._request(link, event, payload, DeliveryUpdated)
                settled = await self.store.settle_delivery(item.id, updated)
                self._emit(Change("job", order_id=item.order_id))
                self._emit(Change("order", order_id=item.order_id))
            elif item.kind in ("wishlist_add", "wishlist_remove"):
                wishlist = await self._request(link, event, payload, Wishlist)
                settled = await self.store.settle_wishlist(item.id, wishlist.items)
                self._emit(Change("wishlist"))
            elif item.kind == "notify_read":
                badge = await self._request(link, event, payload, BadgeFrame)
                settled = await self.store.settle(item.id)
                await self.store.set_badge(badge.stream, badge.badge)
                self._emit(Change("badge", stream=badge.stream))
            else:
                await self._request(link, event, payload, type(None))
                settled = await self.store.settle(item.id)
        except RequestRefused as exc:
            log.warning("engine: the hub refused outbox item %s for good: %s", item.client_id, exc)
            await self.store.fail(item.id, str(exc))
            self._emit(
                Change(
                    "outbox",
                    stream=item.stream,
                    order_id=item.order_id,
                    client_id=item.client_id,
                    status="failed",
                )
            )
            if item.kind == "chat":
                self._emit(Change("entries", stream=item.stream))
            elif item.kind == "delivery":
                self._emit(Change("job", order_id=item.order_id))
            return
        if settled:
            self._emit(
                Change(
                    "outbox",
                    stream=item.stream,
                    order_id=item.order_id,
                    client_id=item.client_id,
                    status="acked",
                )
            )
            if item.kind == "chat":
                self._emit(Change("entries", stream=item.stream))

    # ------------------------------------------------------------------ latest values

    def send_location(self, fix: LocationUpdate) -> None:
        """Driver: send this GPS fix as soon as connected. Latest only, never queued: a newer fix
        replaces one not yet sent, so after being offline only the newest is sent."""
        self._location = fix
        self._location_ready.set()

    def typing(self, stream: str) -> None:
        """Tell the other side we are typing in ``stream``; dropped when offline."""
        self._fire(events.CHAT_TYPING, TypingRequest(stream=stream))

    async def _send_locations(self, link: Link) -> None:
        """Send the newest fix whenever there is one; a fix whose send fails stays for the next
        connection unless a newer one replaced it meanwhile."""
        while True:
            if self._location is None:
                self._location_ready.clear()
                await self._location_ready.wait()
                continue
            fix = self._location
            try:
                self.last_location = await self._request(
                    link, events.DRIVER_LOCATION, to_wire(fix), LocationAccepted
                )
            except RequestRefused as exc:
                log.warning("engine: location fix refused: %s", exc)
            if self._location is fix:
                self._location = None
