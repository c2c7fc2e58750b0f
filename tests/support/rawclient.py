"""A minimal Engine.IO v4 / Socket.IO v5 client over one aiohttp websocket, for tests.

``socketio.AsyncClient`` costs several tasks, a reconnection machine and verbose
bookkeeping per connection; this client costs one reader task and can be opened
thousands of times in one process. It speaks just enough of the protocol:

* websocket transport only (``?EIO=4&transport=websocket``), no polling, no upgrade;
* connects one namespace, with an optional ``auth`` dict;
* answers server pings (``2``) with pongs (``3``);
* decodes text events (``42[...]`` / ``42/ns,[...]``) and acks (``43``); binary
  frames are kept raw in :attr:`RawClient.binary`, not reassembled into events;
* records why it ended: an Engine.IO CLOSE, a Socket.IO DISCONNECT, or the TCP
  connection going away.

Reading can be paused (:meth:`RawClient.pause`) to play a slow consumer: the reader
stops calling ``receive``, aiohttp stops reading the socket once its own 64 KiB
buffer is full, and the server's TCP send buffer then fills up.

Typical use::

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        client = await RawClient.connect(http, f"http://127.0.0.1:{port}")
        name, args = await client.next_event()
        await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

__all__ = ["RawClient", "RawClientError"]


class RawClientError(Exception):
    """The server refused the namespace or answered something this client does not speak."""


class RawClient:
    """One Engine.IO session over websocket, connected to one Socket.IO namespace.

    Attributes:
        eio_sid: the Engine.IO session id from the open packet.
        sid: the Socket.IO sid of the namespace connection.
        events: ``(event, args)`` in arrival order; ``args`` is the list after the name.
        acks: ack id -> ack arguments, for :meth:`emit` with ``ack=True``.
        binary: raw binary frames, in arrival order.
        closed: set once the connection has ended for any reason.
        close_reason: ``"eio close"``, ``"io server disconnect"`` or ``"transport close"``.
        received: number of text frames received (pings included).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, namespace: str, eio_sid: str, sid: str) -> None:
        self.ws = ws
        self.namespace = namespace
        self.eio_sid = eio_sid
        self.sid = sid
        self.events: asyncio.Queue[tuple[str, list[Any]]] = asyncio.Queue()
        self.acks: dict[int, list[Any]] = {}
        self.binary: list[bytes] = []
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.received = 0
        self._next_ack = 0
        self._ack_waiters: dict[int, asyncio.Future[list[Any]]] = {}
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        base_url: str,
        *,
        namespace: str = "/",
        auth: dict[str, Any] | None = None,
        path: str = "/socket.io/",
        timeout: float = 10.0,
        **ws_kwargs: Any,
    ) -> RawClient:
        """Open the websocket, read the Engine.IO open packet and connect ``namespace``.

        ``base_url`` is ``http://host:port`` (or ``ws://``). Extra keyword arguments go to
        ``ws_connect`` (e.g. ``headers`` with an ``Origin``).

        Raises:
            RawClientError: the server answered the namespace connect with an error
                (``44``) or with something unexpected.
            TimeoutError: the handshake took longer than ``timeout`` seconds.
        """
        url = base_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        url = f"{url}{path}?EIO=4&transport=websocket"
        async with asyncio.timeout(timeout):
            ws = await http.ws_connect(url, autoping=True, **ws_kwargs)
            try:
                opened = await ws.receive_str()
                if not opened.startswith("0"):
                    raise RawClientError(f"expected an Engine.IO open packet, got {opened[:80]!r}")
                eio_sid = json.loads(opened[1:])["sid"]
                prefix = "" if namespace == "/" else f"{namespace},"
                await ws.send_str(f"40{prefix}{json.dumps(auth) if auth is not None else ''}")
                while True:
                    reply = await ws.receive_str()
                    if reply == "2":
                        await ws.send_str("3")
                        continue
                    break
                body = reply[2 + len(prefix) :]
                if reply.startswith(f"40{prefix}"):
                    sid = json.loads(body)["sid"]
                elif reply.startswith(f"44{prefix}"):
                    raise RawClientError(f"connect refused: {body}")
                else:
                    raise RawClientError(f"unexpected reply to connect: {reply[:80]!r}")
            except BaseException:
                await ws.close()
                raise
        return cls(ws, namespace, eio_sid, sid)

    async def next_event(self, timeout: float = 5.0) -> tuple[str, list[Any]]:
        """The next event received, waiting up to ``timeout`` seconds (TimeoutError after)."""
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def emit(self, event: str, *args: Any, ack: bool = False, timeout: float = 5.0) -> list[Any] | None:
        """Send an event; with ``ack=True`` wait for and return the ack's arguments."""
        prefix = "" if self.namespace == "/" else f"{self.namespace},"
        payload = json.dumps([event, *args], separators=(",", ":"))
        if not ack:
            await self.ws.send_str(f"42{prefix}{payload}")
            return None
        ack_id = self._next_ack
        self._next_ack += 1
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._ack_waiters[ack_id] = waiter
        await self.ws.send_str(f"42{prefix}{ack_id}{payload}")
        async with asyncio.timeout(timeout):
            return await waiter

    def pause(self) -> None:
        """Stop reading from the socket (the connection becomes a slow consumer)."""
        self._reading.clear()

    def resume(self) -> None:
        """Read again."""
        self._reading.set()

    async def close(self) -> None:
        """Close the websocket and stop the reader; safe to call twice."""
        self._reading.set()
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._finish("transport close")

    def _finish(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._reading.wait()
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.received += 1
                    if await self._on_text(msg.data):
                        return
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    self.binary.append(msg.data)
                else:
                    self._finish("transport close")
                    return
        finally:
            self._finish("transport close")

    async def _on_text(self, data: str) -> bool:
        """Handle one text frame; True when the session has ended."""
        kind = data[:1]
        if kind == "2":
            await self.ws.send_str("3")
        elif kind == "1":
            self._finish("eio close")
            await self.ws.close()
            return True
        elif kind == "4":
            return self._on_socketio(data[1:])
        return False

    def _on_socketio(self, packet: str) -> bool:
        kind, rest = packet[:1], packet[1:]
        if self.namespace != "/":
            if not rest.startswith(f"{self.namespace},"):
                return False
            rest = rest[len(self.namespace) + 1 :]
        if kind == "1":
            self._finish("io server disconnect")
            return True
        if kind in ("2", "3"):
            digits = len(rest) - len(rest.lstrip("0123456789"))
            ack_id = int(rest[:digits]) if digits else None
            args = json.loads(rest[digits:])
            if kind == "2":
                self.events.put_nowait((args[0], args[1:]))
            elif ack_id is not None:
                self.acks[ack_id] = args
                waiter = self._ack_waiters.pop(ack_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(args)
        return False
