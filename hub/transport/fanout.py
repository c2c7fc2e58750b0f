"""Room fan-out that encodes once and never makes a task per recipient (DESIGN.md principle 6).

:class:`FanoutManager` is a python-socketio client manager; pass it as
``HubSocketServer(client_manager=FanoutManager(...))`` (:mod:`hub.transport.session`).

What it guarantees
    * An emit without an ack callback encodes the Socket.IO packet, the Engine.IO frame
      and the WebSocket frame once. A recipient on WebSocket whose send queue is empty
      and whose writer is idle gets those bytes with one ``transport.write``
      (:mod:`hub.transport.direct`); any other recipient gets the shared frame object
      posted to its session, queued behind what it has not sent yet. No ``await`` and
      no encoding per recipient; a task only for a WebSocket recipient whose queue was
      empty and now is not (its session's writer). The emit returns once every frame
      is written to the transport or queued, not once it is sent.
    * Each connection's backlog is bounded. A connection whose send queue already holds
      ``max_queue`` frames, or whose transport holds ``max_buffer_bytes`` unsent bytes,
      is a slow consumer: its queued frames are dropped, a ``session.closing`` frame
      (code 3002 ``slow_consumer``, ``reconnect: true``) is sent after what it already
      has, and the connection is closed. The client recovers by catch-up from its cursors; nothing more is
      buffered for it.
    * Frames to one connection keep the order of the emits that queued them: a frame is
      written directly only when nothing queued earlier is still unsent.

What it does not do
    * Fan-out between nodes is not this class's job: it emits to rooms of this
      process only. The Broker delivers to each Node, and each Node emits locally.
    * Delivery is best-effort: a frame queued to a connection that then drops or is
      evicted is lost. Durable frames carry ``(stream, seq)`` so clients can catch up.
    * Emits with an ack callback go through python-socketio's own path (one task per
      recipient, unbounded queue); use them only for single recipients.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from hub.transport.direct import DirectLink, install, text_frame
from hub.transport.rooms import IndexedRoomManager
from hub.transport.session import HubEngineServer, HubSocket
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.events import SESSION_CLOSING
from protocol.messages import SessionClosing

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_QUEUE",
    "SLOW_CONSUMER_REASON",
    "Abortable",
    "FanoutManager",
    "websocket_transport",
]

DEFAULT_MAX_QUEUE: Final = 1000
"""Default bound, in Engine.IO frames, of one connection's send queue."""

DEFAULT_MAX_BUFFER_BYTES: Final = 1 << 20
"""Default bound, in bytes, of what one connection's transport may hold unsent."""

SLOW_CONSUMER_REASON: Final = "slow consumer"
"""The ``reason`` the server's ``disconnect`` handlers receive for an evicted slow consumer."""

_CLOSE_POLL_INTERVAL: Final = 0.1
"""Seconds between checks whether an evicted connection has closed by itself."""

_SLOW_CONSUMER_MESSAGE: Final = "the connection fell behind the live stream; reconnect and catch up"


class Abortable(Protocol):
    """What is used of a TCP transport (asyncio's or uvloop's, which do not share a base class)."""

    def is_closing(self) -> bool: ...

    def abort(self) -> None: ...


class _SharedFrame(eio_packet.Packet):  # type: ignore[misc]
    """An Engine.IO MESSAGE frame whose wire text is computed once, at construction.

    One instance is queued to every recipient. Its ``encode`` is what the websocket
    writer (``encode()``) and the polling payload (``encode(b64=True)``) call per
    connection, so it must be a lookup. Binary frames keep both the raw bytes and
    the base64 text that polling needs; ``engineio.packet.Packet`` caches only the
    first form asked for, which breaks a binary frame shared by both transports.
    """

    def __init__(self, data: str | bytes) -> None:
        super().__init__(eio_packet.MESSAGE, data)
        self._wire: str | bytes
        self._wire_b64: str | bytes
        if isinstance(data, str):
            self._wire = self._wire_b64 = f"{eio_packet.MESSAGE}{data}"
        else:
            self._wire = bytes(data)
            self._wire_b64 = "b" + base64.b64encode(data).decode("ascii")
        self.encode_cache = self._wire

    def encode(self, b64: bool = False) -> str | bytes:
        return self._wire_b64 if b64 else self._wire


class FanoutManager(IndexedRoomManager):
    """A client manager whose emits queue one shared frame per local recipient.

    Args:
        max_queue: most Engine.IO frames one connection may have waiting in its send
            queue before it counts as a slow consumer. Frames already taken from the
            queue (by the WebSocket writer one at a time, by a long-poll one batch of
            at most ``max_queue`` more) and the socket buffers are not counted. Must be
            at least 1.
        on_slow_consumer: called synchronously, once per eviction, with the
            Socket.IO sid the emit was addressed to. Exceptions it raises are logged
            and swallowed, so a broken metric never stops a fan-out.
        close_timeout: seconds an evicted connection gets to read its
            ``session.closing`` frame before its TCP connection is aborted. The abort
            is what frees a peer that stopped reading altogether, whose writer would
            otherwise stay blocked forever; it applies to WebSocket connections on
            aiohttp, direct or upgraded from polling (see :meth:`_evict`).
        max_buffer_bytes: most bytes one connection's transport may hold unsent (beyond
            what the kernel took) before it counts as a slow consumer. Must be at least 1.
        websocket_deflate: negotiate permessage-deflate with clients that offer it. Off by
            default: compressing small frames per recipient costs more CPU than it saves
            on the wire, and a compressed connection cannot share the prebuilt frame, so
            it always takes the queued path.

    Bounded: per connection, ``max_queue`` queued frames plus what is in flight (one
    frame on WebSocket, one batch on polling), and ``max_buffer_bytes`` in the transport.
    Control frames that python-socketio sends itself (pings, acks, connect
    replies, emits with callbacks) bypass the bound; they are few per request.
    """

    def __init__(
        self,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_slow_consumer: Callable[[str], None] | None = None,
        close_timeout: float = 5.0,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        websocket_deflate: bool = False,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be at least 1")
        if close_timeout < 0:
            raise ValueError("close_timeout must not be negative")
        super().__init__()
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self.max_buffer_bytes = max_buffer_bytes
        self._websocket_deflate = websocket_deflate
        self._links: dict[str, DirectLink] = {}
        """Engine.IO sid -> its open WebSocket, for sessions that can take direct writes."""
        self._on_slow_consumer = on_slow_consumer
        self._evicting: set[str] = set()
        self._eviction_tasks: set[asyncio.Task[None]] = set()

    def set_server(self, server: Any) -> None:
        """Attach to ``server`` (python-socketio calls this once) and take over its WebSocket writes.

        Raises:
            TypeError: ``server`` is not a :class:`HubSocketServer`.
        """
        if not isinstance(server.eio, HubEngineServer):
            raise TypeError("FanoutManager needs a HubSocketServer (its sessions take direct writes)")
        super().set_server(server)
        install(server.eio, self._links, self._websocket_deflate)

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        *,
        room: Any = None,
        skip_sid: Any = None,
        callback: Callable[..., Any] | None = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Queue ``event`` to every local participant of ``to``/``room`` in ``namespace``.

        ``room`` may be a room name, a sid, a list of rooms (each participant gets one
        copy), or None for the whole namespace. ``skip_sid`` is a sid or a list of
        sids. Without ``callback`` this never suspends and never raises for a
        recipient that is gone, closing or slow; those are skipped (slow ones are
        evicted). With ``callback`` the call is delegated to python-socketio.
        """
        if callback is not None:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs
            )
            return
        room = to or room
        if namespace not in self.rooms:
            return
        frames = self._encode(event, data, namespace)
        wire = frames[0].encode() if len(frames) == 1 else None
        direct = text_frame(wire) if isinstance(wire, str) else None
        skip = _as_set(skip_sid)
        links = self._links
        evicting = self._evicting
        max_buffered = self.max_buffer_bytes
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            if direct is not None and eio_sid not in evicting:
                link = links.get(eio_sid)
                if link is not None and link.write_if_ready(direct, max_buffered):
                    continue
            self._queue_or_evict(sid, eio_sid, namespace, frames)

    def queue_depth(self, eio_sid: str) -> int:
        """Frames waiting in the send queue of Engine.IO session ``eio_sid`` (0 if it is gone)."""
        socket = self.server.eio.sockets.get(eio_sid)
        return 0 if socket is None else int(socket.queue.qsize())

    def takes_direct_writes(self, eio_sid: str) -> bool:
        """True while session ``eio_sid`` is on a WebSocket the fan-out can write to directly."""
        return eio_sid in self._links

    def buffered_bytes(self, eio_sid: str) -> int:
        """Bytes written directly to session ``eio_sid``'s transport and not yet taken by the kernel.

        0 when the session is gone or not on a direct WebSocket.
        """
        link = self._links.get(eio_sid)
        return 0 if link is None else link.buffered()

    async def wait_evictions(self) -> None:
        """Wait until every eviction started so far has finished (for shutdown and tests)."""
        while self._eviction_tasks:
            await asyncio.gather(*self._eviction_tasks, return_exceptions=True)

    def _encode(self, event: str, data: Any, namespace: str) -> tuple[_SharedFrame, ...]:
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        pkt = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args])
        encoded = pkt.encode()
        parts = encoded if isinstance(encoded, list) else [encoded]
        return tuple(_SharedFrame(part) for part in parts)

    def _queue_or_evict(
        self, sid: str, eio_sid: str, namespace: str, frames: tuple[_SharedFrame, ...]
    ) -> None:
        """Post ``frames`` to a session that could not take the direct write, or evict it.

        A session over either bound (queued frames, unsent transport bytes) is evicted
        instead, whichever path the frame would have taken: a writer blocked on a peer
        that stopped reading makes every later frame take the queued path.
        """
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed or eio_sid in self._evicting:
            return
        queue = socket.queue
        link = self._links.get(eio_sid)
        if queue.qsize() >= self.max_queue or (link is not None and link.buffered() >= self.max_buffer_bytes):
            self._evict(sid, eio_sid, namespace, socket)
        else:
            for frame in frames:
                socket.post(frame)

    def _evict(self, sid: str, eio_sid: str, namespace: str, socket: Any) -> None:
        """Replace a slow consumer's backlog with a ``session.closing`` frame and close it.

        The queue is emptied synchronously, so the memory it held is released now and
        no later emit reaches this connection. One task then closes the Engine.IO
        session (which runs the server's disconnect handlers with
        :data:`SLOW_CONSUMER_REASON`), and after ``close_timeout`` aborts the TCP
        connection if it is still open. No Socket.IO DISCONNECT packet is sent: the
        official clients treat that as "do not reconnect".
        """
        self._evicting.add(eio_sid)
        queue = socket.queue
        saw_sentinel = False
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            saw_sentinel = saw_sentinel or item is None
        for frame in self._encode(SESSION_CLOSING, _slow_consumer_frame(), namespace):
            socket.post(frame)
        if saw_sentinel:
            socket.post(None)  # the WebSocket was already to be closed after what was queued
        if self._on_slow_consumer is not None:
            try:
                self._on_slow_consumer(sid)
            except Exception:
                self._get_logger().exception("on_slow_consumer callback failed")
        transport = websocket_transport(self.server, eio_sid)
        task = asyncio.get_running_loop().create_task(self._close_slow(eio_sid, socket, transport))
        self._eviction_tasks.add(task)
        task.add_done_callback(self._eviction_tasks.discard)

    async def _close_slow(self, eio_sid: str, socket: Any, transport: Abortable | None) -> None:
        try:
            await socket.close(wait=False, abort=False, reason=SLOW_CONSUMER_REASON)
            if transport is not None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.close_timeout
                # a transport has no close notification to wait on, so poll it
                while not transport.is_closing() and loop.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(min(_CLOSE_POLL_INTERVAL, deadline - loop.time()))
                if not transport.is_closing():
                    transport.abort()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._get_logger().exception("closing slow consumer %s failed", eio_sid)
        finally:
            self._evicting.discard(eio_sid)


def websocket_transport(server: Any, eio_sid: str) -> Abortable | None:
    """The TCP transport of Engine.IO session ``eio_sid`` while it is served over a WebSocket.

    None for a session that is gone, on polling, or still probing its upgrade: the
    transport of a poll is an HTTP keep-alive connection, which must not be aborted.
    """
    socket = server.eio.sockets.get(eio_sid)
    return socket.websocket_transport if isinstance(socket, HubSocket) else None


def _slow_consumer_frame() -> Any:
    error = SokoError(ErrorCode.SLOW_CONSUMER, _SLOW_CONSUMER_MESSAGE).body()
    return to_wire(SessionClosing(error=error, reconnect=True))


def _as_set(skip_sid: Any) -> frozenset[Any]:
    if skip_sid is None:
        return frozenset()
    if isinstance(skip_sid, str) or not isinstance(skip_sid, Iterable):
        return frozenset((skip_sid,))
    return frozenset(skip_sid)
