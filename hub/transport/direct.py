"""Direct WebSocket writes for fan-out: one prebuilt frame, one ``transport.write`` per recipient.

python-engineio sends every packet through a per-connection writer task: a queue
``put``, a task wake-up, an ``asyncio.wait_for`` (one more task), aiohttp's frame
builder and finally ``transport.write``. Profiling the hub under room fan-out put
more than half of its CPU there. This module lets the fan-out and the session
(:class:`hub.transport.session.HubSocket`) skip all of it for connections that are
on WebSocket and idle, the way ``websockets.broadcast`` does:

* :class:`DirectWebSocket` replaces engineio's aiohttp WebSocket driver. It is the
  same driver, except that permessage-deflate is off unless asked for, and that while
  the socket is open it registers a :class:`DirectLink` for its Engine.IO session.
* :func:`text_frame` builds an unmasked WebSocket TEXT frame once per emit.

A frame may be written directly only when :meth:`DirectLink.ready` says so: the
session has nothing queued and no writer holding an unsent packet (it keeps
:attr:`DirectLink.writable` saying so), so the direct frame cannot overtake anything
sent earlier, and the WebSocket has not begun to close. Frames are written whole and
synchronously, so they never interleave with aiohttp's own frames (pongs, close).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from aiohttp import WSCloseCode, web

__all__ = ["DirectLink", "DirectWebSocket", "install", "text_frame"]

_TEXT_FIN: Final = 0x81
_EIO_CLOSE: Final = "1"
"""An Engine.IO CLOSE packet, encoded."""

CLOSE_TIMEOUT_S: Final = 10.0
"""Longest wait for a WebSocket close (its frame drained, the peer's close read) before the TCP
connection is aborted. aiohttp's own close timeout does not cover the drain, so a peer that
stopped reading would otherwise keep the close, the session's handler and its
:class:`DirectLink` waiting forever."""


def text_frame(text: str) -> bytes:
    """The wire bytes of one final, unmasked WebSocket TEXT frame carrying ``text`` (server to client)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _TEXT_FIN, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _TEXT_FIN, 126, size)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, size)
    return header + payload


class DirectLink:
    """The open WebSocket of one Engine.IO session, writable without its writer task.

    Whether a frame may be written now is kept in one flag, :attr:`writable`, which the
    session sets at each change of its state (:meth:`session_idle`) and the WebSocket
    clears when it starts closing. The fan-out reads it once per recipient, so a
    recipient costs a look at this object and its transport, not at the session, its
    queue and the aiohttp response: profiling showed those reads, cache misses between
    ``send`` system calls, costing as much as the write itself.

    ``__slots__`` because there is one per connection.
    """

    __slots__ = ("_response", "_transport", "socket", "writable")

    def __init__(
        self, socket: Any, response: web.WebSocketResponse, transport: asyncio.BaseTransport
    ) -> None:
        self.socket = socket
        self._response = response
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.writable = False
        """True while the session is on this WebSocket, open, with nothing queued and no writer
        busy, and the WebSocket is not closing. Set only through :meth:`session_idle` and
        :meth:`websocket_closing`."""

    def session_idle(self, idle: bool) -> None:
        """The session says whether a frame written now would follow everything it sent before.

        ``idle`` must be True only while the session is fully on this WebSocket (not
        mid-upgrade), not closing, with nothing queued and no writer busy. A WebSocket
        that started closing stays unwritable whatever the session says.
        """
        self.writable = idle and not self._response.closed

    def websocket_closing(self) -> None:
        """The WebSocket is sending its close frame; nothing may follow it."""
        self.writable = False

    def ready(self) -> bool:
        """True when a frame written now is the next thing the peer receives after what was already sent."""
        return self.writable and not self._transport.is_closing()

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP (or TLS) transport under this WebSocket."""
        return self._transport

    def buffered(self) -> int:
        """Bytes written to this connection that the kernel has not taken yet."""
        return self._transport.get_write_buffer_size()

    def write_if_ready(self, frame: bytes, max_buffered: int) -> bool:
        """Write ``frame`` if :meth:`ready` and fewer than ``max_buffered`` bytes are unsent; True if written.

        The fan-out's per-recipient fast path: :meth:`ready`, :meth:`buffered` and
        :meth:`write` in one call.
        """
        if self.writable:
            transport = self._transport
            if not transport.is_closing() and transport.get_write_buffer_size() < max_buffered:
                transport.write(frame)
                return True
        return False

    def write(self, frame: bytes) -> None:
        """Write one complete WebSocket frame; only call this right after :meth:`ready` returned True."""
        self._transport.write(frame)


class _LinkedWebSocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response, which makes its :class:`DirectLink` unwritable when it closes.

    aiohttp sends the close frame from ``close()`` alone, whether the hub or the peer
    started the close; direct frames written after it would break the protocol.
    """

    link: DirectLink | None = None

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if self.link is not None:
            self.link.websocket_closing()
        return await super().close(code=code, message=message, drain=drain)


class DirectWebSocket:
    """engineio's aiohttp WebSocket driver, plus a :class:`DirectLink` registered while open.

    Engine.IO constructs one per WebSocket request with its handler (a bound method of
    the session's socket) and calls it with the request's environ.
    """

    def __init__(
        self,
        handler: Callable[[DirectWebSocket], Awaitable[None]],
        server: Any,
        links: MutableMapping[str, DirectLink],
        deflate: bool,
    ) -> None:
        self.handler = handler
        self.server = server
        self._links = links
        self._deflate = deflate
        self._sock: _LinkedWebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self.environ: dict[str, Any] = {}
        self.link: DirectLink | None = None
        """This WebSocket's :class:`DirectLink` while it is open; None if it is compressed."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request: web.Request = environ["aiohttp.request"]
        sock = self._sock = _LinkedWebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=self._deflate
        )
        await sock.prepare(request)
        self.environ = environ
        socket = getattr(self.handler, "__self__", None)
        sid = getattr(socket, "sid", None)
        transport = self._transport = request.transport
        link = None
        # a second WebSocket for a session already probing or upgraded is refused by the session
        if isinstance(sid, str) and transport is not None and not sock.compress and sid not in self._links:
            link = self.link = sock.link = self._links[sid] = DirectLink(socket, sock, transport)
        try:
            await self.handler(self)
        finally:
            self.link = None
            if link is not None and self._links.get(link.socket.sid) is link:
                del self._links[link.socket.sid]
        return sock

    def _open(self) -> web.WebSocketResponse:
        if self._sock is None:
            raise RuntimeError("WebSocket used before its handshake")
        return self._sock

    async def close(self) -> None:
        """Close the WebSocket; after :data:`CLOSE_TIMEOUT_S` abort the TCP connection instead."""
        sock = self._open()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await sock.close()
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()

    async def send(self, message: str | bytes) -> None:
        """Send one Engine.IO packet; after a CLOSE packet, close the WebSocket too.

        engineio ends a session by sending CLOSE and then waits for the peer, but the
        official JavaScript client ignores CLOSE over WebSocket and would notice only at
        its ping timeout. Closing the WebSocket is how Node's engine.io ends it.
        """
        sock = self._open()
        if isinstance(message, bytes):
            await sock.send_bytes(message)
        else:
            await sock.send_str(message)
            if message == _EIO_CLOSE:
                await self.close()

    async def wait(self) -> str | bytes:
        """The next data message; OSError when the WebSocket closed (what engineio expects)."""
        msg = await self._open().receive()
        if not isinstance(msg.data, bytes | str):
            raise OSError("websocket closed")
        return msg.data


def install(eio_server: Any, links: MutableMapping[str, DirectLink], deflate: bool) -> None:
    """Make ``eio_server`` use this module for its WebSocket requests.

    ``eio_server`` must be a :class:`hub.transport.session.HubEngineServer` (aiohttp
    mode, sessions that keep :attr:`DirectLink.writable` up to date). WebSocket
    requests go through :class:`DirectWebSocket`, registering into ``links``. Only this
    server is changed: engineio's driver table is copied, not edited.
    """

    def websocket(handler: Callable[[DirectWebSocket], Awaitable[None]], server: Any) -> DirectWebSocket:
        return DirectWebSocket(handler, server, links, deflate)

    eio_server._async = {**eio_server._async, "websocket": websocket}
