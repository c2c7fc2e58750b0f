"""Engine.IO sessions without a task per message (DESIGN.md principle 6).

python-engineio's ``AsyncSocket`` wraps every WebSocket read in a new task plus an
``asyncio.wait_for`` timer, makes its writer wait for the send queue through
``wait_for`` as well (one more task per wake-up), and sleeps out each ping interval in
a task of its own. That is work per inbound message (GPS fixes, chat) and memory per
idle connection. :class:`HubSocket` keeps engineio's protocol, state flags, send queue
and writer, and changes only how a session waits and sends:

* Reads await the WebSocket directly. A peer that goes silent is found by the ping
  timeout, which engineio's service task checks for every session, not by a timer per
  read. Oversized messages are refused by aiohttp (``max_msg_size``), which ends the
  session as engineio's own size check does.
* On WebSocket the writer awaits its queue without a timeout; long-polling requests
  keep engineio's, which ends a poll the client abandoned.
* A ping is one loop timer (``call_later``), not a sleeping task.
* A packet sent while the session's :class:`~hub.transport.direct.DirectLink` is ready
  is written to the WebSocket at once, by the rule the fan-out follows, so an ack or a
  ping does not wake the writer. CLOSE always goes through the writer, which closes
  the WebSocket after sending it.

:class:`HubSocketServer` is ``socketio.AsyncServer`` with sessions of this kind.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import engineio
import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket

from hub.transport.direct import DirectLink, text_frame

__all__ = ["HubEngineServer", "HubSocket", "HubSocketServer"]


class HubSocket(AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session; engineio's, minus the per-message tasks (see the module docstring).

    Instances start life as engineio ``AsyncSocket`` objects and become ``HubSocket``
    when :class:`HubEngineServer` stores them, so ``__init__`` never runs here: the
    attributes below are class-level defaults until first set.

    On WebSocket the send queue holds only what could not be written at once, and a
    writer task exists only while it is not empty. ``None`` in the queue means "close
    the WebSocket once everything before it is sent".
    """

    last_ping: float | None
    connected: bool

    _ws: Any = None
    """The WebSocket this session is served over (engineio's driver object), once upgraded."""

    _link: DirectLink | None = None
    """Direct writes to :attr:`_ws`, while it is open and uncompressed."""

    _writer: asyncio.Task[None] | None = None
    """The task sending what is queued, while the queue is not empty."""

    _ping_timer: asyncio.TimerHandle | None = None

    @property
    def writer_idle(self) -> bool:
        """True when nothing is queued and no writer holds an unsent packet."""
        return self._writer is None and self.queue.empty()

    def schedule_ping(self) -> None:
        """Send a PING after ``ping_interval``, unless one is already waiting for its PONG."""
        if self.last_ping:
            self.last_ping = None
            loop = asyncio.get_running_loop()
            self._ping_timer = loop.call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.post(eio_packet.Packet(eio_packet.PING))

    async def send(self, pkt: eio_packet.Packet) -> None:
        """Send ``pkt``; a session past its ping timeout is closed instead (engineio's contract)."""
        if await self.check_ping_timeout():
            self.post(pkt)

    def post(self, pkt: eio_packet.Packet | None) -> None:
        """Send ``pkt`` without waiting, after everything sent before it; never raises.

        Written to the WebSocket at once when :meth:`DirectLink.ready` holds (CLOSE
        excepted); otherwise queued. On WebSocket a queued packet starts the writer; on
        polling the next poll takes it. ``None`` asks the writer to close the WebSocket.
        """
        link = self._link
        if pkt is not None and link is not None and pkt.packet_type != eio_packet.CLOSE and link.ready():
            encoded = pkt.encode()
            if isinstance(encoded, str):
                link.write(text_frame(encoded))
                return
        self.queue.put_nowait(pkt)
        if self._ws is not None and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued(self._ws))

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """engineio's close, which also cancels a pending ping and, on WebSocket, closes it.

        The writer sends what is queued (CLOSE included, unless ``abort`` or a ping
        timeout left it out) and then closes the WebSocket, which ends the read loop.
        engineio's own socket relied on its read timeout for that.
        """
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        await super().close(wait=wait, abort=abort, reason=reason)
        if self._ws is not None:
            self.post(None)

    async def _write_queued(self, ws: Any) -> None:
        """Send the queue in order until it is empty; at ``None`` or on a failed send, close ``ws``."""
        try:
            stay_open = await self._send_queue(ws)
        finally:
            self._writer = None
        if not stay_open:
            self._ws = self._link = None
            await ws.close()

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
        """Serve this session over ``ws`` until the WebSocket closes, then close the session."""
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
        await self._receive_until_closed(ws)
        self._link = None
        if self._writer is not None:
            await self._writer  # sends what is left if it can, closing the WebSocket on failure
        self._ws = None
        await ws.close()
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _finish_upgrade(self, ws: Any) -> bool:
        """Run the probe exchange that moves a polling session to ``ws``; True once upgraded.

        While it runs, packets are queued (``upgrading``); the NOOP ends the client's
        pending poll. On any failure the session stays on polling.
        """
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

        Cancellation also ends the loop without propagating, as in engineio: the
        caller still closes the session, so its disconnect handlers run.
        """
        while True:
            try:
                data = await ws.wait()
            except (Exception, asyncio.CancelledError):
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
    """

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            socket.__class__ = HubSocket
        super().__setitem__(sid, socket)


class HubEngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """``engineio.AsyncServer`` whose sessions are :class:`HubSocket` objects."""

    @property
    def sockets(self) -> dict[str, Any]:
        """Engine.IO sid -> session; assigning any mapping keeps the class switch in place."""
        return self._sessions

    @sockets.setter
    def sockets(self, table: dict[str, Any]) -> None:
        self._sessions = _SessionTable(table)


class HubSocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """``socketio.AsyncServer`` on :class:`HubEngineServer`; takes the same arguments."""

    def _engineio_server_class(self) -> type[HubEngineServer]:
        return HubEngineServer
