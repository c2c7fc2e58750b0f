"""The load generator: client sockets in worker processes, driven step by step by the orchestrator.

Every client is described by a :class:`ClientSpec` (where it connects, with which credentials,
what it joins after connecting, what it sends, whose messages it receives). The orchestrator
(``bench.run``) builds the specs for each scenario and server; a worker process
(:func:`worker_main`) connects its share and obeys commands: ``arm`` a step, ``send`` the
step's messages on a fixed schedule, ``collect`` what arrived, ``drop`` every socket and
``storm`` back in, ``close``.

Three dialects speak to the servers:

``soko``
    The Soko hub's real protocol: ``stock.watch`` + a device's ``stock.update`` (fan-out),
    ``chat.send`` on a boutique conversation (chat pairs), ``driver.location`` + ``track.watch``
    (GPS), ``sync`` + ``catchup`` (reconnect storm).
``sio``
    A plain Socket.IO room server (stock python-socketio, Node socket.io): ``join`` a room;
    ``pub`` with ``{"room", "id", "pad"}`` makes the server emit ``msg`` with that object to
    the room (the sender too, when it is in the room).
``raw``
    No Socket.IO (``bench/peers/ws_server.py``): the path names the room; ``/r/<room>`` is a
    member whose every message is broadcast to the room, ``/p/<room>`` only publishes,
    ``/`` and ``/pub`` are the fan-out room.

A message carries an id ``t<send time ns>x<step>x<index>`` (the hub's ``event_id`` or chat
``client_id``, the peers' ``id``), so the receiver measures the delivery latency on the same
wall clock and marks each (step, index) it got: a duplicate or a message of another step is
counted, never mistaken for a delivery. A hub ``track.position`` frame has no free field, so
a driver's fix ``g`` sits at latitude ``origin + g * GPS_STEP_DEG`` and the watcher, which
shares the driver's worker, looks the send time up in that worker's table.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import re
import resource
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
GPS_STEP_DEG = 1e-4
"""Latitude between two consecutive fixes of a driver: 11 m, 40 km/h at 1 Hz, which passes the
hub's distance (5 m) and speed (250 km/h) filters."""
_PHI = 0.6180339887498949
_TRACK_POSITION = b'42["track.position",'


def message_id(step: int, index: int) -> str:
    return f"t{time.time_ns()}x{step}x{index}"


def source_address(index: int, base: int = 1) -> str:
    """The 127.0.0.x address socket ``index`` connects from, counting from 127.0.0.``base``.

    Wraps from .254 back to .2 (.1 is the publishers'); a run uses fresh addresses so that
    the ports of the previous run's closed sockets (TIME_WAIT, 60 s) are never needed.
    """
    return f"127.0.0.{2 + (base - 2 + index // CONNECTIONS_PER_SOURCE) % 253}"


def gps_origin(driver: int) -> tuple[float, float]:
    """Where driver ``driver`` starts (Nairobi), 220 m from its neighbours."""
    return -1.35 + (driver % 100) * 0.002, 36.70 + (driver // 100) * 0.002


def raise_nofile() -> tuple[int, str | None]:
    """Raise this process's RLIMIT_NOFILE (soft and hard) to ``/proc/sys/fs/nr_open``.

    Returns the soft limit in effect afterwards, and why the hard limit could not be raised
    (None when it was). Raising the hard limit needs CAP_SYS_RESOURCE, which root may lack in
    a container; the soft limit is then raised to the hard one. Never raises.
    """
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = int(f.read())
    except (OSError, ValueError):
        want = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    why = None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError) as exc:
        why = f"hard limit {hard} kept: {exc} (raising it needs CAP_SYS_RESOURCE{_cap_sys_resource()})"
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0], why


def _cap_sys_resource() -> str:
    """Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff), as a phrase."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    has = int(line.split()[1], 16) >> 24 & 1
                    return ", which this process has" if has else ", which this process lacks"
    except (OSError, ValueError):
        pass
    return ""


def ok_reply(reply: Any) -> bool:
    """A peer's ``True`` ack or a hub ``{"ok": true}`` envelope."""
    return reply is True or (isinstance(reply, dict) and bool(reply.get("ok")))


@dataclass(frozen=True, slots=True)
class Sender:
    """What a client sends during a step: ``m`` messages at a fixed rate, from a per-client phase.

    ``kind``: ``chat`` (hub ``chat.send`` to stream ``target``), ``gps`` (hub ``driver.location``),
    ``pub`` (Socket.IO ``pub`` to room ``target``) or ``raw`` (a text message on its WebSocket).
    Message ``k`` of a step gets index ``k * stride + offset``; the client sends only in steps
    whose ``active`` count exceeds ``rank``.
    """

    kind: str
    target: str = ""
    rank: int = 0
    stride: int = 1
    offset: int = 0


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client socket. ``auth`` is the Socket.IO CONNECT payload (``None``: a raw WebSocket).

    ``joins`` are acked requests sent, in order, after every (re)connect; each must be ok.
    In a step with ``m`` messages per sender, the client expects ``m * receives`` messages if
    ``source < active``. ``gps_driver >= 0`` decodes hub ``track.position`` frames of that driver.
    ``recover`` (stream, epoch) makes a reconnect in a storm run ``sync`` and ``catchup`` from
    the client's cursor (starting at ``cursor``) and check ``missed`` entries arrive in order.
    ``affinity`` picks the worker (``affinity % workers``).
    """

    index: int
    port: int
    path: str
    auth: bytes | None = b""
    joins: tuple[tuple[str, Any], ...] = ()
    receives: int = 0
    source: int = 0
    sender: Sender | None = None
    gps_driver: int = -1
    recover: tuple[str, str] | None = None
    cursor: int = 0
    missed: int = 0
    affinity: int = -1


class SioState:
    """Socket.IO session state of one client: namespace connect, acks, and the messages it got."""

    __slots__ = ("acks", "auth", "connected", "count", "cursor", "expected", "next_ack", "seen", "spec")

    def __init__(self, auth: bytes, spec: ClientSpec | None = None) -> None:
        self.auth = auth
        self.spec = spec
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks: dict[int, Callable[[Any], None]] = {}
        self.next_ack = itertools.count(1)
        self.seen = bytearray()
        self.count = 0
        self.expected = 0
        self.cursor = spec.cursor if spec else 0

    def control(self, client: WsClient, payload: bytes) -> None:
        """Handle a non-event Engine.IO/Socket.IO packet."""
        if payload == b"2":
            client.send(b"3")
        elif payload.startswith(b"43"):
            bracket = payload.index(b"[")
            callback = self.acks.pop(int(payload[2:bracket]), None)
            if callback is not None:
                callback(orjson.loads(payload[bracket:])[0])
        elif payload.startswith(b"0{"):
            client.send(b"40" + self.auth)
        elif payload.startswith(b"40") and not self.connected.done():
            self.connected.set_result(None)
        elif payload.startswith(b"44") and not self.connected.done():
            self.connected.set_exception(ConnectionRefusedError(payload.decode(errors="replace")))
        elif payload.startswith((b"41", b"1")):
            client.close()

    def emit(self, client: WsClient, event: str, data: Any, on_ack: Callable[[Any], None]) -> None:
        """Emit ``event`` with an ack; ``on_ack`` gets the ack's first argument."""
        ack_id = next(self.next_ack)
        self.acks[ack_id] = on_ack
        client.send(b"42" + str(ack_id).encode() + orjson.dumps([event, data]))

    async def call(self, client: WsClient, event: str, data: Any, timeout: float = 30.0) -> Any:
        """Emit ``event`` with an ack and return the ack's first argument."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any) -> None:
            if not fut.done():
                fut.set_result(reply)

        self.emit(client, event, data, done)
        return await asyncio.wait_for(fut, timeout)


@dataclass
class StepStats:
    """What one worker saw during one step."""

    step: int = -1
    received: int = 0
    complete: int = 0
    duplicates: int = 0
    foreign: int = 0
    nbytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    lat_us: array.array[int] = field(default_factory=lambda: array.array("q"))


def histogram(lat_us: Any) -> dict[str, Any]:
    """Histogram (``HIST_EDGES_US`` bins), sum and max of latencies in µs, for merging across workers."""
    lat = np.asarray(lat_us, dtype=np.int64)
    hist, _ = np.histogram(np.clip(lat, 1, 1e8 - 1), bins=HIST_EDGES_US)
    return {
        "hist": hist.tolist(),
        "lat_sum_us": int(lat.sum()) if lat.size else 0,
        "lat_max_us": int(lat.max()) if lat.size else 0,
    }


class Fleet:
    """All the client sockets of one worker process, what they send and what they receive."""

    def __init__(self, specs: list[ClientSpec], host: str, source_base: int, concurrency: int) -> None:
        self.specs = specs
        self.host = host
        self.source_base = source_base
        self.concurrency = concurrency
        self.clients: list[WsClient | None] = [None] * len(specs)
        self.stats = StepStats()
        self.expecting = 0
        self.gps_next: dict[int, int] = {}
        self.gps_sent: dict[tuple[int, int], tuple[int, int, int]] = {}
        """(driver, fix number) -> (send time ns, step, index), for this worker's watchers."""
        self.send_errors: list[str] = []
        self.send_error_count = 0
        self.pending = 0
        self._ack_plain = self._ack(gps=False)
        self._ack_gps = self._ack(gps=True)

    # ------------------------------------------------------------------ receiving

    def on_message(self, client: WsClient, payload: bytes, now: int) -> None:
        state: SioState = client.state  # type: ignore[assignment]
        spec = state.spec
        assert spec is not None
        if spec.auth is None or payload.startswith(b"42"):
            if spec.gps_driver >= 0:
                self._record_gps(state, spec.gps_driver, payload, now)
            else:
                found = ID_PATTERN.search(payload)
                if found is not None:
                    sent = int(found.group(1))
                    self._mark(state, int(found.group(2)), int(found.group(3)), sent, len(payload), now)
        else:
            state.control(client, payload)

    def _record_gps(self, state: SioState, driver: int, payload: bytes, now: int) -> None:
        if not payload.startswith(_TRACK_POSITION):
            return
        frame = orjson.loads(payload[2:])[1]
        fix = round((frame["lat"] - gps_origin(driver)[0]) / GPS_STEP_DEG)
        sent = self.gps_sent.get((driver, fix))
        if sent is None:
            self.stats.foreign += 1
            return
        self._mark(state, sent[1], sent[2], sent[0], len(payload), now)

    def _mark(self, state: SioState, step: int, index: int, sent_ns: int, nbytes: int, now: int) -> None:
        st = self.stats
        if step != st.step or index >= len(state.seen):
            st.foreign += 1
            return
        if state.seen[index]:
            st.duplicates += 1
            return
        state.seen[index] = 1
        state.count += 1
        if state.count == state.expected:
            st.complete += 1
        st.received += 1
        st.nbytes += nbytes
        st.lat_us.append((now - sent_ns) // 1000)
        if not st.first_ns:
            st.first_ns = now
        st.last_ns = now

    # ------------------------------------------------------------------ connecting

    async def _open(self, pos: int, base: int) -> WsClient:
        spec = self.specs[pos]
        state = SioState(spec.auth or b"", spec)
        old = self.clients[pos]
        if old is not None:
            state.cursor = old.state.cursor  # type: ignore[attr-defined]
        client = await open_ws(
            self.host,
            spec.port,
            spec.path,
            self.on_message,
            time.time_ns,
            source=source_address(spec.index, base),
            state=state,
        )
        try:
            if spec.auth is not None:
                await asyncio.wait_for(state.connected, 30)
            for event, data in spec.joins:
                reply = await state.call(client, event, data)
                if not ok_reply(reply):
                    raise ConnectionError(f"{event} refused: {reply!r}"[:200])
        except BaseException:
            client.close()
            raise
        return client

    async def _recover(self, client: WsClient) -> int:
        """``sync`` then ``catchup`` from the client's cursor; returns the entries caught up.

        Raises ``ConnectionError`` unless exactly ``spec.missed`` entries arrive, in seq order.
        """
        state: SioState = client.state  # type: ignore[assignment]
        spec = state.spec
        assert spec is not None and spec.recover is not None
        stream, epoch = spec.recover
        cursor = state.cursor
        reply = await state.call(
            client, "sync", {"cursors": [{"stream": stream, "epoch": epoch, "seq": cursor}]}
        )
        if not ok_reply(reply):
            raise ConnectionError(f"sync refused: {reply!r}"[:200])
        status = next((s for s in reply["data"]["streams"] if s["stream"] == stream), None)
        want = cursor + spec.missed
        if status is None or not status["recovered"] or not status["behind"] or status["head"] != want:
            raise ConnectionError(f"sync: unexpected status {status!r}"[:200])
        got = 0
        while True:
            request = {"stream": stream, "epoch": epoch, "after": cursor, "limit": 500}
            page = await state.call(client, "catchup", request)
            if not ok_reply(page):
                raise ConnectionError(f"catchup refused: {page!r}"[:200])
            data = page["data"]
            seqs = [e["seq"] for e in data["entries"]]
            if not data["recovered"] or seqs != list(range(cursor + 1, cursor + 1 + len(seqs))):
                raise ConnectionError("catchup: entries missing or out of order")
            got += len(seqs)
            cursor = data["next_after"]
            if not data["has_more"]:
                break
        if cursor != want:
            raise ConnectionError(f"catchup ended at {cursor}, expected {want}")
        state.cursor = cursor
        return got

    async def connect_all(self, on_progress: Callable[[], None] | None = None) -> dict[str, Any]:
        """Connect every client, ``concurrency`` at a time, 3 attempts each.

        Returns the number connected, distinct errors, and a histogram of the time from a
        client's first attempt to its last join ack.
        """
        gate = asyncio.Semaphore(self.concurrency)
        errors: set[str] = set()
        lat = array.array("q")

        async def one(pos: int) -> None:
            async with gate:
                t0 = time.time_ns()
                for attempt in range(3):
                    try:
                        self.clients[pos] = await self._open(pos, self.source_base)
                        lat.append((time.time_ns() - t0) // 1000)
                        return
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        if attempt == 2:
                            errors.add(f"{type(exc).__name__}: {exc}"[:200])
                        await asyncio.sleep(0.2 * (attempt + 1))
                    finally:
                        if on_progress is not None:
                            on_progress()

        await asyncio.gather(*(one(pos) for pos in range(len(self.specs))))
        return {"connected": self.alive(), "errors": sorted(errors), **histogram(lat)}

    def alive(self) -> int:
        return sum(1 for c in self.clients if c is not None and not c.closed.done())

    async def drop(self) -> int:
        """Close every socket and wait (≤ 10 s) until they are gone; returns how many were open."""
        open_ = [c for c in self.clients if c is not None and not c.closed.done()]
        for c in open_:
            c.close()
        if open_:
            await asyncio.wait([c.closed for c in open_], timeout=10)
        return len(open_)

    async def storm(self, start_ns: int, base: int) -> dict[str, Any]:
        """Reconnect every client at once (at wall time ``start_ns``, from source addresses counted
        from ``base``), rejoin, and for ``recover`` specs catch up; per-client time to ready, and
        to the TCP connection of the attempt that succeeded."""
        await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
        errors: set[str] = set()
        lat = array.array("q")
        tcp = array.array("q")
        entries = 0

        async def one(pos: int) -> None:
            nonlocal entries
            for attempt in range(5):
                try:
                    client = self.clients[pos] = await self._open(pos, base)
                    if self.specs[pos].recover is not None:
                        try:
                            got = await self._recover(client)
                        except BaseException:
                            client.close()
                            raise
                        entries += got
                    lat.append((time.time_ns() - start_ns) // 1000)
                    tcp.append((client.made_ns - start_ns) // 1000)
                    return
                except (OSError, TimeoutError, ConnectionError, KeyError, TypeError) as exc:
                    if attempt == 4:
                        errors.add(f"{type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(0.1 * (attempt + 1))

        await asyncio.gather(*(one(pos) for pos in range(len(self.specs))))
        return {
            "ready": len(lat),
            "entries": entries,
            "errors": sorted(errors),
            **histogram(lat),
            "tcp_hist": histogram(tcp)["hist"],
        }

    # ------------------------------------------------------------------ steps

    def arm(self, step: int, m: int, active: int) -> dict[str, int]:
        """Start counting ``step``: how many open sockets expect messages, and how many in all."""
        self.stats = StepStats(step=step)
        self.send_errors, self.send_error_count = [], 0
        self.gps_sent.clear()
        expecting = expected = 0
        for c in self.clients:
            if c is None:
                continue
            state: SioState = c.state  # type: ignore[assignment]
            spec = state.spec
            assert spec is not None
            state.expected = m * spec.receives if spec.source < active else 0
            state.seen = bytearray(state.expected)
            state.count = 0
            if state.expected and not c.closed.done():
                expecting += 1
                expected += state.expected
        self.expecting = expecting
        return {"expecting": expecting, "expected": expected}

    def _ack(self, gps: bool) -> Callable[[Any], None]:
        def check(reply: Any) -> None:
            self.pending -= 1
            ok = ok_reply(reply)
            if ok and gps:
                ok = bool(reply["data"]["kept"])
            if not ok:
                self.send_error_count += 1
                if len(self.send_errors) < 20:
                    self.send_errors.append(repr(reply)[:300])

        return check

    def _send(self, pos: int, step: int, k: int, due_ms: int) -> None:
        client = self.clients[pos]
        if client is None or client.closed.done():
            return
        state: SioState = client.state  # type: ignore[assignment]
        spec = state.spec
        assert spec is not None and spec.sender is not None
        s = spec.sender
        index = k * s.stride + s.offset
        if s.kind == "raw":
            client.send(orjson.dumps({"id": message_id(step, index), "pad": PEER_PAD}))
            return
        if s.kind == "gps":
            fix = self.gps_next.get(s.rank, 0)
            self.gps_next[s.rank] = fix + 1
            lat0, lon0 = gps_origin(s.rank)
            self.gps_sent[(s.rank, fix)] = (time.time_ns(), step, index)
            event = "driver.location"
            data: dict[str, Any] = {
                "lat": lat0 + fix * GPS_STEP_DEG,
                "lon": lon0,
                "accuracy": 8.0,
                "speed": 11.1,
                "heading": 0.0,
                "ts": due_ms,
            }
        elif s.kind == "chat":
            mid = message_id(step, index)
            event, data = "chat.send", {"stream": s.target, "client_id": mid, "text": mid}
        else:
            event, data = "pub", {"room": s.target, "id": message_id(step, index), "pad": PEER_PAD}
        self.pending += 1
        state.emit(client, event, data, self._ack_gps if s.kind == "gps" else self._ack_plain)

    async def send(self, step: int, m: int, rate: float, start_ns: int, active: int) -> dict[str, Any]:
        """Every sender with ``rank < active`` sends ``m`` messages, message ``k`` at
        ``start + phase + k / rate`` (phase spread over one period by rank); then wait ≤ 30 s
        for the acks. A GPS fix carries its scheduled time as its device ``ts``."""
        senders, ranks = [], []
        for pos, spec in enumerate(self.specs):
            if spec.sender is not None and spec.sender.rank < active and self.clients[pos] is not None:
                senders.append(pos)
                ranks.append(spec.sender.rank)
        sent = 0
        if senders:
            phase = (np.asarray(ranks) * _PHI % 1.0) / rate
            due = phase[:, None] + np.arange(m)[None, :] / rate
            order = np.argsort(due, axis=None, kind="stable")
            due_s = due.ravel()[order].tolist()
            who = np.repeat(np.asarray(senders), m)[order].tolist()
            nth = np.tile(np.arange(m), len(senders))[order].tolist()
            start_ms = start_ns // 1_000_000
            begin = time.monotonic() + (start_ns - time.time_ns()) / 1e9
            total = len(due_s)
            while sent < total:
                now = time.monotonic() - begin
                while sent < total and due_s[sent] <= now:
                    self._send(who[sent], step, nth[sent], start_ms + int(due_s[sent] * 1000))
                    sent += 1
                if sent < total:
                    await asyncio.sleep(max(0.0, due_s[sent] - (time.monotonic() - begin)))
        end = time.monotonic() + 30
        while self.pending > 0 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self.pending > 0:
            self.send_error_count += self.pending
            self.send_errors.append(f"{self.pending} acks missing after 30 s")
            self.pending = 0
        return {"sent": sent, "errors": list(self.send_errors), "error_count": self.send_error_count}

    async def collect(self, idle: float, deadline: float) -> dict[str, Any]:
        """Wait until every expecting socket has all its messages, or no progress for ``idle`` s."""
        st = self.stats
        end = time.monotonic() + deadline
        last, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            if st.complete >= self.expecting:
                break
            if st.received != last:
                last, last_change = st.received, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
            await asyncio.sleep(0.05)
        return {
            "received": st.received,
            "complete": st.complete,
            "expecting": self.expecting,
            "alive": self.alive(),
            "duplicates": st.duplicates,
            "foreign": st.foreign,
            "bytes": st.nbytes,
            "first_ns": st.first_ns,
            "last_ns": st.last_ns,
            **histogram(st.lat_us),
        }


async def _worker(pipe: Connection, cfg: dict[str, Any]) -> None:
    nofile, _ = raise_nofile()
    fleet = Fleet(cfg["specs"], cfg["host"], cfg["source_base"], cfg.get("concurrency", 100))
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    reply = await fleet.connect_all()
    pipe.send({**reply, "nofile": nofile, "cpu": time.process_time()})
    while True:
        cmd = await commands.get()
        if cmd[0] == "arm":
            pipe.send({**fleet.arm(*cmd[1:]), "cpu": time.process_time()})
        elif cmd[0] == "send":
            pipe.send({**await fleet.send(*cmd[1:]), "cpu": time.process_time()})
        elif cmd[0] == "collect":
            pipe.send({**await fleet.collect(*cmd[1:]), "cpu": time.process_time()})
        elif cmd[0] == "drop":
            pipe.send({"dropped": await fleet.drop(), "cpu": time.process_time()})
        elif cmd[0] == "storm":
            pipe.send({**await fleet.storm(*cmd[1:]), "cpu": time.process_time()})
        elif cmd[0] == "cpu":
            pipe.send({"alive": fleet.alive(), "cpu": time.process_time()})
        elif cmd[0] == "close":
            await fleet.drop()
            loop.remove_reader(pipe.fileno())
            pipe.send({"closed": True, "cpu": time.process_time()})
            return


def worker_main(pipe: Connection, cfg: dict[str, Any]) -> None:
    """Entry point of a load generator process: connect ``cfg["specs"]``, then obey commands."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_worker(pipe, cfg))


class Publisher:
    """The one socket that makes the server broadcast a fan-out; runs in the orchestrator's loop."""

    def __init__(self, dialect: str, host: str, port: int, token: str | None = None) -> None:
        self.dialect = dialect
        self.host = host
        self.port = port
        self.token = token
        self.client: WsClient | None = None
        self.state = SioState(orjson.dumps({"token": token}) if token else b"")
        self.errors: list[str] = []
        self.pending = 0

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

    def _check(self, reply: Any) -> None:
        self.pending -= 1
        if not ok_reply(reply) and len(self.errors) < 20:
            self.errors.append(repr(reply)[:300])

    def publish(self, step: int, index: int) -> None:
        """Send one message now; an ack (sio, soko) is checked when it arrives."""
        assert self.client is not None
        mid = message_id(step, index)
        if self.dialect == "raw":
            self.client.send(orjson.dumps({"id": mid, "pad": PEER_PAD}))
            return
        data: dict[str, Any]
        if self.dialect == "soko":
            update = {
                "type": "stock.adjust",
                "event_id": mid,
                "boutique_id": BOUTIQUE,
                "sku": "s1",
                "delta": 1,
            }
            event, data = "stock.update", {"updates": [update]}
        else:
            event, data = "pub", {"room": ROOM, "id": mid, "pad": PEER_PAD}
        self.pending += 1
        self.state.emit(self.client, event, data, self._check)

    async def run(self, step: int, m: int, rate: float, tick: Callable[[int], None] | None = None) -> None:
        """Publish ``m`` messages at ``rate`` per second, then wait ≤ 30 s for the outstanding acks."""
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
        end = time.monotonic() + 30
        while self.pending > 0 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self.pending > 0:
            self.errors.append(f"{self.pending} acks missing after 30 s")
            self.pending = 0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
