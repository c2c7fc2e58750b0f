"""The WebSocket after aiohttp's handshake (hub/transport/websocket.py), against real clients.

Once adopted, a WebSocket is served by :class:`AdoptedWebSocket` instead of aiohttp's
``WebSocketResponse``, so the close handshake, PING answers, protocol errors, size limits and
compression are this module's to get right. Some tests speak raw frames over a socket, because
no well-behaved client sends a bad frame or ignores a close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import weakref
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from hub.transport import websocket as websocket_module
from hub.transport.websocket import AdoptedWebSocket, WebSocketClosedError
from tests.support.rawclient import RawClient
from tests.support.transport_server import ROOM, StartFanoutHub

_OP_TEXT, _OP_CLOSE, _OP_RESERVED = 0x1, 0x8, 0x3


class _RawWebSocket:
    """A client WebSocket over a plain socket: masked frames out, frames in, nothing else."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.compressed = False
        """Whether the last frame read had RSV1 set (permessage-deflate)."""

    @classmethod
    async def connect(cls, url: str, *, after_handshake: bytes = b"", deflate: bool = False) -> _RawWebSocket:
        """Open a direct Engine.IO WebSocket; ``after_handshake`` goes out with the request, in one write.

        ``deflate`` offers permessage-deflate, and the server must accept it.
        """
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else "")
            + "\r\n"
        )
        writer.write(request.encode() + after_handshake)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert (b"permessage-deflate" in head.lower()) == deflate, head
        return cls(reader, writer)

    @staticmethod
    def frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
        """One final, masked client frame (payloads under 126 bytes); ``rsv1`` marks it compressed."""
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        return bytes((0x80 | (0x40 if rsv1 else 0) | opcode, 0x80 | len(payload))) + mask + masked

    def send(self, opcode: int, payload: bytes, *, rsv1: bool = False) -> None:
        self.writer.write(self.frame(opcode, payload, rsv1=rsv1))

    async def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = await self.reader.readexactly(2)
        self.compressed = bool(first & 0x40)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(size)

    async def read_until_close(self) -> int:
        """Read frames until the server's CLOSE; its close code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == _OP_CLOSE:
                return int.from_bytes(payload[:2], "big")


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_aiohttp_forgets_an_adopted_websocket_which_keeps_working(fanout_hub: StartFanoutHub) -> None:
    """After the handshake aiohttp holds nothing of the connection (that is the memory saved),
    and the WebSocket still carries events both ways."""
    hub = await fanout_hub()
    clients = [await hub.raw() for _ in range(3)]
    server = hub.runner.server
    assert server is not None
    assert server.connections == [], "aiohttp still tracks an adopted connection"
    assert all(hub.manager.takes_direct_writes(client.eio_sid) for client in clients)
    await hub.sio.emit("hello", 1, room=ROOM)
    for client in clients:
        assert await client.next_event() == ("hello", [1])
        assert await client.emit("ping_me", 7, ack=True) == [{"pong": 7}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_no_session_keeps_its_aiohttp_request_alive(fanout_hub: StartFanoutHub) -> None:
    """python-socketio keeps each session's environ, which held the aiohttp request that opened
    it (and through it the headers, the payload reader and, for a WebSocket, everything its
    adoption freed), on WebSocket and on polling alike."""
    hub = await fanout_hub()
    requests: list[weakref.ref[web.BaseRequest]] = []
    translate_request = hub.sio.eio._async["translate_request"]

    def recording(request: web.BaseRequest) -> dict[str, Any]:
        requests.append(weakref.ref(request))
        return translate_request(request)  # type: ignore[no-any-return]

    hub.sio.eio._async = {**hub.sio.eio._async, "translate_request": recording}
    client = await hub.raw()
    # Connection: close, or aiohttp's keep-alive loop would hold the request until the next one
    poll = f"{hub.url}/socket.io/?EIO=4&transport=polling"
    async with hub.http.get(poll, headers={"Connection": "close"}) as reply:
        polling_sid = json.loads((await reply.text())[1:])["sid"]
    assert len(requests) == 2, "precondition: two requests, the WebSocket's and the first poll"
    for eio_sid in (client.eio_sid, polling_sid):
        assert "aiohttp.request" not in hub.sio.environ[eio_sid]
        assert "wsgi.input" not in hub.sio.environ[eio_sid]
    gc.collect()
    assert [request() for request in requests] == [None, None], "a request outlived its session's start"
    assert await client.emit("ping_me", 1, ack=True) == [{"pong": 1}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_frame_sent_with_the_handshake_is_not_lost(fanout_hub: StartFanoutHub) -> None:
    """Bytes that arrive before the connection is adopted were parsed by aiohttp; they stay queued."""
    hub = await fanout_hub()
    connect_namespace = _RawWebSocket.frame(_OP_TEXT, b"40")
    ws = await _RawWebSocket.connect(hub.url, after_handshake=connect_namespace)
    async with asyncio.timeout(10):
        opcode, opened = await ws.read_frame()
        assert (opcode, opened[:1]) == (_OP_TEXT, b"0")
        opcode, connected = await ws.read_frame()
    assert opcode == _OP_TEXT and connected.startswith(b"40{"), connected
    assert "sid" in json.loads(connected[2:])
    ws.writer.close()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_ping_frame_is_answered_with_a_pong(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    url = hub.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with hub.http.ws_connect(url, autoping=False) as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.ping(b"are you there")
        async with asyncio.timeout(10):
            reply = await ws.receive()
        assert (reply.type, reply.data) == (aiohttp.WSMsgType.PONG, b"are you there")


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_client_close_is_answered_and_ends_the_session(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    client = await hub.raw()
    server_side = hub.sio.eio.sockets[client.eio_sid].websocket_transport
    await client.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
    assert client.ws.close_code == aiohttp.WSCloseCode.OK, "the server answers the client's CLOSE"
    async with asyncio.timeout(10):
        while not hub.disconnects or not server_side.is_closing():
            await asyncio.sleep(0.01)
    assert hub.disconnects == [(client.sid, "transport close")]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("deflate", "opcode", "payload"),
    [
        pytest.param(False, _OP_RESERVED, b"what is this", id="reserved-opcode"),
        pytest.param(True, _OP_TEXT, b"\xff\xff\xff\xff", id="corrupt-deflate"),  # a reserved block type
    ],
)
async def test_a_broken_stream_closes_with_1002_and_others_are_served(
    fanout_hub: StartFanoutHub, deflate: bool, opcode: int, payload: bytes
) -> None:
    """A reserved opcode is a WebSocket protocol error; a deflate stream that does not inflate
    fails in zlib instead. Both end that connection with 1002 and nothing else."""
    hub = await fanout_hub(websocket_deflate=deflate)
    bystander = await hub.raw()
    ws = await _RawWebSocket.connect(hub.url, deflate=deflate)
    ws.send(opcode, payload, rsv1=deflate)
    async with asyncio.timeout(10):
        assert await ws.read_until_close() == aiohttp.WSCloseCode.PROTOCOL_ERROR
        assert await ws.reader.read() == b"", "the server closes the TCP connection after its CLOSE"
    assert await bystander.emit("ping_me", 1, ack=True) == [{"pong": 1}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_message_over_the_size_limit_closes_with_1009(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub(server_options={"max_http_buffer_size": 1000})
    client = await hub.raw()
    await client.ws.send_str("42" + json.dumps(["ping_me", "x" * 2000]))
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    async with asyncio.timeout(10):
        while client.eio_sid in hub.sio.eio.sockets:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_peer_that_never_answers_the_close_is_aborted(
    fanout_hub: StartFanoutHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket_module, "CLOSE_TIMEOUT_S", 0.5)
    hub = await fanout_hub()
    ws = await _RawWebSocket.connect(hub.url)
    ws.send(_OP_TEXT, b"40")
    async with asyncio.timeout(10):
        await ws.read_frame()  # OPEN
        await ws.read_frame()  # the namespace CONNECT reply
    eio_sid = next(iter(hub.sio.eio.sockets))
    server_side = hub.sio.eio.sockets[eio_sid].websocket_transport
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await hub.sio.eio.disconnect(eio_sid)  # sends CLOSE, which this peer never answers
    async with asyncio.timeout(10):
        assert await ws.read_until_close() == aiohttp.WSCloseCode.OK
        while not server_side.is_closing():
            await asyncio.sleep(0.01)
        assert loop.time() - asked >= 0.45, "closed before the close timeout: the server did not wait"
        with contextlib.suppress(ConnectionResetError):  # an abort may look like a reset
            assert await ws.reader.read() == b""


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_compressed_websocket_is_served_but_takes_no_direct_writes(
    fanout_hub: StartFanoutHub,
) -> None:
    """With permessage-deflate turned on, the adopted WebSocket keeps aiohttp's compressor and
    decompressor; the fan-out's prebuilt uncompressed frames cannot go to it directly."""
    hub = await fanout_hub(websocket_deflate=True)
    client = await RawClient.connect(hub.http, hub.url, compress=15)
    hub.clients.append(client)
    assert client.ws.compress == 15, "precondition: the client negotiated permessage-deflate"
    assert not hub.manager.takes_direct_writes(client.eio_sid)
    await hub.sio.emit("squeezed", "y" * 5000, room=ROOM)
    assert await client.next_event() == ("squeezed", ["y" * 5000])
    assert await client.emit("ping_me", "z" * 3000, ack=True) == [{"pong": "z" * 3000}]

    raw = await _RawWebSocket.connect(hub.url, deflate=True)
    async with asyncio.timeout(10):
        opcode, _ = await raw.read_frame()
    assert opcode == _OP_TEXT and raw.compressed, "the adopted WebSocket's frames are compressed"
    raw.writer.close()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_closed_websocket_is_freed_without_waiting_for_the_garbage_collector(
    fanout_hub: StartFanoutHub,
) -> None:
    """The adopted connection, its parser, queue, writer and link point at each other; once the
    WebSocket is finished those cycles are broken, so reference counting frees it at once."""
    hub = await fanout_hub()
    client = await hub.raw()
    frames = weakref.ref(hub.sio.eio.sockets[client.eio_sid]._ws._websocket._frames)
    gc.collect()
    gc.disable()
    try:
        await client.close()
        async with asyncio.timeout(10):
            while client.eio_sid in hub.sio.eio.sockets or hub.sio.eio._websockets:
                await asyncio.sleep(0.01)
            while frames() is not None:  # the transport lets go of its protocol a loop turn after closing
                await asyncio.sleep(0.01)
    finally:
        gc.enable()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_shutdown_aborts_a_websocket_that_outlives_its_grace(fanout_hub: StartFanoutHub) -> None:
    """A peer that never answers the CLOSE would hold the close for CLOSE_TIMEOUT_S (10 s); shutdown
    gives it ``shutdown_grace`` and then aborts it, running the session's disconnect handler."""
    hub = await fanout_hub(server_options={"shutdown_grace": 0.2})
    ws = await _RawWebSocket.connect(hub.url)
    ws.send(_OP_TEXT, b"40")
    async with asyncio.timeout(10):
        await ws.read_frame()  # OPEN
        await ws.read_frame()  # the namespace CONNECT reply
    async with asyncio.timeout(5):  # well under CLOSE_TIMEOUT_S
        await hub.sio.shutdown()
        await ws.read_until_close()
        with contextlib.suppress(ConnectionResetError):  # an abort may look like a reset
            assert await ws.reader.read() == b""
    assert [reason for _, reason in hub.disconnects] == ["server disconnect"]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_connection_lost_during_its_handshake_ends_its_session(
    fanout_hub: StartFanoutHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer can vanish between the 101 response and the adoption; the session it opened must
    not wait for its ping timeout. (The loss is simulated: its timing cannot be arranged.)"""

    def lost(cls: type[AdoptedWebSocket], request: object, response: object) -> AdoptedWebSocket:
        raise WebSocketClosedError("the connection closed during the WebSocket handshake")

    monkeypatch.setattr(AdoptedWebSocket, "adopt", classmethod(lost))
    hub = await fanout_hub()
    url = hub.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with hub.http.ws_connect(url) as ws, asyncio.timeout(10):
        ending = await ws.receive()
    assert ending.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), ending
    async with asyncio.timeout(10):
        while hub.sio.eio.sockets:
            await asyncio.sleep(0.01)
