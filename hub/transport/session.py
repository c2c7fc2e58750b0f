"""Engine.IO sessions without a task per message (DESIGN.md principle 6).

python-engineio's ``AsyncSocket`` wraps every WebSocket read in a new task plus an
``asyncio.wait_for`` timer, keeps a writer task parked in ``wait_for`` on its send
queue for the whole session, and sleeps out each ping interval in a task of its own.
That is work per inbound message (GPS fixes, chat) and memory per idle connection.
:class:`HubSocket` keeps engineio's protocol, state flags and send queue, and changes
only how a session waits and sends:

* Reads await the WebSocket directly. A peer that goes silent is found by the ping
  timeout, which engineio's service task checks for every session (so
  ``monitor_clients=False`` is refused), not by a timer per read.
* A ping is an entry in the server's :class:`~hub.transport.deadlines.FixedDelayQueue`,
  not a sleeping task (nor a loop timer per session).
* A packet sent while nothing is queued and the session's
  :class:`~hub.transport.direct.DirectLink` is ready is written to the WebSocket at
  once, by the rule the fan-out follows. Anything else is queued, and a writer task
  runs only while the queue is not empty. CLOSE always goes through the writer,
  which closes the WebSocket after sending it.
* Closing a session closes its WebSocket, which engineio left to its read timeout.
* The send queue is a :class:`~hub.transport.send_queue.SendQueue`, which holds no
  memory while empty, instead of an ``asyncio.Queue``.
* A WebSocket session runs in a task of its own once its connection is adopted from
  aiohttp (:mod:`hub.transport.websocket`), so the server's :meth:`HubEngineServer.shutdown`
  closes those sessions and waits for their WebSockets, which aiohttp no longer does.

Long-polling sessions are engineio's, except for how pings are scheduled and the send queue.
:class:`HubSocketServer` is ``socketio.AsyncServer`` with sessions of this kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Final

import engineio
import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from hub.transport.deadlines import FixedDelayQueue
from hub.transport.direct import DirectLink, text_frame
from hub.transport.send_queue import SendQueue
from hub.transport.websocket import AdoptedWebSocket

__all__ = ["HubEngineServer", "HubSocket", "HubSocketServer"]


class HubSocket(AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session; engineio's, minus the per-message tasks (see the module docstring).

    Instances start life as engineio ``AsyncSocket`` objects and become ``HubSocket``
    when :class:`HubEngineServer` stores them, so ``__init__`` never runs here: the
    attributes below are class-level defaults until first set.

    On WebSocket the send queue holds only what could not be written at once, and a
    writer task exists only while it is not empty. ``None`` in the queue means "close
    the WebSocket once everything before it is sent". Once the WebSocket is closing or
    gone, packets are dropped, as engineio drops what its writer could not send.
    """

    last_ping: float | None
    connected: bool
    upgrading: bool
    upgraded: bool

    _ws: Any = None
    """The WebSocket this session is served over (engineio's driver object), once upgraded;
    None again once its handler has ended."""

    _ws_gone = False
    """True once the WebSocket is closing or closed; nothing more can be sent."""

    _link: DirectLink | None = None
    """Direct writes to :attr:`_ws`, while it is open and uncompressed."""

    _writer: asyncio.Task[None] | None = None
    """The task sending what is queued, while the queue is not empty (or closing the WebSocket)."""

    @property
    def websocket_transport(self) -> asyncio.Transport | None:
        """The TCP (or TLS) transport of the WebSocket this session is served over; None on polling."""
        ws = self._ws
        return None if ws is None else ws.transport

    def _sync_link(self) -> None:
        """Tell the link whether a direct write now would follow everything sent so far.

        Called wherever the answer can turn: a packet queued, the writer finished, the
        WebSocket abandoned, the session served over it. It cannot turn elsewhere: the
        link becomes the session's only once the upgrade is complete, the writer only
        empties the queue while it runs, and :meth:`close` clears the flag itself.
        """
        link = self._link
        if link is not None:
            is_open = not self.closing and not self.closed and not self._ws_gone
            link.session_idle(is_open and self._writer is None and self.queue.empty())

    def schedule_ping(self) -> None:
        """Send a PING after ``ping_interval``, unless one is already waiting for its PONG.

        At most one PING is scheduled at a time: this runs at connect and after each PONG,
        and only once per PING sent (``last_ping`` is set by the PING and cleared here).
        """
        if self.last_ping:
            self.last_ping = None
            self.server.pings.add(self._ping)

    def _ping(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.post(eio_packet.Packet(eio_packet.PING))

    async def send(self, pkt: eio_packet.Packet) -> None:
        """Send ``pkt``; a session past its ping timeout is closed instead (engineio's contract)."""
        if await self.check_ping_timeout():
            self.post(pkt)

    def post(self, pkt: eio_packet.Packet | None) -> None:
        """Send ``pkt`` without waiting, after everything sent before it; never raises.

        Written to the WebSocket at once when :meth:`DirectLink.ready` holds (CLOSE and
        binary packets excepted); otherwise queued. On WebSocket a queued packet starts
        the writer; on polling the next poll takes it. ``None`` asks the writer to close
        the WebSocket. Dropped once the WebSocket is closing or gone.
        """
        if self._ws_gone:
            return
        link = self._link
        if pkt is not None and link is not None and pkt.packet_type != eio_packet.CLOSE and link.ready():
            encoded = pkt.encode()
            if isinstance(encoded, str):
                link.write(text_frame(encoded))
                return
        self.queue.put_nowait(pkt)
        if self._ws is not None and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued(self._ws))
        self._sync_link()

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """engineio's close, which, on WebSocket, also closes the WebSocket.

        The writer sends what is queued (CLOSE included, unless ``abort`` or a ping
        timeout left it out) and then closes the WebSocket, which ends the read loop.
        Never waits on the peer beyond what engineio's ``wait`` asks for.
        """
        first = not self.closing and not self.closed
        if self._link is not None:
            self._link.session_idle(False)  # the disconnect handlers' own emits must not go direct
        await super().close(wait=wait, abort=abort, reason=reason)
        if first and self._ws is not None:
            self.post(None)

    def _abandon_websocket(self) -> None:
        """Stop sending on the WebSocket: drop what is queued and every later packet."""
        self._ws_gone = True
        self._sync_link()
        self._link = None
        queue = self.queue
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()

    async def _write_queued(self, ws: Any) -> None:
        """Send the queue in order until it is empty; at ``None`` or on a failed send, close ``ws``."""
        try:
            if await self._send_queue(ws):
                return
            self._abandon_websocket()
            await ws.close()
        finally:
            self._writer = None
            self._sync_link()

    async def _send_queue(self, ws: Any) -> bool:
        """True once the queue is empty; False at ``None`` or when a send fails (the peer is gone)."""
        queue = self.queue
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                return False
            try:
                await ws.send(pkt.encode())
            except Exception:
                return False
        return True

    async def _websocket_handler(self, ws: Any) -> None:
        """Serve this session over ``ws`` until the WebSocket closes, then close the session.

        The session is closed (its disconnect handlers run) however this ends, also
        when its task is cancelled at shutdown (see :meth:`HubEngineServer.shutdown`).
        """
        if self.connected:
            if not await self._finish_upgrade(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        self._ws = ws
        self._link = getattr(ws, "link", None)
        if not self.queue.empty():  # the OPEN packet, or what was queued while upgrading
            self._writer = asyncio.get_running_loop().create_task(self._write_queued(ws))
        self._sync_link()
        try:
            await self._receive_until_closed(ws)
            if self._link is not None:
                self._link.session_idle(False)
                self._link = None
            if self._writer is not None:
                await self._writer  # sends what is left if it can, or finishes closing
            await ws.close()
        finally:
            self._abandon_websocket()
            if self._writer is not None:
                self._writer.cancel()
            try:
                await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            finally:
                self._ws = None  # a PING still scheduled keeps this session until due, not its WebSocket

    async def _finish_upgrade(self, ws: Any) -> bool:
        """Run the probe exchange that moves a polling session to ``ws``; True once upgraded.

        While it runs, packets are queued (``upgrading``); the NOOP ends the client's
        pending poll. On any failure the session stays on polling. A second WebSocket
        arriving while one is probing, or after the upgrade, is refused.
        """
        if self.upgrading or self.upgraded:
            return False
        self.upgrading = True
        try:
            probe = eio_packet.Packet(encoded_packet=await ws.wait())
            if probe.packet_type != eio_packet.PING or probe.data != "probe":
                return False
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
            upgrade = eio_packet.Packet(encoded_packet=await ws.wait())
            if upgrade.packet_type != eio_packet.UPGRADE:
                return False
            self.upgraded = True
            return True
        except OSError:
            return False
        finally:
            self.upgrading = False

    async def _receive_until_closed(self, ws: Any) -> None:
        """Hand each message to engineio's ``receive`` until the WebSocket closes or fails.

        A message over ``max_http_buffer_size`` ends the session, as in engineio.
        Cancellation also ends the loop without propagating, as in engineio: the
        caller still closes the session, so its disconnect handlers run.
        """
        max_size = self.server.max_http_buffer_size
        while True:
            try:
                data = await ws.wait()
            except (Exception, asyncio.CancelledError):
                return
            if len(data) > max_size:
                return
            try:
                await self.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                pass
            except eio_exceptions.SocketIsClosedError:
                return
            except Exception:
                self.server.logger.exception("Unknown receive error")


class _SessionTable(dict[str, Any]):
    """engineio's ``sockets`` table; a plain ``AsyncSocket`` stored in it becomes a :class:`HubSocket`.

    engineio creates every session as ``AsyncSocket`` in ``AsyncServer._handle_connect``
    and offers no hook for the class. It stores the new session here before using it
    (before its OPEN packet is queued), so this is where the class is switched.

    Raises:
        TypeError: a stored session is neither an ``AsyncSocket`` nor a ``HubSocket``
            (an engineio that creates sessions differently), rather than letting the
            fan-out fail on it later.
    """

    def __init__(self, table: Mapping[str, Any]) -> None:
        super().__init__()
        for sid, socket in table.items():
            self[sid] = socket

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            socket.__class__ = HubSocket
        if not isinstance(socket, HubSocket):
            raise TypeError(f"engineio stored a {type(socket).__name__}, not an AsyncSocket")
        super().__setitem__(sid, socket)


class HubEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """``engineio.AsyncServer`` whose sessions are :class:`HubSocket` objects; aiohttp mode only.

    Takes engineio's arguments, plus ``shutdown_grace`` (see :meth:`shutdown`).

    Raises:
        ValueError: another ``async_mode``, or ``monitor_clients=False`` (the ping
            timeout is what ends a silent WebSocket session).
    """

    def __init__(self, *, shutdown_grace: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shutdown_grace = shutdown_grace
        """Seconds :meth:`shutdown` gives open WebSockets to finish closing."""
        if self.async_mode != "aiohttp":
            raise ValueError(f"HubEngineServer runs on aiohttp only, not {self.async_mode!r}")
        if not self.start_service_task:
            raise ValueError("HubEngineServer needs monitor_clients: its ping checks end silent sessions")
        self.pings = FixedDelayQueue(self.ping_interval)
        """When each session sends its next PING: ``ping_interval`` after its client's PONG."""
        self._shut_down = False
        self._websockets: dict[asyncio.Task[None], AdoptedWebSocket] = {}
        """The task serving each adopted WebSocket (see :mod:`hub.transport.direct`), and the WebSocket."""

    def serve_websocket(self, serving: Coroutine[Any, Any, None], websocket: AdoptedWebSocket) -> None:
        """Run ``serving``, the session served over ``websocket``, in a task tracked until it ends."""
        task = asyncio.get_running_loop().create_task(serving)
        self._websockets[task] = websocket
        task.add_done_callback(self._websockets.pop)

    async def shutdown(self) -> None:
        """Close every session, let their WebSockets finish closing, then stop engineio's service task.

        The hub calls this (through ``HubSocketServer.shutdown``) when it stops, after
        telling its clients why. Sessions still open are closed without waiting for
        their peers, so their disconnect handlers run. A WebSocket is no longer an
        aiohttp request once open, so aiohttp's own shutdown neither waits for it nor
        closes it: each gets up to ``shutdown_grace`` seconds to finish its close
        handshake, then its connection is aborted and its task cancelled, which gets as
        long again to end (a disconnect handler that hangs past it is logged and left).
        A WebSocket still probing an upgrade has no session on it yet, so it waits out
        the grace and is aborted. Calling this again does nothing.
        """
        if self._shut_down:
            return
        self._shut_down = True
        open_sessions = [s for s in self.sockets.values() if not s.closing and not s.closed]
        await asyncio.gather(
            *(s.close(wait=False, reason=self.reason.SERVER_DISCONNECT) for s in open_sessions),
            return_exceptions=True,
        )
        if self._websockets:
            await asyncio.wait(set(self._websockets), timeout=self.shutdown_grace)
        remaining = dict(self._websockets)
        for task, websocket in remaining.items():
            websocket.abort()
            task.cancel()
        if remaining:
            _, stuck = await asyncio.wait(set(remaining), timeout=self.shutdown_grace)
            if stuck:
                self.logger.error("%d WebSocket sessions did not end at shutdown", len(stuck))
        await super().shutdown()

    def create_queue(self) -> SendQueue:
        """A session's send queue: a :class:`SendQueue` (engineio creates one per session here)."""
        return SendQueue()

    @property
    def sockets(self) -> dict[str, Any]:
        """Engine.IO sid -> session; assigning any mapping keeps the class switch in place."""
        return self._sessions

    @sockets.setter
    def sockets(self, table: Mapping[str, Any]) -> None:
        self._sessions = _SessionTable(table)


_REQUEST_OBJECTS: Final = frozenset({"aiohttp.request", "wsgi.input"})
"""Environ keys holding the live aiohttp request that opened a session (and its body reader)."""


class HubSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """``socketio.AsyncServer`` on :class:`HubEngineServer`; takes the same arguments.

    python-socketio keeps the environ of the request that opened each session for the
    session's life, and hands it to ``connect`` handlers. It keeps a copy without
    ``aiohttp.request`` and ``wsgi.input`` here: holding the finished request would
    keep its headers, its payload reader and aiohttp's connection state alive with
    the session (for a WebSocket, everything its adoption freed).
    """

    def _engineio_server_class(self) -> type[HubEngineServer]:
        return HubEngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        kept = {key: value for key, value in environ.items() if key not in _REQUEST_OBJECTS}
        await super()._handle_eio_connect(eio_sid, kept)
