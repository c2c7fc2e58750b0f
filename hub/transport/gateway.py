"""The Socket.IO edge: handshake, per-event authorization and limits, ack envelopes.

This module turns wire events into domain calls and domain errors into stable
error payloads. It owns connection state (who is connected, their rate bucket,
their token expiry) and the Engine.IO watchdog. Domain logic lives in
:mod:`hub.domains`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import socketio
from aiohttp import web

from hub.auth import Principal, TokenVerifier
from hub.config import Settings
from hub.domains.ports import order_room, presence_room, staff_room, track_room, user_room
from hub.limits import RateLimiter, TokenBucket
from hub.metrics import HubMetrics
from hub.services import Services
from hub.transport.deadlines import ExpiryBuckets
from hub.transport.fanout import FanoutManager, websocket_transport
from hub.transport.json_codec import OrjsonForSocketIO
from hub.transport.origin import OriginPolicy
from hub.transport.session import HubSocketServer
from protocol import PROTOCOL_VERSION, events
from protocol import messages as m
from protocol.codec import decode_value, to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role

log = logging.getLogger(__name__)

NAMESPACE = "/"
UNBOUND_ABORT_GRACE = 1.0
"""Seconds a session closed by the namespace watchdog has to close its websocket before it is aborted."""
ORDER_ROOM_PREFIX = order_room("")
TRACK_ROOM_PREFIX = track_room("")
MAX_STOCK_ROOMS = 1000
"""Most stock rooms (whole boutiques plus single products) one socket may watch at once."""
RESYNC_COALESCE = 0.5
"""Seconds during which requests to resync this node's sockets are merged into one frame."""
Handler = Callable[[Principal, str, Any], Awaitable[m.Frame | None]]


class Connection:
    """State of one connected socket."""

    __slots__ = (
        "bucket",
        "closing",
        "counted_present",
        "principal",
        "rate_key",
        "stock_rooms",
        "strikes",
    )

    def __init__(self, principal: Principal, bucket: TokenBucket) -> None:
        self.principal = principal
        self.bucket = bucket
        """This socket's own budget (the same size as the user's shared one)."""
        self.rate_key = f"{principal.role}:{principal.sub}"
        self.strikes = 0
        """Events this socket sent past its own budget since its last accepted one."""
        self.closing = False
        self.counted_present = False
        self.stock_rooms: set[str] = set()
        """The stock rooms this socket joined (python-socketio can only list them by scanning all rooms)."""


def error_payload(code: ErrorCode, message: str) -> dict[str, Any]:
    """The wire form of an error, for acks and ``session.closing``."""
    payload: dict[str, Any] = to_wire(SokoError(code, message).body())
    return payload


class SocketGateway:
    """Owns the python-socketio server and every connection on this node."""

    def __init__(
        self, settings: Settings, metrics: HubMetrics, verifier: TokenVerifier, node_id: str
    ) -> None:
        self._settings = settings
        self._bound: Services | None = None
        self._limiter: RateLimiter | None = None
        self._metrics = metrics
        self._verifier = verifier
        self._node_id = node_id
        self._connections: dict[str, Connection] = {}
        self._unbound_since: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._expiries = ExpiryBuckets(self._expire)
        """Each connection's token expiry; :meth:`_expire` closes it then."""
        self._accepting = True
        self._resync_pending = False
        self.origins = OriginPolicy(settings.allow_origin)
        self.manager = FanoutManager(
            max_queue=settings.send_queue_max,
            max_buffer_bytes=settings.send_buffer_max_bytes,
            websocket_deflate=settings.ws_deflate,
            on_slow_consumer=lambda _sid: metrics.fanout_drops.inc(),
        )
        self.sio = HubSocketServer(
            async_mode="aiohttp",
            client_manager=self.manager,
            json=OrjsonForSocketIO,
            cors_allowed_origins=self.origins.for_engineio,
            max_http_buffer_size=settings.max_frame_bytes,
            async_handlers=False,  # one connection's events are handled in order
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            shutdown_grace=settings.shutdown_grace,
            http_compression=False,
            logger=False,
            engineio_logger=False,
        )
        self._handlers: dict[str, Handler] = {}
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_event)

    # ------------------------------------------------------------------ lifecycle

    def bind(self, services: Services, rate_limiter: RateLimiter) -> None:
        """Give the gateway its services and limits; done once at startup, before any connection."""
        self._bound = services
        self._limiter = rate_limiter
        self._handlers = self._build_handlers()

    @property
    def _services(self) -> Services:
        if self._bound is None:
            raise RuntimeError("gateway used before bind()")
        return self._bound

    def attach(self, app: web.Application) -> None:
        """Serve Socket.IO at ``/socket.io/`` on ``app``, behind the Origin check."""
        app.middlewares.append(self.origins.middleware())
        self.sio.attach(app, socketio_path="socket.io")

    async def start(self) -> None:
        """Start the namespace watchdog."""
        self._watchdog = asyncio.create_task(self._watch_unbound(), name="soko-namespace-watchdog")

    async def deliver_local(self, rooms: Sequence[str], event: str, data: Any, skip: str | None) -> None:
        """Emit to this node's sockets in ``rooms`` (the broker calls this)."""
        await self.sio.emit(event, data, to=list(rooms), skip_sid=skip, namespace=NAMESPACE)

    async def evict_local(self, rooms: Sequence[str], holders: str) -> None:
        """Make this node's sockets in room ``holders`` leave ``rooms``."""
        for sid, _eio_sid in list(self.manager.get_participants(NAMESPACE, holders)):
            for room in rooms:
                await self.sio.leave_room(sid, room, namespace=NAMESPACE)

    async def resync_local(self) -> None:
        """Ask every socket on this node to run ``sync``: frames from other nodes may have been lost.

        Requests arriving within :data:`RESYNC_COALESCE` seconds of the first share one
        ``resync`` frame, sent that long after the first (so after each of them); the
        recoveries of several nodes after one Redis outage usually fall in one window.
        """
        if self._resync_pending:
            return
        self._resync_pending = True
        self._spawn(self._send_resync())

    async def _send_resync(self) -> None:
        await asyncio.sleep(RESYNC_COALESCE)
        self._resync_pending = False
        await self._recheck_order_rooms()
        frame = to_wire(m.ResyncFrame(reason="broker_recovered"))
        await self.sio.emit(events.RESYNC, frame, namespace=NAMESPACE)

    async def _recheck_order_rooms(self) -> None:
        """Evictions from other nodes may have been lost too: drop sockets that may no longer watch
        an order (reassigned driver) or track it (the order ended)."""
        checks = (
            (ORDER_ROOM_PREFIX, self._services.orders.revoked_watchers),
            (TRACK_ROOM_PREFIX, self._services.location.revoked_watchers),
        )
        rooms = list(self.manager.rooms.get(NAMESPACE, {}))
        for prefix, revoked_watchers in checks:
            for room in [r for r in rooms if isinstance(r, str) and r.startswith(prefix)]:
                watchers = {
                    sid: conn.principal
                    for sid, _eio_sid in list(self.manager.get_participants(NAMESPACE, room))
                    if (conn := self._connections.get(sid)) is not None
                }
                try:
                    revoked = await revoked_watchers(room.removeprefix(prefix), watchers)
                except Exception:
                    log.exception("re-checking the watchers of %s failed", room)
                    continue
                for sid in revoked:
                    await self.sio.leave_room(sid, room, namespace=NAMESPACE)

    async def shutdown(self) -> None:
        """Stop accepting, tell every client to reconnect elsewhere, and disconnect them."""
        self._accepting = False
        self._expiries.close()  # every connection is closed below anyway
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        closing = [
            self.close_with(
                sid, ErrorCode.SERVER_SHUTDOWN, "the hub is restarting; reconnect", reconnect=True
            )
            for sid in list(self._connections)
        ]
        await asyncio.gather(*closing, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sio.shutdown()  # waits up to shutdown_grace for the WebSockets to finish closing

    def connection_count(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------------ handshake

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        if not self._accepting:
            self._metrics.rejected_handshakes.labels("shutdown").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "the hub is shutting down",
                error_payload(ErrorCode.SERVER_SHUTDOWN, "the hub is shutting down"),
            )
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = self._verifier.verify(token)
        except SokoError as exc:
            self._metrics.rejected_handshakes.labels(exc.code.slug).inc()
            # The client's connect_error carries {"message": ..., "data": ErrorBody}.
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, error_payload(exc.code, exc.message)
            ) from None
        conn = Connection(principal, TokenBucket(self._settings.rate_per_second, self._settings.rate_burst))
        self._expiries.add(sid, principal.expires_at)
        self._connections[sid] = conn
        # Rooms are entered last and without awaiting, so no frame can be queued before the CONNECT reply.
        self.manager.basic_enter_room(sid, NAMESPACE, user_room(principal.sub))
        if principal.role is Role.STAFF and principal.boutique is not None:
            self.manager.basic_enter_room(sid, NAMESPACE, staff_room(principal.boutique))
        self._metrics.connections.set(len(self._connections))
        self._spawn(self._after_connect(sid, conn))

    async def _after_connect(self, sid: str, conn: Connection) -> None:
        for _ in range(100):
            if self.manager.is_connected(sid, NAMESPACE):
                break
            await asyncio.sleep(0.01)
        principal = conn.principal
        welcome = m.Welcome(
            protocol=PROTOCOL_VERSION,
            user=principal.sub,
            role=str(principal.role),
            boutique=principal.boutique,
            node=self._node_id,
            token_expires_at=int(principal.expires_at),
        )
        if self._connections.get(sid) is not conn:
            return  # gone before it was fully connected
        await self.sio.emit(events.WELCOME, to_wire(welcome), to=sid, namespace=NAMESPACE)
        if principal.role is Role.STAFF and principal.boutique is not None:
            conn.counted_present = True  # before the await, so a disconnect meanwhile uncounts it
            await self._services.presence.staff_connected(principal.boutique, self._member(sid))
        for frame in await self._services.notifications.pending_for(principal):
            await self.sio.emit(events.NOTIFICATION, to_wire(frame), to=sid, namespace=NAMESPACE)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._connections.pop(sid, None)
        self._metrics.connections.set(len(self._connections))
        if conn is None:
            return
        self._expiries.discard(sid, conn.principal.expires_at)
        self._services.chat.forget_connection(sid)
        if conn.counted_present and conn.principal.boutique is not None:
            await self._services.presence.staff_disconnected(conn.principal.boutique, self._member(sid))

    def _member(self, sid: str) -> str:
        """This socket's name in the cluster-wide presence ledger."""
        return f"{self._node_id}:{sid}"

    def _expire(self, sid: str) -> None:
        self._spawn(
            self.close_with(
                sid, ErrorCode.TOKEN_EXPIRED, "token expired; reconnect with a fresh token", reconnect=True
            )
        )

    async def close_with(self, sid: str, code: ErrorCode, message: str, *, reconnect: bool) -> None:
        """Send ``session.closing`` with ``code``, then close the connection (once)."""
        conn = self._connections.get(sid)
        if conn is None or conn.closing:
            return
        conn.closing = True
        closing = to_wire(m.SessionClosing(error=SokoError(code, message).body(), reconnect=reconnect))
        with contextlib.suppress(Exception):
            await self.sio.emit(events.SESSION_CLOSING, closing, to=sid, namespace=NAMESPACE)
        # Closing the Engine.IO session (not a Socket.IO DISCONNECT, which official clients
        # take as "do not reconnect") lets clients reconnect on their own.
        eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is not None:
            await self._close_session(eio_sid, code.slug)

    # ------------------------------------------------------------------ events

    async def _on_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        conn = self._connections.get(sid)
        if conn is None:
            return _fail(ErrorCode.UNAUTHENTICATED, "not connected")
        if conn.closing:
            # Temporary: the client should reconnect and send it again, not give the request up.
            return _fail(ErrorCode.UNAVAILABLE, "this connection is closing; reconnect and retry")
        metrics = self._metrics
        metrics.child(metrics.events_in, event if event in self._handlers else "unknown").inc()
        # The socket's own bucket decides who gets strikes; the shared one is the user's budget,
        # so a polite socket is refused (never disconnected) while the user's other device floods.
        own = conn.bucket.take()
        if not own or self._limiter is None or not await self._limiter.allow(conn.rate_key):
            conn.strikes += 0 if own else 1
            metrics.child(metrics.errors, str(int(ErrorCode.RATE_LIMITED))).inc()
            if conn.strikes > self._settings.rate_strikes:
                self._spawn(
                    self.close_with(sid, ErrorCode.RATE_LIMITED, "too many events; slow down", reconnect=True)
                )
            return _fail(
                ErrorCode.RATE_LIMITED, f"more than {self._settings.rate_per_second:g} events/s; slow down"
            )
        conn.strikes = 0
        handler = self._handlers.get(event)
        if handler is None:
            metrics.child(metrics.errors, str(int(ErrorCode.UNKNOWN_EVENT))).inc()
            return _fail(ErrorCode.UNKNOWN_EVENT, f"unknown event {event[:64]!r}")
        if len(args) != 1:
            return _fail(ErrorCode.BAD_REQUEST, "every event takes exactly one object argument")
        started = time.perf_counter()
        try:
            request = decode_value(args[0], events.CLIENT_EVENTS[event])
            result = await handler(conn.principal, sid, request)
        except SokoError as exc:
            metrics.child(metrics.errors, str(int(exc.code))).inc()
            return {"ok": False, "error": to_wire(exc.body())}
        except Exception:
            log.exception("handler for %s failed", event)
            metrics.child(metrics.errors, str(int(ErrorCode.INTERNAL))).inc()
            return _fail(ErrorCode.INTERNAL, "internal error; retry later")
        finally:
            metrics.child(metrics.handler_seconds, event).observe(time.perf_counter() - started)
        return {"ok": True, "data": to_wire(result)}

    def _build_handlers(self) -> dict[str, Handler]:
        s = self._services

        async def sync(p: Principal, _sid: str, r: m.SyncRequest) -> m.Frame:
            return await s.sync.sync(p, r)

        async def catchup(p: Principal, _sid: str, r: m.CatchupRequest) -> m.Frame:
            page = await s.sync.catchup(p, r)
            self._metrics.catchup_entries.observe(len(page.entries))
            return page

        async def chat_send(p: Principal, _sid: str, r: m.ChatSend) -> m.Frame:
            return await s.chat.send(p, r)

        async def chat_history(p: Principal, _sid: str, r: m.HistoryRequest) -> m.Frame:
            return await s.chat.history(p, r)

        async def chat_read(p: Principal, _sid: str, r: m.ReadRequest) -> None:
            await s.chat.mark_read(p, r)

        async def chat_typing(p: Principal, sid: str, r: m.TypingRequest) -> None:
            await s.chat.typing(p, sid, r)

        async def chat_list(p: Principal, _sid: str, r: m.ConversationListRequest) -> m.Frame:
            return await s.chat.conversations(p, r.limit)

        async def presence_watch(_p: Principal, sid: str, r: m.PresenceRequest) -> m.Frame:
            for boutique in r.boutiques:
                await self.sio.enter_room(sid, presence_room(boutique), namespace=NAMESPACE)
            return await s.presence.snapshot(list(r.boutiques))

        async def notify_ack(p: Principal, _sid: str, r: m.NotifyAckRequest) -> None:
            await s.notifications.ack(p, r)

        async def notify_read(p: Principal, _sid: str, r: m.NotifyReadRequest) -> m.Frame:
            return await s.notifications.mark_read(p, r)

        async def notify_prefs(p: Principal, _sid: str, r: m.PrefsRequest) -> m.Frame:
            return await s.notifications.preferences(p, r)

        async def order_watch(p: Principal, sid: str, r: m.OrderWatchRequest) -> m.Frame:
            order = await s.orders.watchable(p, r.order_id)
            await self.sio.enter_room(sid, order_room(r.order_id), namespace=NAMESPACE)
            return order

        async def order_unwatch(_p: Principal, sid: str, r: m.OrderWatchRequest) -> None:
            await self.sio.leave_room(sid, order_room(r.order_id), namespace=NAMESPACE)

        async def order_list(p: Principal, _sid: str, r: m.OrderListRequest) -> m.Frame:
            return await s.orders.list_for(p, r.limit)

        async def delivery_update(p: Principal, _sid: str, r: m.DeliveryUpdate) -> m.Frame:
            return await s.orders.delivery_update(p, r)

        table: dict[str, Handler] = {
            **self._logistics_handlers(),
            events.SYNC: sync,
            events.CATCHUP: catchup,
            events.CHAT_SEND: chat_send,
            events.CHAT_HISTORY: chat_history,
            events.CHAT_READ: chat_read,
            events.CHAT_TYPING: chat_typing,
            events.CHAT_LIST: chat_list,
            events.PRESENCE_WATCH: presence_watch,
            events.NOTIFY_ACK: notify_ack,
            events.NOTIFY_READ: notify_read,
            events.NOTIFY_PREFS: notify_prefs,
            events.ORDER_WATCH: order_watch,
            events.ORDER_UNWATCH: order_unwatch,
            events.ORDER_LIST: order_list,
            events.DELIVERY_UPDATE: delivery_update,
        }
        assert table.keys() == events.CLIENT_EVENTS.keys(), "every client event needs exactly one handler"
        return table

    def _logistics_handlers(self) -> dict[str, Handler]:
        """Handlers of the inventory, wishlist, location and device events."""
        s = self._services

        async def stock_update(p: Principal, _sid: str, r: m.StockUpdateRequest) -> m.Frame:
            reply = await s.inventory.update(p, r)
            for outcome in reply.results:
                self._metrics.count_stock(outcome, "socket")
            return reply

        async def stock_watch(p: Principal, sid: str, r: m.StockWatchRequest) -> m.Frame:
            rooms = s.inventory.watch_rooms(p, r)
            held = self._connections[sid].stock_rooms
            if len(held | set(rooms)) > MAX_STOCK_ROOMS:
                raise SokoError(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"a connection watches at most {MAX_STOCK_ROOMS} boutiques and products",
                )
            # Join first, then read: a change committed in between arrives both ways, never neither.
            for room in rooms:
                await self.sio.enter_room(sid, room, namespace=NAMESPACE)
                held.add(room)
            return await s.inventory.snapshot(p, r)

        async def stock_unwatch(p: Principal, sid: str, r: m.StockWatchRequest) -> None:
            held = self._connections[sid].stock_rooms
            for room in s.inventory.watch_rooms(p, r):
                await self.sio.leave_room(sid, room, namespace=NAMESPACE)
                held.discard(room)

        async def stock_levels(p: Principal, _sid: str, r: m.StockLevelsRequest) -> m.Frame:
            return await s.inventory.levels(p, r)

        async def stock_threshold(p: Principal, _sid: str, r: m.ThresholdRequest) -> m.Frame:
            return await s.inventory.set_threshold(p, r)

        async def wishlist_add(p: Principal, _sid: str, r: m.WishlistRequest) -> m.Frame:
            return await s.inventory.wish(p, r)

        async def wishlist_remove(p: Principal, _sid: str, r: m.WishlistRequest) -> m.Frame:
            return await s.inventory.unwish(p, r)

        async def wishlist_list(p: Principal, _sid: str, r: m.WishlistListRequest) -> m.Frame:
            return await s.inventory.wishlist(p, r)

        async def driver_location(p: Principal, _sid: str, r: m.LocationUpdate) -> m.Frame:
            return await s.location.report(p, r)

        async def track_watch(p: Principal, sid: str, r: m.TrackRequest) -> m.Frame:
            async def join() -> None:
                await self.sio.enter_room(sid, track_room(r.order_id), namespace=NAMESPACE)

            return await s.location.watch(p, r.order_id, join)

        async def track_unwatch(_p: Principal, sid: str, r: m.TrackRequest) -> None:
            await self.sio.leave_room(sid, track_room(r.order_id), namespace=NAMESPACE)

        async def track_history(p: Principal, _sid: str, r: m.TrackHistoryRequest) -> m.Frame:
            return await s.location.history(p, r)

        async def dispatch_nearby(p: Principal, _sid: str, r: m.NearbyRequest) -> m.Frame:
            return await s.location.nearby(p, r)

        async def device_health(p: Principal, _sid: str, r: m.DeviceHealthReport) -> m.Frame:
            accepted = await s.devices.report(p, r)
            self._metrics.count_device_health(r.state, accepted.duplicate)
            return accepted

        return {
            events.STOCK_UPDATE: stock_update,
            events.STOCK_WATCH: stock_watch,
            events.STOCK_UNWATCH: stock_unwatch,
            events.STOCK_LEVELS: stock_levels,
            events.STOCK_THRESHOLD: stock_threshold,
            events.WISHLIST_ADD: wishlist_add,
            events.WISHLIST_REMOVE: wishlist_remove,
            events.WISHLIST_LIST: wishlist_list,
            events.DRIVER_LOCATION: driver_location,
            events.TRACK_WATCH: track_watch,
            events.TRACK_UNWATCH: track_unwatch,
            events.TRACK_HISTORY: track_history,
            events.DISPATCH_NEARBY: dispatch_nearby,
            events.DEVICE_HEALTH: device_health,
        }

    # ------------------------------------------------------------------ watchdog

    async def _watch_unbound(self) -> None:
        """Close Engine.IO sessions that never connect the namespace within the timeout."""
        timeout = self._settings.namespace_timeout
        while True:
            try:
                await asyncio.sleep(min(1.0, timeout / 4))
                now = time.monotonic()
                live = self.sio.eio.sockets
                for eio_sid in list(self._unbound_since):
                    if eio_sid not in live:
                        del self._unbound_since[eio_sid]
                for eio_sid in list(live):
                    if self.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None:
                        self._unbound_since.pop(eio_sid, None)
                        continue
                    since = self._unbound_since.setdefault(eio_sid, now)
                    if now - since >= timeout:
                        del self._unbound_since[eio_sid]
                        self._metrics.rejected_handshakes.labels("namespace_timeout").inc()
                        await self._close_unbound(eio_sid)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("namespace watchdog iteration failed; continuing")

    async def _close_unbound(self, eio_sid: str) -> None:
        """Close the Engine.IO session and, for a websocket, its TCP connection.

        Engine.IO's close sends CLOSE and starts the WebSocket closing handshake; a peer
        that ignores both would keep the connection for the handshake's timeout, so the
        transport is aborted after a grace period.
        """
        transport = websocket_transport(self.sio, eio_sid)
        await self._close_session(eio_sid, "namespace timeout")
        if transport is not None:
            # Give the CLOSE packet a moment to be written, then cut a peer that ignores it.
            asyncio.get_running_loop().call_later(
                UNBOUND_ABORT_GRACE, lambda: None if transport.is_closing() else transport.abort()
            )

    async def _close_session(self, eio_sid: str, reason: str) -> None:
        """Close an Engine.IO session without waiting for its queue to drain.

        Frames already queued (such as ``session.closing``) are still written before
        the CLOSE packet. Never waits on the peer: engineio's waiting close can hang
        forever on a polling session whose client stopped polling.
        """
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is not None and not socket.closed and not socket.closing:
            await socket.close(wait=False, abort=False, reason=reason)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background connection task failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _fail(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"ok": False, "error": error_payload(code, message)}
