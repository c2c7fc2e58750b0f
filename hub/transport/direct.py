"""Direct WebSocket writes for fan-out: one prebuilt frame, one ``transport.write`` per recipient.

python-engineio sends every packet through a per-connection writer task: a queue
``put``, a task wake-up, an ``asyncio.wait_for`` (one more task), aiohttp's frame
builder and finally ``transport.write``. Profiling the hub under room fan-out put
more than half of its CPU there. This module lets the fan-out and the session
(:class:`hub.transport.session.HubSocket`) skip all of it for connections that are
on WebSocket and idle, the way ``websockets.broadcast`` does:

* :class:`DirectWebSocket` replaces engineio's aiohttp WebSocket driver. After aiohttp's
  handshake it serves the connection as an
  :class:`~hub.transport.websocket.AdoptedWebSocket` (which frees aiohttp's request
  state), runs the session in a task of its own, keeps permessage-deflate off unless
  asked for, and while the socket is open registers a :class:`DirectLink` for its
  Engine.IO session.
* :func:`text_frame` builds an unmasked WebSocket TEXT frame once per emit.

A frame may be written directly only when :meth:`DirectLink.ready` says so: the
session has nothing queued and no writer holding an unsent packet (it keeps
:attr:`DirectLink.writable` saying so), so the direct frame cannot overtake anything
sent earlier, and the WebSocket has not begun to close. Frames are written whole and
synchronously, so they never interleave with the WebSocket's own frames (pongs, close).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from aiohttp import WSCloseCode, web

from hub.transport.websocket import AdoptedWebSocket, WebSocketClosedError

__all__ = ["DirectLink", "DirectWebSocket", "install", "text_frame"]

_TEXT_FIN: Final = 0x81
_EIO_CLOSE: Final = "1"
"""An Engine.IO CLOSE packet, encoded."""


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
    queue and the WebSocket: profiling showed those reads, cache misses between
    ``send`` system calls, costing as much as the write itself.

    ``__slots__`` because there is one per connection.
    """

    __slots__ = ("_transport", "_websocket", "socket", "writable")

    def __init__(self, socket: Any, websocket: AdoptedWebSocket) -> None:
        self.socket = socket
        self._websocket = websocket
        self._transport = websocket.get_transport()
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
        self.writable = idle and not self._websocket.closing

    def websocket_closing(self) -> None:
        """The WebSocket is closing (a CLOSE sent or received, or the connection lost); nothing may follow."""
        self.writable = False

    def ready(self) -> bool:
        """True when a frame written now is the next thing the peer receives after what was already sent."""
        return self.writable and not self._transport.is_closing()

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


class _HandshakeResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response, used for the handshake only.

    Once the connection is adopted, aiohttp's ``close`` (which aiohttp calls when the
    request handler returns) must not touch it: the WebSocket is no longer aiohttp's.
    """

    adopted = False

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if self.adopted:
            return False
        return await super().close(code=code, message=message, drain=drain)


class DirectWebSocket:
    """engineio's aiohttp WebSocket driver, serving each WebSocket as an :class:`AdoptedWebSocket`.

    Engine.IO constructs one per WebSocket request with its handler (a bound method of
    the session's socket) and calls it with the request's environ. The call does the
    handshake, adopts the connection, starts the handler in a task that the server
    tracks (``server.serve_websocket``) and returns at once, so aiohttp's request ends.
    While the socket is open and uncompressed a :class:`DirectLink` is registered for
    the session. ``__slots__`` because there is one per connection.
    """

    __slots__ = ("_deflate", "_links", "_websocket", "handler", "link", "server")

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
        self._websocket: AdoptedWebSocket | None = None
        self.link: DirectLink | None = None
        """This WebSocket's :class:`DirectLink` while it is open; None if it is compressed."""

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        """Do the handshake, adopt the connection and start serving it; returns the handshake response."""
        request: web.Request = environ["aiohttp.request"]
        response = _HandshakeResponse(max_msg_size=self.server.max_http_buffer_size, compress=self._deflate)
        await response.prepare(request)
        try:
            websocket = self._websocket = AdoptedWebSocket.adopt(request, response)
        except WebSocketClosedError:
            await self.handler(self)  # with no WebSocket every call fails, so the session ends at once
            return response
        response.adopted = True
        socket = getattr(self.handler, "__self__", None)
        sid = getattr(socket, "sid", None)
        # a second WebSocket for a session already probing or upgraded is refused by the session
        if isinstance(sid, str) and not response.compress and sid not in self._links:
            link = self.link = self._links[sid] = DirectLink(socket, websocket)
            websocket.on_closing = link.websocket_closing
        self.server.serve_websocket(self._serve(websocket), websocket)
        return response

    async def _serve(self, websocket: AdoptedWebSocket) -> None:
        """Run the session's handler, clean up, then close the WebSocket if the handler left it open.

        A session that ended is removed from the server's table, as engineio does when
        its handler returns. Cancelled (at shutdown), the connection is aborted. Either
        way the WebSocket is released (:meth:`AdoptedWebSocket.release`) at the end.
        """
        try:
            try:
                await self.handler(self)
            except Exception:
                self.server.logger.exception("WebSocket session failed")
            finally:
                self._forget_session()
            await websocket.close()  # a refused upgrade probe returns with the WebSocket open
        finally:
            if not websocket.closed:
                websocket.abort()
            websocket.release()

    def _forget_session(self) -> None:
        """The session is no longer served here: drop its link, and the session itself once closed."""
        link, self.link = self.link, None
        if link is not None and self._links.get(link.socket.sid) is link:
            del self._links[link.socket.sid]
        socket = getattr(self.handler, "__self__", None)
        sid = getattr(socket, "sid", None)
        if socket is not None and socket.closed and self.server.sockets.get(sid) is socket:
            del self.server.sockets[sid]

    def _open(self) -> AdoptedWebSocket:
        if self._websocket is None:
            raise WebSocketClosedError("the connection closed during the WebSocket handshake")
        return self._websocket

    @property
    def transport(self) -> asyncio.Transport | None:
        """The TCP (or TLS) transport under this WebSocket; None before its handshake."""
        return None if self._websocket is None else self._websocket.get_transport()

    async def close(self) -> None:
        """Close the WebSocket (see :meth:`AdoptedWebSocket.close`); never raises.

        Nothing to do if the connection closed during its handshake.
        """
        if self._websocket is not None:
            await self._websocket.close()

    async def send(self, message: str | bytes) -> None:
        """Send one Engine.IO packet; after a CLOSE packet, close the WebSocket too.

        engineio ends a session by sending CLOSE and then waits for the peer, but the
        official JavaScript client ignores CLOSE over WebSocket and would notice only at
        its ping timeout. Closing the WebSocket is how Node's engine.io ends it.

        Raises:
            WebSocketClosedError: the WebSocket is closing or closed.
        """
        websocket = self._open()
        await websocket.send(message)
        if message == _EIO_CLOSE:
            await websocket.close()

    async def wait(self) -> str | bytes:
        """The next data message; an OSError (WebSocketClosedError) once closed, as engineio expects."""
        return await self._open().receive()


def install(eio_server: Any, links: MutableMapping[str, DirectLink], deflate: bool) -> None:
    """Make ``eio_server`` use this module for its WebSocket requests.

    ``eio_server`` must be a :class:`hub.transport.session.HubEngineServer` (aiohttp
    mode, sessions that keep :attr:`DirectLink.writable` up to date, and
    ``serve_websocket``). WebSocket requests go through :class:`DirectWebSocket`,
    registering into ``links``. Only this server is changed: engineio's driver table is
    copied, not edited.
    """

    def websocket(handler: Callable[[DirectWebSocket], Awaitable[None]], server: Any) -> DirectWebSocket:
        return DirectWebSocket(handler, server, links, deflate)

    eio_server._async = {**eio_server._async, "websocket": websocket}
