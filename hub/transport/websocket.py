"""A WebSocket served by its TCP transport's own protocol once aiohttp has done the handshake.

aiohttp serves a WebSocket inside the HTTP request that opened it, so for the whole
life of the connection it keeps that request and its headers, the HTTP parser, the
request handler with its two tasks (the connection's and the request's) and the
frame of every coroutine between aiohttp and the Engine.IO session. tracemalloc on a
hub holding 5000 idle connections put that at about 12 KB per connection, more than
half of all the hub held for one (issue 8's goal is 16 KB).

:meth:`AdoptedWebSocket.adopt` takes the connection over right after
``WebSocketResponse.prepare`` has written the 101 response. The transport's protocol
becomes an :class:`AdoptedWebSocket`, which keeps aiohttp's frame parser, its queue of
parsed messages and its frame writer (compression included), and nothing else. aiohttp
is told the connection is gone without it being closed, so when the request handler
returns, the request, aiohttp's handler and their tasks are freed.

After the handshake this class does what ``WebSocketResponse`` did:

* PINGs are answered with PONGs, PONGs are ignored;
* the close handshake: CLOSE is sent at most once, a peer's CLOSE is echoed, and the TCP
  connection is closed once both have been seen, or aborted after
  :data:`CLOSE_TIMEOUT_S`;
* a protocol error or a message over ``max_msg_size`` sends CLOSE with its code
  (1002, 1009) and closes the connection;
* reading pauses while parsed messages wait (aiohttp's queue asks this protocol to).

The adoption relies on these aiohttp details: the response's ``_reader``, ``_parser``
and ``_writer``; the queue's ``_protocol`` and the writer's ``protocol``; the request
handler's ``_payload_parser``, ``transport`` and ``connection_lost``, and its
``handler_cancellation`` being off (aiohttp's default; the hub never turns it on).
tests/hub/transport/test_websocket.py fails if any of them changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_websocket import WS_CLOSING_MESSAGE, WebSocketError, WebSocketReader, WebSocketWriter
from aiohttp.streams import EofStream

__all__ = ["CLOSE_TIMEOUT_S", "AdoptedWebSocket", "WebSocketClosedError"]

CLOSE_TIMEOUT_S: Final = 10.0
"""Longest wait for a WebSocket close (its CLOSE written, the peer's CLOSE read, the TCP
connection closed) before the connection is aborted. A peer that stopped reading would
otherwise keep the close, and everything waiting on it, forever."""


class WebSocketClosedError(ConnectionResetError):
    """The WebSocket is closing or closed: nothing more can be sent or received."""


class AdoptedWebSocket(BaseProtocol):
    """One server-side WebSocket after its handshake, as its transport's protocol.

    Create with :meth:`adopt`. One coroutine at a time may wait in :meth:`receive`;
    :meth:`send` and :meth:`close` may be called from any task. ``__slots__`` because
    there is one per connection.
    """

    __slots__ = (
        "_close_sent",
        "_closer_active",
        "_closing",
        "_frames",
        "_gone",
        "_gone_waiter",
        "_queue",
        "_reader_left",
        "_reading",
        "_tcp",
        "_writer",
        "on_closing",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        queue: Any,
        frames: WebSocketReader,
        writer: WebSocketWriter,
    ) -> None:
        super().__init__(loop)
        self.transport = transport
        self._tcp = transport
        self._upgraded = True  # there is no HTTP parser for pause/resume_reading to touch
        self._queue = queue
        self._frames = frames
        """aiohttp's frame parser, feeding ``queue``. (``BaseProtocol._parser`` is the HTTP parser.)"""
        self._writer = writer
        self._close_sent = False
        self._closing = False
        self._gone = False
        self._gone_waiter: asyncio.Future[None] | None = None
        self._reading = False
        """True while a coroutine waits in :meth:`receive`."""
        self._reader_left: asyncio.Future[None] | None = None
        """Resolved when the coroutine in :meth:`receive` leaves, once :meth:`close` asked it to."""
        self._closer_active = False
        """True once a :meth:`close` call runs the close handshake; later calls wait for its end."""
        self.on_closing: Callable[[], None] | None = None
        """Called once, when the WebSocket starts closing (see :attr:`closing`)."""

    @classmethod
    def adopt(cls, request: web.BaseRequest, response: web.WebSocketResponse) -> AdoptedWebSocket:
        """Take the connection of ``request`` over from aiohttp; ``response`` is its prepared WebSocket.

        Messages aiohttp has already parsed stay queued for :meth:`receive`. From here
        on ``response`` must not be closed or written to: aiohttp closes the response
        when the request handler returns, so its ``close`` must become a no-op (see
        :class:`hub.transport.direct.DirectWebSocket`).

        Raises:
            WebSocketClosedError: the connection closed during the handshake.
        """
        handler = request.protocol
        transport = request.transport
        if transport is None or transport.is_closing() or response.closed:
            raise WebSocketClosedError("the connection closed during the WebSocket handshake")
        queue, frames, writer = response._reader, response._parser, response._writer
        if queue is None or frames is None or writer is None:
            raise WebSocketClosedError("the WebSocket closed during its handshake")
        conn = cls(request._loop, transport, queue, frames, writer)
        conn._reading_paused = handler._reading_paused
        conn._paused = handler._paused
        queue._protocol = conn
        writer.protocol = conn
        transport.set_protocol(conn)
        handler._payload_parser = None  # the parser is this connection's now; aiohttp would end it
        handler.transport = None  # and aiohttp must not close the transport either
        handler.connection_lost(None)
        return conn

    @property
    def closing(self) -> bool:
        """True once CLOSE was sent or received, or the connection is gone."""
        return self._closing

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self._gone

    def get_transport(self) -> asyncio.Transport:
        """The TCP (or TLS) transport under this WebSocket; it stays the same object after it closes."""
        return self._tcp

    # ------------------------------------------------------------------ asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        # A protocol error is kept in the queue for receive(); the parser ignores what follows.
        self._frames.feed_data(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)  # wakes a send waiting for the transport to drain
        self._gone = True
        self._start_closing()
        self._frames.feed_eof()  # receive() ends once what was parsed has been read
        waiter = self._gone_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ WebSocket

    async def receive(self) -> str | bytes:
        """The next TEXT (str) or BINARY (bytes) message from the peer.

        A PING is answered here and a PONG ignored. Only one coroutine may wait here at
        a time; :meth:`close` ends its wait.

        Raises:
            WebSocketClosedError: the WebSocket is closing or closed (the peer's CLOSE,
                :meth:`close`, a protocol error, a message over ``max_msg_size``, or the
                connection lost).
            RuntimeError: another coroutine is already waiting here.
        """
        if self._reading:
            raise RuntimeError("receive() is already waiting for a message")
        if self._close_sent:
            raise WebSocketClosedError("websocket is closing")
        self._reading = True
        try:
            while True:
                msg = await self._next_message()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    return msg.data  # type: ignore[no-any-return]
                if kind is WSMsgType.CLOSE:
                    await self._end(WSCloseCode.OK)
                    raise WebSocketClosedError("websocket closed by the peer")
                if kind is WSMsgType.CLOSING:
                    raise WebSocketClosedError("websocket is closing")  # close() reads from here on
                if kind is WSMsgType.PING and not self._closing:
                    try:
                        await self._writer.send_frame(msg.data, WSMsgType.PONG)
                    except ConnectionError as exc:
                        raise WebSocketClosedError("websocket closed") from exc
        finally:
            self._reading = False
            if self._reader_left is not None and not self._reader_left.done():
                self._reader_left.set_result(None)

    async def send(self, message: str | bytes) -> None:
        """Send ``message`` as one TEXT (str) or BINARY (bytes) message.

        Raises:
            WebSocketClosedError: the WebSocket is closing or closed.
        """
        if self._closing:
            raise WebSocketClosedError("websocket is closing")
        if isinstance(message, str):
            await self._writer.send_frame(message.encode("utf-8"), WSMsgType.TEXT)
        else:
            await self._writer.send_frame(message, WSMsgType.BINARY)

    async def close(self, code: int = WSCloseCode.OK) -> None:
        """Close the WebSocket and return once the TCP connection is closed; never raises.

        Sends CLOSE with ``code`` (unless either side already did), ends a wait in
        :meth:`receive`, reads (and drops) what the peer still sends until its CLOSE,
        and closes the TCP connection. After :data:`CLOSE_TIMEOUT_S` the connection is
        aborted instead. A second call while the first is at work waits for the same end.
        """
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if not self._closer_active and not self._gone:
                    self._closer_active = True
                    try:
                        await self._send_close(code)
                        if self._reading:
                            self._reader_left = self._loop.create_future()
                            self._queue.feed_data(WS_CLOSING_MESSAGE, 0)
                            await self._reader_left
                        await self._read_to_close()
                    except ConnectionError:
                        pass
                    self._tcp.close()
                await self._wait_gone()
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
        self._start_closing()
        self._tcp.abort()

    def release(self) -> None:
        """Break the reference cycles between this connection and its parser, queue, writer and callback.

        Call once the WebSocket is finished: closed or aborted, and nothing will receive,
        send or close on it again. Its objects are then freed with the last reference to
        them instead of at the next full garbage collection, which a busy hub runs rarely.
        """
        self.on_closing = None
        self._queue._protocol = None
        self._writer.protocol = None  # type: ignore[assignment]

    async def _next_message(self) -> Any:
        """The next parsed message; at the end of the stream or on a broken one, WebSocketClosedError."""
        try:
            return await self._queue.read()
        except EofStream:
            raise WebSocketClosedError("websocket closed") from None
        except WebSocketError as exc:
            await self._end(exc.code)
            raise WebSocketClosedError(f"websocket closed: {exc}") from exc
        except Exception as exc:  # the parser's other failures, such as a corrupt deflate stream
            await self._end(WSCloseCode.PROTOCOL_ERROR)
            raise WebSocketClosedError(f"websocket closed: {exc!r}") from exc

    async def _read_to_close(self) -> None:
        """Drop what the peer sends until its CLOSE or the end of the stream."""
        while (await self._next_message()).type is not WSMsgType.CLOSE:
            pass

    async def _end(self, code: int) -> None:
        """Answer a CLOSE or a broken stream: send CLOSE with ``code`` if not yet sent, then close TCP.

        A peer that does not read the CLOSE within :data:`CLOSE_TIMEOUT_S` is aborted.
        """
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._send_close(code)
        except TimeoutError:
            self.abort()
        except ConnectionError:
            pass
        self._tcp.close()

    async def _send_close(self, code: int) -> None:
        if self._close_sent or self._gone:
            self._start_closing()
            return
        self._close_sent = True
        self._start_closing()
        await self._writer.close(code)

    async def _wait_gone(self) -> None:
        if self._gone:
            return
        if self._gone_waiter is None:
            self._gone_waiter = self._loop.create_future()
        await asyncio.shield(self._gone_waiter)

    def _start_closing(self) -> None:
        if not self._closing:
            self._closing = True
            if self.on_closing is not None:
                self.on_closing()
