"""A minimal WebSocket client over ``asyncio.Protocol``, cheap enough to hold thousands of sockets.

The load generator must not be the bottleneck, so this client skips everything a general library
does for safety and convenience:

* no permessage-deflate is offered, so every server sends uncompressed frames;
* frames from the server are parsed in one pass over the bytes of each ``data_received`` call,
  and every message of that chunk gets the same receive time (one clock read per chunk);
* frames to the server are masked with the all-zero key (valid per RFC 6455 §5.3; the key's
  unpredictability only protects browsers' proxies), so sending is a header plus the payload.

Fragmented messages are reassembled; server pings are answered. There is no TLS.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

_ZERO_MASK = b"\x00\x00\x00\x00"


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + _ZERO_MASK + payload


class WsClient(asyncio.Protocol):
    """One client WebSocket. ``on_message(client, payload, now_ns)`` gets every complete message.

    ``opened`` resolves once the HTTP upgrade succeeded and fails if it did not; ``closed``
    resolves when the TCP connection is gone, whoever closed it.
    """

    __slots__ = (
        "_buf",
        "_clock",
        "_frag",
        "_host",
        "_path",
        "_upgraded",
        "closed",
        "index",
        "made_ns",
        "on_message",
        "opened",
        "state",
        "transport",
    )

    def __init__(
        self,
        host: str,
        path: str,
        on_message: Callable[[WsClient, bytes, int], None],
        clock: Callable[[], int],
        index: int = 0,
        state: object = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._host = host
        self._path = path
        self._buf = bytearray()
        self._frag: bytearray | None = None
        self._upgraded = False
        self.on_message = on_message
        self.index = index
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.made_ns = 0
        """Wall clock (ns) when the TCP connection was established."""
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._clock = clock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made_ns = time.time_ns()
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        now = self._clock()
        pos = 0
        n = len(buf)
        on_message = self.on_message
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (1, 2):
                if fin:
                    on_message(self, payload, now)
                else:
                    self._frag = bytearray(payload)
            elif opcode == 0 and self._frag is not None:
                self._frag += payload
                if fin:
                    whole, self._frag = bytes(self._frag), None
                    on_message(self, whole, now)
            elif opcode == 9:
                self._send(10, payload)
            elif opcode == 8:
                self._send(8, payload[:2])
                assert self.transport is not None
                self.transport.close()
                break
        del buf[:pos]

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(opcode, payload))

    def send(self, text: bytes) -> None:
        """Queue one text message; dropped silently when the connection is closing."""
        self._send(1, text)

    def close(self) -> None:
        """Send a close frame and drop the TCP connection."""
        self._send(8, b"\x03\xe8")
        if self.transport is not None:
            self.transport.close()


async def open_ws(
    host: str,
    port: int,
    path: str,
    on_message: Callable[[WsClient, bytes, int], None],
    clock: Callable[[], int],
    *,
    index: int = 0,
    source: str | None = None,
    state: object = None,
    timeout: float = 30.0,
) -> WsClient:
    """Connect and upgrade, with ``state`` set before the first message.

    Raises ``ConnectionError``, ``OSError`` or ``TimeoutError`` when that fails.
    """
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: WsClient(f"{host}:{port}", path, on_message, clock, index, state),
        host,
        port,
        local_addr=(source, 0) if source else None,
    )
    await asyncio.wait_for(asyncio.shield(client.opened), timeout)
    return client
