"""The load generator: subscribers in worker processes, and one publisher.

Three dialects, one scenario contract (a room of subscribers, a publisher whose messages the
server broadcasts to the room):

``soko``
    The Soko hub's real protocol. A subscriber is a shopper (own JWT) that sends ``stock.watch``
    for boutique ``b1`` and so joins the ``inv:b1`` room; the publisher is a device of ``b1``
    sending ``stock.update`` with one ``stock.adjust`` per message, and every applied change is
    a durable ``stock`` frame fanned out to the room. The message id rides in ``event_id``.
``sio``
    A plain Socket.IO room/echo server (stock python-socketio, Node socket.io): ``join`` with the
    room name, ``pub`` with ``{"room", "id", "pad"}``; the server emits ``msg`` with the same
    object to the room.
``raw``
    No Socket.IO: every WebSocket on ``/`` is a subscriber, a text message on ``/pub`` is
    broadcast to all of them as is.

Every message carries an id ``t<send time ns>x<step>x<index>`` so a receiver measures the
delivery latency (same machine, same wall clock) and marks each (step, index) it got: a
duplicate or a message of another step is counted, never mistaken for a delivery.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson

from bench.wsclient import WsClient, open_ws

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
ID_PATTERN = re.compile(rb"t(\d{19})x(\d+)x(\d+)")
HIST_EDGES_US = np.geomspace(1.0, 1e8, 1601)
"""Latency histogram bin edges in microseconds (1 µs to 100 s, ~1.2 % per bin)."""
BOUTIQUE = "b1"
ROOM = "r1"
PEER_PAD = "x" * 149
"""Makes a peer's ``msg`` frame about as long as the hub's ``stock`` frame (~215 bytes)."""
CONNECTIONS_PER_SOURCE = 20_000
"""Sockets per 127.0.0.x source address, below the ephemeral port range of one address."""


def message_id(step: int, index: int) -> str:
    return f"t{time.time_ns()}x{step}x{index}"


def source_address(index: int, base: int = 1) -> str:
    """The 127.0.0.x address socket ``index`` connects from, counting from 127.0.0.``base``."""
    return f"127.0.0.{base + index // CONNECTIONS_PER_SOURCE}"


class SioState:
    """Socket.IO session state of one client: namespace connect, acks, and the messages it got."""

    __slots__ = ("acks", "auth", "connected", "count", "next_ack", "seen")

    def __init__(self, auth: bytes) -> None:
        self.auth = auth
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = itertools.count(1)
        self.seen = bytearray()
        self.count = 0

    def control(self, client: WsClient, payload: bytes) -> None:
        """Handle a non-event Engine.IO/Socket.IO packet."""
        if payload == b"2":
            client.send(b"3")
        elif payload.startswith(b"43"):
            bracket = payload.index(b"[")
            fut = self.acks.pop(int(payload[2:bracket]), None)
            if fut is not None and not fut.done():
                fut.set_result(orjson.loads(payload[bracket:])[0])
        elif payload.startswith(b"0{"):
            client.send(b"40" + self.auth)
        elif payload.startswith(b"40") and not self.connected.done():
            self.connected.set_result(None)
        elif payload.startswith(b"44") and not self.connected.done():
            self.connected.set_exception(ConnectionRefusedError(payload.decode(errors="replace")))
        elif payload.startswith((b"41", b"1")):
            client.close()

    async def call(self, client: WsClient, event: str, data: Any, timeout: float = 30.0) -> Any:
        """Emit ``event`` with an ack and return the ack's first argument."""
        ack_id = next(self.next_ack)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = fut
        client.send(b"42" + str(ack_id).encode() + orjson.dumps([event, data]))
        return await asyncio.wait_for(fut, timeout)


@dataclass
class StepStats:
    """What one worker saw during one step."""

    step: int = -1
    m: int = 0
    received: int = 0
    complete: int = 0
    duplicates: int = 0
    foreign: int = 0
    nbytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    lat_us: array.array[int] = field(default_factory=lambda: array.array("q"))


class Subscribers:
    """All the subscriber sockets of one worker process, and what they receive."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.dialect: str = cfg["dialect"]
        self.clients: list[WsClient] = []
        self.stats = StepStats()
        self.on_progress: Callable[[], None] | None = None

    def on_message(self, client: WsClient, payload: bytes, now: int) -> None:
        if self.dialect == "raw" or payload.startswith(b"42"):
            self._record(client, payload, now)
        else:
            client.state.control(client, payload)  # type: ignore[attr-defined]

    def _record(self, client: WsClient, payload: bytes, now: int) -> None:
        found = ID_PATTERN.search(payload)
        if found is None:
            return
        st = self.stats
        if int(found.group(2)) != st.step:
            st.foreign += 1
            return
        index = int(found.group(3))
        state = client.state
        seen = state.seen  # type: ignore[attr-defined]
        if seen[index]:
            st.duplicates += 1
            return
        seen[index] = 1
        state.count += 1  # type: ignore[attr-defined]
        if state.count == st.m:  # type: ignore[attr-defined]
            st.complete += 1
        st.received += 1
        st.nbytes += len(payload)
        st.lat_us.append((now - int(found.group(1))) // 1000)
        if not st.first_ns:
            st.first_ns = now
        st.last_ns = now

    async def connect_one(self, index: int) -> WsClient:
        cfg = self.cfg
        if self.dialect == "raw":
            return await open_ws(
                cfg["host"],
                cfg["port"],
                "/",
                self.on_message,
                time.time_ns,
                source=source_address(index, cfg["source_base"]),
                state=SioState(b""),
            )
        auth = b""
        if self.dialect == "soko":
            auth = orjson.dumps({"token": cfg["tokens"][index - cfg["first"]]})
        state = SioState(auth)
        client = await open_ws(
            cfg["host"],
            cfg["port"],
            SIO_PATH,
            self.on_message,
            time.time_ns,
            source=source_address(index, cfg["source_base"]),
            state=state,
        )
        await asyncio.wait_for(state.connected, 30)
        if self.dialect == "soko":
            reply = await state.call(client, "stock.watch", {"boutique_id": BOUTIQUE})
        else:
            reply = await state.call(client, "join", ROOM)
        if reply is not True and not (isinstance(reply, dict) and reply.get("ok")):
            client.close()
            raise ConnectionError(f"join refused: {reply!r}")
        return client

    async def connect_all(self) -> tuple[int, list[str]]:
        """Connect this worker's share; returns (connected, distinct error messages)."""
        gate = asyncio.Semaphore(self.cfg.get("concurrency", 100))
        errors: set[str] = set()

        async def one(index: int) -> None:
            async with gate:
                for attempt in range(3):
                    try:
                        self.clients.append(await self.connect_one(index))
                        return
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        if attempt == 2:
                            errors.add(f"{type(exc).__name__}: {exc}"[:200])
                        await asyncio.sleep(0.2 * (attempt + 1))
                    finally:
                        if self.on_progress is not None:
                            self.on_progress()

        first = self.cfg["first"]
        await asyncio.gather(*(one(i) for i in range(first, first + self.cfg["count"])))
        return len(self.clients), sorted(errors)

    def alive(self) -> int:
        return sum(1 for c in self.clients if not c.closed.done())

    def arm(self, step: int, m: int) -> int:
        """Start counting ``step``'s ``m`` messages; returns the sockets still open."""
        self.stats = StepStats(step=step, m=m)
        for c in self.clients:
            c.state.seen = bytearray(m)  # type: ignore[attr-defined]
            c.state.count = 0  # type: ignore[attr-defined]
        return self.alive()

    async def collect(self, idle: float, deadline: float) -> dict[str, Any]:
        """Wait until every open socket has all messages, or no progress for ``idle`` s."""
        st = self.stats
        end = time.monotonic() + deadline
        last, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            alive = self.alive()
            if st.complete >= alive:
                break
            if st.received != last:
                last, last_change = st.received, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            await asyncio.sleep(0.05)
        lat = np.frombuffer(st.lat_us, dtype=np.int64)
        hist, _ = np.histogram(np.clip(lat, 1, 1e8 - 1), bins=HIST_EDGES_US)
        return {
            "received": st.received,
            "complete": st.complete,
            "alive": self.alive(),
            "duplicates": st.duplicates,
            "foreign": st.foreign,
            "bytes": st.nbytes,
            "first_ns": st.first_ns,
            "last_ns": st.last_ns,
            "lat_sum_us": int(lat.sum()) if lat.size else 0,
            "lat_max_us": int(lat.max()) if lat.size else 0,
            "hist": hist.tolist(),
        }

    def close(self) -> None:
        for c in self.clients:
            c.close()


async def _worker(pipe: Connection, cfg: dict[str, Any]) -> None:
    subs = Subscribers(cfg)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    connected, errors = await subs.connect_all()
    pipe.send({"connected": connected, "errors": errors})
    while True:
        cmd = await commands.get()
        if cmd[0] == "arm":
            pipe.send({"alive": subs.arm(cmd[1], cmd[2]), "cpu": time.process_time()})
        elif cmd[0] == "collect":
            result = await subs.collect(cmd[1], cmd[2])
            result["cpu"] = time.process_time()
            pipe.send(result)
        elif cmd[0] == "close":
            subs.close()
            await asyncio.sleep(0.2)
            loop.remove_reader(pipe.fileno())
            pipe.send({"closed": True})
            return


def worker_main(pipe: Connection, cfg: dict[str, Any]) -> None:
    """Entry point of a subscriber process: connect, then obey ``arm``/``collect``/``close``."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_worker(pipe, cfg))


class Publisher:
    """The one socket that makes the server broadcast; runs in the orchestrator's event loop."""

    def __init__(self, dialect: str, host: str, port: int, token: str | None = None) -> None:
        self.dialect = dialect
        self.host = host
        self.port = port
        self.token = token
        self.client: WsClient | None = None
        self.state = SioState(orjson.dumps({"token": token}) if token else b"")
        self.errors: list[str] = []
        self._pending: set[asyncio.Future[Any]] = set()

    def _on_message(self, client: WsClient, payload: bytes, now: int) -> None:
        if self.dialect != "raw" and not payload.startswith(b"42"):
            self.state.control(client, payload)

    async def connect(self) -> None:
        path = "/pub" if self.dialect == "raw" else SIO_PATH
        self.client = await open_ws(
            self.host, self.port, path, self._on_message, time.time_ns, state=self.state
        )
        if self.dialect != "raw":
            await asyncio.wait_for(self.state.connected, 30)

    def _check(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        reply = None if exc else fut.result()
        ok = exc is None and (reply is True or (isinstance(reply, dict) and reply.get("ok")))
        if not ok and len(self.errors) < 20:
            self.errors.append(repr(exc or reply)[:300])

    def publish(self, step: int, index: int) -> None:
        """Send one message now; an ack (sio, soko) is checked when it arrives."""
        assert self.client is not None
        mid = message_id(step, index)
        if self.dialect == "raw":
            self.client.send(orjson.dumps({"id": mid, "pad": PEER_PAD}))
            return
        if self.dialect == "soko":
            update = {
                "type": "stock.adjust",
                "event_id": mid,
                "boutique_id": BOUTIQUE,
                "sku": "s1",
                "delta": 1,
            }
            coro = self.state.call(self.client, "stock.update", {"updates": [update]})
        else:
            coro = self.state.call(self.client, "pub", {"room": ROOM, "id": mid, "pad": PEER_PAD})
        fut = asyncio.ensure_future(coro)
        self._pending.add(fut)
        fut.add_done_callback(self._check)

    async def run(self, step: int, m: int, rate: float, tick: Callable[[int], None] | None = None) -> None:
        """Publish ``m`` messages at ``rate`` per second, then wait for the outstanding acks."""
        start = time.monotonic()
        sent = 0
        while sent < m:
            due = min(m, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                self.publish(step, sent)
                sent += 1
            if tick is not None:
                tick(sent)
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        if self._pending:
            await asyncio.wait(self._pending, timeout=30)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
