"""Orchestrate a benchmark run: start each server, drive it, measure it, write the results.

Each server runs alone, in a fresh process per scenario, with the load generator (worker
processes plus this one) beside it. Stepped scenarios (``fanout``, ``chat``, ``gps``,
``cluster``) offer a rising load, each step ``repeat`` times (the step's figures are the
medians), until a step is incomplete (a socket missed a message) or its p99 exceeds
``SATURATED_P99_MS``; the peak is the best complete step, and the p99 at half of the peak is
measured at a step offering half the peak's deliveries per second (an earlier step within
10 % of it, else one more step). See bench/README.md for what each scenario does per server.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import servers as srv
from bench.loadgen import (
    BOUTIQUE,
    CONNECTIONS_PER_SOURCE,
    HIST_EDGES_US,
    ROOM,
    SIO_PATH,
    ClientSpec,
    Publisher,
    Sender,
    SioState,
    gps_origin,
    ok_reply,
    raise_nofile,
    worker_main,
)
from bench.report import write_reports
from bench.wsclient import WsClient, open_ws
from hub.auth import issue_token
from protocol.ids import Role

SATURATED_P99_MS = 2000.0
HALF_PEAK_TOLERANCE = 0.10
PEER_NA_DURABLE = "no durable log: measured reconnect + rejoin only, nothing to catch up"
TOKEN_TTL = 4 * 3600


@dataclass(frozen=True)
class Fanout:
    """Room fan-out 1 -> ``subscribers``; ``targets`` are offered deliveries per second."""

    name: str
    subscribers: int
    targets: tuple[int, ...]
    step_seconds: float
    workers: int
    idle: float
    """Seconds without a new delivery after which a step is declared over (incomplete)."""
    kind: str = "fanout"


@dataclass(frozen=True)
class ChatPairs:
    """``pairs`` two-member rooms; both members send, each message reaches both."""

    name: str
    pairs: int
    targets: tuple[int, ...]
    step_seconds: float
    workers: int
    idle: float
    kind: str = "chat"


@dataclass(frozen=True)
class Gps:
    """``drivers`` at 1 Hz, driver ``d`` to ``1 + d % 3`` watchers; each step has the first
    ``active[i]`` drivers send ``step_seconds`` fixes."""

    name: str
    drivers: int
    active: tuple[int, ...]
    step_seconds: int
    workers: int
    idle: float
    kind: str = "gps"


@dataclass(frozen=True)
class Storm:
    """``clients`` in ``streams`` groups drop, miss ``missed`` messages each, and reconnect at once."""

    name: str
    clients: int
    streams: int
    missed: int
    workers: int
    kind: str = "storm"


@dataclass(frozen=True)
class Idle:
    """``connections`` sockets, each joined to one room, nothing sent: memory per connection."""

    name: str
    connections: int
    workers: int
    kind: str = "idle"


@dataclass(frozen=True)
class Catchup:
    """One client catches up ``messages`` missed entries of a durable stream (the hub only)."""

    name: str
    messages: int
    kind: str = "catchup"


@dataclass(frozen=True)
class Cluster:
    """The hub only: fan-out 1 -> ``subscribers`` on one hub process on Redis, then on two."""

    name: str
    subscribers: int
    targets: tuple[int, ...]
    step_seconds: float
    workers: int
    idle: float
    kind: str = "cluster"


Scenario = Fanout | ChatPairs | Gps | Storm | Idle | Catchup | Cluster
FULL_TARGETS = (5_000, 10_000, 20_000, 40_000, 80_000, 120_000, 160_000, 240_000)
CHAT_TARGETS = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 80_000, 120_000, 160_000)
QUICK: tuple[Scenario, ...] = (
    Fanout("fanout_200", 200, (10_000, 20_000), 1.0, 1, 5.0),
    ChatPairs("chat_50", 50, (1_000, 2_000), 1.0, 1, 5.0),
    Gps("gps_30", 30, (15, 30), 2, 1, 5.0),
    Storm("storm_200", 200, 4, 100, 1),
    Idle("idle_1k", 1000, 1),
    Catchup("catchup_1k", 1000),
    Cluster("cluster_200", 200, (4_000, 8_000), 1.0, 1, 5.0),
)
FULL: tuple[Scenario, ...] = (
    Fanout("fanout_1k", 1000, FULL_TARGETS, 4.0, 2, 10.0),
    Fanout("fanout_5k", 5000, FULL_TARGETS, 4.0, 2, 10.0),
    ChatPairs("chat_1k", 1000, CHAT_TARGETS, 4.0, 2, 10.0),
    Gps("gps_2k", 2000, (500, 1000, 2000), 5, 2, 10.0),
    Storm("storm_5k", 5000, 50, 100, 2),
    Idle("idle_20k", 20_000, 2),
    Catchup("catchup_10k", 10_000),
    Cluster("cluster_2k", 2000, FULL_TARGETS, 4.0, 2, 10.0),
)
MEDIAN_KEYS = (
    "wall_s",
    "tcp_p50_ms",
    "tcp_p99_ms",
    "tcp_p999_ms",
    "listen_overflows",
    "deliveries_per_s",
    "server_cpu_s",
    "server_cpu_pct",
    "deliveries_per_server_cpu_s",
    "server_rss_kb",
    "aux_cpu_s",
    "loadgen_cpu_s",
    "loadgen_cpu_pct",
    "mean_frame_bytes",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "mean_ms",
)
SUM_KEYS = ("expected", "received", "duplicates", "foreign", "error_count")


def percentiles_ms(hist: Any, prefix: str = "") -> dict[str, float | None]:
    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    out: dict[str, float | None] = {}
    cum = np.cumsum(hist)
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        if total == 0:
            out[prefix + key] = None
            continue
        i = int(np.searchsorted(cum, q * total))
        out[prefix + key] = round(float(np.sqrt(HIST_EDGES_US[i] * HIST_EDGES_US[i + 1])) / 1000, 3)
    return out


def merged_hist(replies: list[dict[str, Any]]) -> Any:
    return np.sum([np.asarray(r["hist"], dtype=np.int64) for r in replies], axis=0)


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    m = statistics.median(present)
    return round(m, 3) if isinstance(m, float) else m


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's record from its runs: medians of ``MEDIAN_KEYS``, totals of ``SUM_KEYS``,
    complete only if every run was; the runs themselves under ``runs`` when there are several."""
    if len(runs) == 1:
        return {**runs[0], "repeat": 1}
    record = {k: v for k, v in runs[0].items() if k not in MEDIAN_KEYS and k not in SUM_KEYS}
    record.update({k: _median([r.get(k) for r in runs]) for k in MEDIAN_KEYS if k in runs[0]})
    record.update({k: sum(r.get(k) or 0 for r in runs) for k in SUM_KEYS if k in runs[0]})
    record["complete"] = all(r["complete"] for r in runs)
    record["errors"] = [e for r in runs for e in r.get("errors", [])][:20]
    record["repeat"] = len(runs)
    record["runs"] = runs
    return record


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if node
        else None
    )
    return {
        "cpu": model,
        "cores": multiprocessing.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "node": node_version,
        "nr_open": srv.nr_open(),
        "uid": os.getuid(),
    }


def watchers_of(driver: int) -> int:
    """GPS watchers of driver ``driver``: 1, 2 or 3."""
    return 1 + driver % 3


def token(server: srv.RunningServer, role: Role, sub: str, boutique: str | None = None) -> bytes:
    """The Socket.IO CONNECT auth payload of a hub user."""
    jwt = issue_token(server.secret, role=role, sub=sub, boutique=boutique, ttl=TOKEN_TTL)
    return orjson.dumps({"token": jwt})


async def hub_client(port: int, auth: bytes) -> tuple[WsClient, SioState]:
    """One Socket.IO client in this process, connected to the hub's namespace."""
    state = SioState(auth)
    client = await open_ws(
        "127.0.0.1",
        port,
        SIO_PATH,
        lambda c, p, n: None if p.startswith(b"42") else state.control(c, p),
        time.time_ns,
        state=state,
    )
    await asyncio.wait_for(state.connected, 30)
    return client, state


class Session:
    """The servers of one scenario run and the load generator workers driving them."""

    def __init__(self, runner: Runner, servers: list[srv.RunningServer], name: str) -> None:
        self.runner = runner
        self.servers = servers
        self.name = name
        self.aux: list[srv.RunningServer] = []
        """Processes whose CPU is reported beside the servers' (Redis)."""
        self.task = runner.progress.add_task(f"{name}: starting", total=None)
        self.procs: list[tuple[Any, Any]] = []
        self.publisher: Publisher | None = None
        self.extra_clients: list[WsClient] = []
        self.capacity: list[int | None] = [None] * len(servers)
        """Sockets each server could still open (fd limit) when the clients began to connect."""

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def cpu(self) -> float:
        return sum(srv.cpu_seconds(p) for p in self.pids)

    def rss(self) -> int:
        return sum(srv.rss_kb(p) for p in self.pids)

    async def ready(self) -> int:
        """Wait for every server; returns their RSS (KB) before any client connected."""
        for s in [*self.aux, *self.servers]:
            await asyncio.to_thread(s.wait_ready)
        return self.rss()

    async def spawn(self, specs: list[ClientSpec], workers: int) -> dict[str, Any]:
        """Start workers holding ``specs`` (by ``affinity % workers``) and connect them all."""
        ctx = multiprocessing.get_context("spawn")
        shares: list[list[ClientSpec]] = [[] for _ in range(workers)]
        for spec in specs:
            shares[(spec.affinity if spec.affinity >= 0 else spec.index) % workers].append(spec)
        base = self.runner.take_sources(len(specs))
        for share in shares:
            if not share:
                continue
            cfg = {"specs": share, "host": "127.0.0.1", "source_base": base}
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
            proc.start()
            self.procs.append((proc, parent))
        replies = [await asyncio.to_thread(pipe.recv) for _, pipe in self.procs]
        return {
            "connected": sum(r["connected"] for r in replies),
            "connect_errors": sorted({e for r in replies for e in r["errors"]}),
            "loadgen_nofile": min(r["nofile"] for r in replies),
            "connect_loadgen_cpu_s": round(sum(r["cpu"] for r in replies), 3),
            **percentiles_ms(merged_hist(replies), "connect_"),
        }

    async def each(self, *cmd: Any) -> list[dict[str, Any]]:
        """Send ``cmd`` to every worker and return their replies."""
        for _, pipe in self.procs:
            pipe.send(cmd)
        return [await asyncio.to_thread(pipe.recv) for _, pipe in self.procs]

    async def measure(
        self,
        step: int,
        m: int,
        active: int,
        idle: float,
        drive: Callable[[], Awaitable[tuple[int, list[str], int]]],
    ) -> dict[str, Any]:
        """Arm the workers, ``drive`` the step (returns its start ns, errors and error count),
        collect, and compute the step's record."""
        armed = await self.each("arm", step, m, active)
        expecting = sum(r["expecting"] for r in armed)
        worker_cpu0 = sum(r["cpu"] for r in armed)
        cpu0, own0 = self.cpu(), time.process_time()
        aux0 = sum(srv.cpu_seconds(a.pid) for a in self.aux)
        t0, errors, error_count = await drive()
        replies = await self.each("collect", idle, 120.0)
        cpu1, own1 = self.cpu(), time.process_time()
        aux1 = sum(srv.cpu_seconds(a.pid) for a in self.aux)
        hist = merged_hist(replies)
        received = sum(r["received"] for r in replies)
        expected = sum(r["expected"] for r in armed)
        last = max(r["last_ns"] for r in replies)
        wall = (last - t0) / 1e9 if last else None
        server_cpu = cpu1 - cpu0
        loadgen_cpu = sum(r["cpu"] for r in replies) - worker_cpu0 + own1 - own0
        record: dict[str, Any] = {
            "messages": m,
            "sockets_expecting": expecting,
            "sockets_alive_after": sum(r["alive"] for r in replies),
            "expected": expected,
            "received": received,
            "duplicates": sum(r["duplicates"] for r in replies),
            "foreign": sum(r["foreign"] for r in replies),
            "complete": expected > 0 and received == expected and error_count == 0,
            "errors": errors[:20],
            "error_count": error_count,
            "wall_s": round(wall, 3) if wall else None,
            "deliveries_per_s": round(received / wall) if wall else 0,
            "server_cpu_s": round(server_cpu, 3),
            "server_cpu_pct": round(100 * server_cpu / wall, 1) if wall else None,
            "deliveries_per_server_cpu_s": round(received / server_cpu) if server_cpu > 0 else None,
            "server_rss_kb": self.rss(),
            "loadgen_cpu_s": round(loadgen_cpu, 3),
            "loadgen_cpu_pct": round(100 * loadgen_cpu / wall, 1) if wall else None,
            "mean_frame_bytes": round(sum(r["bytes"] for r in replies) / received, 1) if received else None,
            **percentiles_ms(hist),
            "max_ms": round(max(r["lat_max_us"] for r in replies) / 1000, 3),
            "mean_ms": round(sum(r["lat_sum_us"] for r in replies) / received / 1000, 3)
            if received
            else None,
        }
        if self.aux:
            record["aux_cpu_s"] = round(aux1 - aux0, 3)
        return record

    async def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        for client in self.extra_clients:
            client.close()
        for proc, pipe in self.procs:
            if proc.is_alive():
                try:
                    pipe.send(("close",))
                    await asyncio.to_thread(proc.join, 10)
                except (OSError, EOFError):
                    pass
            if proc.is_alive():
                proc.terminate()
        for s in [*self.servers, *self.aux]:
            s.stop()
        self.runner.progress.remove_task(self.task)

    def status(self, what: str, **fields: Any) -> None:
        """Show ``what`` this session is doing on its progress bar."""
        self.runner.progress.update(self.task, description=f"{self.name}: {what}", **fields)


class Runner:
    def __init__(
        self, names: list[str], progress: Progress, repeat: int, quick: bool, nofile_note: str | None
    ) -> None:
        self.names = names
        self.progress = progress
        self.repeat = repeat
        self.settle = 0.5 if quick else 2.0
        """Seconds between the last join and the RSS reading."""
        self.idle_seconds = 1.0 if quick else 5.0
        self.nofile_note = nofile_note or "the limit was raised as far as allowed"
        self.source_base = 2
        """First 127.0.0.x of the next run's clients; 127.0.0.1 is left to publishers."""
        self._steps = itertools.count()

    def take_sources(self, sockets: int) -> int:
        """Fresh source addresses for ``sockets`` sockets: closed sockets keep their ports in
        TIME_WAIT for a minute."""
        base = self.source_base
        self.source_base += -(-sockets // CONNECTIONS_PER_SOURCE)
        return base

    def next_step(self) -> int:
        return next(self._steps)

    # ------------------------------------------------------------------ common parts

    def _fd_notes(self, session: Session, sockets: int, connected: dict[str, Any]) -> dict[str, Any]:
        """The fd limits in effect, and a note when one is too low for ``sockets`` sockets."""
        limits = [s.nofile() for s in session.servers]
        out: dict[str, Any] = {"server_nofile": limits, "loadgen_nofile": connected["loadgen_nofile"]}
        short = [
            f"server fd limit {lim} (room for {cap} sockets)"
            for lim, cap in zip(limits, session.capacity, strict=True)
            if lim is not None and cap is not None and cap < sockets / len(session.servers)
        ]
        per_worker = -(-sockets // max(1, len(session.procs)))
        if connected["loadgen_nofile"] < per_worker + 64:
            short.append(f"load generator fd limit {connected['loadgen_nofile']} ({per_worker} per worker)")
        if short:
            out["fd_limit_note"] = f"{', '.join(short)} < {sockets} sockets; {self.nofile_note}"
        return out

    async def _connect(self, session: Session, specs: list[ClientSpec], workers: int) -> dict[str, Any]:
        """Start the servers, connect ``specs``; the memory and fd figures every scenario reports."""
        rss_base = await session.ready()
        session.capacity = [s.socket_capacity() for s in session.servers]
        session.status("connecting", total=len(specs), completed=0)
        connected = await session.spawn(specs, workers)
        await asyncio.sleep(self.settle)
        rss_connected = session.rss()
        self.progress.update(session.task, completed=connected["connected"])
        n = connected["connected"]
        return {
            **connected,
            **self._fd_notes(session, len(specs), connected),
            "sockets": len(specs),
            "rss_base_kb": rss_base,
            "rss_connected_kb": rss_connected,
            "kb_per_conn": round((rss_connected - rss_base) / n, 1) if n else None,
        }

    async def _repeated(
        self, run_step: Callable[[float], Awaitable[dict[str, Any]]], target: float
    ) -> dict[str, Any]:
        runs = [await run_step(target) for _ in range(self.repeat)]
        record = merge_runs(runs)
        record["target_deliveries_per_s"] = round(target)
        return record

    async def ramp(
        self, targets: tuple[float, ...], run_step: Callable[[float], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Steps of rising offered load until one is incomplete or saturated; peak; half peak."""
        steps: list[dict[str, Any]] = []
        for target in targets:
            record = await self._repeated(run_step, target)
            steps.append(record)
            if not record["complete"] or (record["p99_ms"] or 0) > SATURATED_P99_MS:
                break
        done = [s for s in steps if s["complete"] and (s["p99_ms"] or 0) <= SATURATED_P99_MS]
        peak = max(done, key=lambda s: s["deliveries_per_s"]) if done else None
        half: dict[str, Any] | None = None
        if peak is not None:
            want = peak["deliveries_per_s"] / 2
            near = [
                s for s in steps if abs(s["target_deliveries_per_s"] - want) <= HALF_PEAK_TOLERANCE * want
            ]
            if near:
                step = min(near, key=lambda s: abs(s["target_deliveries_per_s"] - want))
                how = f"measured: the step offering {step['target_deliveries_per_s']:,}/s (within 10 %)"
            else:
                step = await self._repeated(run_step, want)
                how = f"measured: an extra step offering {step['target_deliveries_per_s']:,}/s"
            half = {
                "offered_deliveries_per_s": step["target_deliveries_per_s"],
                "deliveries_per_s": step["deliveries_per_s"],
                "p50_ms": step["p50_ms"],
                "p99_ms": step["p99_ms"],
                "p999_ms": step["p999_ms"],
                "complete": step["complete"],
                "how": how,
                "step": None if any(step is s for s in steps) else step,
            }
        efficiency = [
            s["deliveries_per_server_cpu_s"]
            for s in steps
            if s["complete"] and s["deliveries_per_server_cpu_s"]
        ]
        return {
            "steps": steps,
            "peak": peak,
            "half_peak": half,
            "best_per_server_cpu_s": max(efficiency, default=None),
            "all_complete": bool(steps) and all(s["complete"] for s in steps),
            "ok": bool(steps) and steps[0]["complete"],
        }

    def _publisher_drive(
        self, session: Session, step: int, m: int, rate: float
    ) -> Callable[[], Awaitable[tuple[int, list[str], int]]]:
        publisher = session.publisher
        assert publisher is not None

        async def drive() -> tuple[int, list[str], int]:
            publisher.errors.clear()
            t0 = time.time_ns()
            self.progress.update(session.task, total=m, completed=0)
            await publisher.run(
                step, m, rate, lambda sent: self.progress.update(session.task, completed=sent)
            )
            return t0, list(publisher.errors), len(publisher.errors)

        return drive

    def _worker_drive(
        self, session: Session, step: int, m: int, rate: float, active: int, start_ns: int
    ) -> Callable[[], Awaitable[tuple[int, list[str], int]]]:
        async def drive() -> tuple[int, list[str], int]:
            replies = await session.each("send", step, m, rate, start_ns, active)
            errors = [e for r in replies for e in r["errors"]]
            return start_ns, errors, sum(r["error_count"] for r in replies)

        return drive

    # ------------------------------------------------------------------ fan-out (and the cluster)

    def _fanout_specs(self, dialect: str, servers: list[srv.RunningServer], n: int) -> list[ClientSpec]:
        specs = []
        for i in range(n):
            port = servers[i % len(servers)].port
            if dialect == "soko":
                auth = token(servers[0], Role.SHOPPER, f"u{i}")
                spec = ClientSpec(i, port, SIO_PATH, auth, (("stock.watch", {"boutique_id": BOUTIQUE}),), 1)
            elif dialect == "sio":
                spec = ClientSpec(i, port, SIO_PATH, b"", (("join", ROOM),), 1)
            else:
                spec = ClientSpec(i, port, "/", None, (), 1)
            specs.append(spec)
        return specs

    async def _fanout_session(
        self, session: Session, dialect: str, sc: Fanout | Cluster, result: dict[str, Any]
    ) -> None:
        specs = self._fanout_specs(dialect, session.servers, sc.subscribers)
        result.update(await self._connect(session, specs, sc.workers))
        first = session.servers[0]
        device = None
        if dialect == "soko":
            device = issue_token(first.secret, role=Role.DEVICE, sub="dev1", boutique=BOUTIQUE, ttl=TOKEN_TTL)
        session.publisher = Publisher(dialect, "127.0.0.1", first.port, device)
        await session.publisher.connect()

        async def run_step(target: float) -> dict[str, Any]:
            rate = target / sc.subscribers
            m = max(20, round(rate * sc.step_seconds))
            step = self.next_step()
            session.status(f"{target / 1000:.0f}k/s offered")
            drive = self._publisher_drive(session, step, m, rate)
            return await session.measure(step, m, 1, sc.idle, drive)

        result.update(await self.ramp(tuple(float(t) for t in sc.targets), run_step))

    async def run_fanout(self, sc: Fanout, name: str, workdir: Path) -> dict[str, Any]:
        kind = srv.SERVERS[name]
        session = Session(self, [srv.start(name, workdir / f"{sc.name}-{name}")], f"{sc.name} {name}")
        result: dict[str, Any] = {"label": kind.label}
        try:
            await self._fanout_session(session, kind.dialect, sc, result)
        finally:
            await session.close()
        return result

    async def run_cluster(self, sc: Cluster, nodes: int, workdir: Path) -> dict[str, Any]:
        """Fan-out on ``nodes`` hub processes sharing one redis-server: subscribers alternate
        between the nodes, the publisher (a device) is on the first."""
        base = workdir / f"{sc.name}-{nodes}"
        redis, url = srv.start_redis(base / "redis")
        secret = os.urandom(32).hex()
        hubs = [srv.start("soko", base / f"node{i}", secret=secret, broker=url) for i in range(nodes)]
        session = Session(self, hubs, f"{sc.name} soko x{nodes}")
        session.aux = [redis]
        result: dict[str, Any] = {"label": f"Soko hub, {nodes} process{'es' if nodes > 1 else ''} on Redis"}
        try:
            await self._fanout_session(session, "soko", sc, result)
        finally:
            await session.close()
        return result

    # ------------------------------------------------------------------ chat pairs

    def _chat_specs(self, dialect: str, server: srv.RunningServer, pairs: int) -> list[ClientSpec]:
        """Pair ``p`` is sockets ``2p`` and ``2p + 1``; message ``k`` of side ``s`` has index ``2k + s``."""
        specs = []
        for i in range(2 * pairs):
            pair, side = divmod(i, 2)
            if dialect == "soko":
                stream = f"chat:b:b{pair}:s{pair}"
                auth = (
                    token(server, Role.SHOPPER, f"s{pair}")
                    if side == 0
                    else token(server, Role.STAFF, f"st{pair}", f"b{pair}")
                )
                sender = Sender("chat", stream, i, 2, side)
                spec = ClientSpec(i, server.port, SIO_PATH, auth, (), 2, 0, sender)
            elif dialect == "sio":
                sender = Sender("pub", f"p{pair}", i, 2, side)
                spec = ClientSpec(i, server.port, SIO_PATH, b"", (("join", f"p{pair}"),), 2, 0, sender)
            else:
                sender = Sender("raw", "", i, 2, side)
                spec = ClientSpec(i, server.port, f"/r/p{pair}", None, (), 2, 0, sender)
            specs.append(spec)
        return specs

    async def run_chat(self, sc: ChatPairs, name: str, workdir: Path) -> dict[str, Any]:
        kind = srv.SERVERS[name]
        server = srv.start(name, workdir / f"{sc.name}-{name}")
        session = Session(self, [server], f"{sc.name} {name}")
        result: dict[str, Any] = {"label": kind.label, "pairs": sc.pairs}
        try:
            specs = self._chat_specs(kind.dialect, server, sc.pairs)
            result.update(await self._connect(session, specs, sc.workers))

            async def run_step(target: float) -> dict[str, Any]:
                rate = target / (4 * sc.pairs)  # every socket sends; each message reaches 2 sockets
                m = max(2, round(rate * sc.step_seconds))
                step = self.next_step()
                session.status(f"{target / 1000:.0f}k/s offered", total=None)
                start = time.time_ns() + 300_000_000
                return await session.measure(
                    step, m, 1, sc.idle, self._worker_drive(session, step, m, rate, 1 << 30, start)
                )

            result.update(await self.ramp(tuple(float(t) for t in sc.targets), run_step))
        finally:
            await session.close()
        return result

    # ------------------------------------------------------------------ GPS

    def _gps_specs(self, dialect: str, server: srv.RunningServer, drivers: int) -> list[ClientSpec]:
        """Driver ``d`` and its watchers share a worker (``affinity = d``)."""
        specs: list[ClientSpec] = []
        index = itertools.count()
        for d in range(drivers):
            if dialect == "soko":
                auth = token(server, Role.DRIVER, f"d{d}")
                specs.append(
                    ClientSpec(
                        next(index), server.port, SIO_PATH, auth, sender=Sender("gps", rank=d), affinity=d
                    )
                )
                watch = (("track.watch", {"order_id": f"o{d}"}),)
                for w in range(watchers_of(d)):
                    who = (
                        token(server, Role.SHOPPER, f"gs{d}")
                        if w == 0
                        else token(server, Role.DISPATCHER, f"dp{d}x{w}")
                    )
                    specs.append(
                        ClientSpec(
                            next(index), server.port, SIO_PATH, who, watch, 1, d, gps_driver=d, affinity=d
                        )
                    )
            elif dialect == "sio":
                specs.append(
                    ClientSpec(
                        next(index), server.port, SIO_PATH, b"", sender=Sender("pub", f"d{d}", d), affinity=d
                    )
                )
                for _ in range(watchers_of(d)):
                    specs.append(
                        ClientSpec(
                            next(index), server.port, SIO_PATH, b"", (("join", f"d{d}"),), 1, d, affinity=d
                        )
                    )
            else:
                specs.append(
                    ClientSpec(
                        next(index), server.port, f"/p/d{d}", None, sender=Sender("raw", rank=d), affinity=d
                    )
                )
                for _ in range(watchers_of(d)):
                    specs.append(ClientSpec(next(index), server.port, f"/r/d{d}", None, (), 1, d, affinity=d))
        return specs

    async def _create_orders(self, session: Session, drivers: int) -> None:
        """Through ``POST /api/v1/events``: order ``o<d>`` of shopper ``gs<d>``, assigned to ``d<d>``."""
        server = session.servers[0]
        service = issue_token(server.secret, role=Role.SERVICE, sub="bench", boutique=None, ttl=TOKEN_TTL)
        url = f"http://127.0.0.1:{server.port}/api/v1/events"
        gate = asyncio.Semaphore(32)
        done = 0
        session.status("creating orders", total=drivers, completed=0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {service}"}) as http:

            async def post(body: dict[str, Any]) -> None:
                async with gate, http.post(url, json=body) as resp:
                    reply = await resp.json()
                if not ok_reply(reply):
                    raise RuntimeError(f"{body['type']} failed: {reply}")

            async def order(d: int) -> None:
                nonlocal done
                lat, lon = gps_origin(d)
                await post(
                    {
                        "type": "order.created",
                        "event_id": f"oc{d}",
                        "order_id": f"o{d}",
                        "shopper_id": f"gs{d}",
                        "boutique_id": f"b{d % 50}",
                        "dropoff": {"lat": lat + 0.05, "lon": lon + 0.05},
                    }
                )
                await post(
                    {
                        "type": "delivery.assigned",
                        "event_id": f"da{d}",
                        "order_id": f"o{d}",
                        "driver_id": f"d{d}",
                    }
                )
                done += 1
                self.progress.update(session.task, completed=done)

            await asyncio.gather(*(order(d) for d in range(drivers)))

    async def run_gps(self, sc: Gps, name: str, workdir: Path) -> dict[str, Any]:
        kind = srv.SERVERS[name]
        server = srv.start(name, workdir / f"{sc.name}-{name}")
        session = Session(self, [server], f"{sc.name} {name}")
        result: dict[str, Any] = {"label": kind.label, "drivers": sc.drivers}
        offered = np.cumsum([0] + [watchers_of(d) for d in range(sc.drivers)])
        try:
            if kind.dialect == "soko":
                await session.ready()
                await self._create_orders(session, sc.drivers)
            specs = self._gps_specs(kind.dialect, server, sc.drivers)
            result.update(await self._connect(session, specs, sc.workers))

            async def run_step(target: float, fixes: int = sc.step_seconds) -> dict[str, Any]:
                active = max(1, min(sc.drivers, int(np.searchsorted(offered, target))))
                step = self.next_step()
                session.status(f"{active} drivers", total=None)
                # A driver's fixes are 1 s apart in every step, its phase is the same in all, and
                # every step starts ≥ 1 s after the previous one's last fix: never below the
                # hub's minimum period between kept fixes (0.8 s).
                start = time.time_ns() + 1_000_000_000
                drive = self._worker_drive(session, step, fixes, 1.0, active, start)
                record = await session.measure(step, fixes, active, sc.idle, drive)
                record["active_drivers"] = active
                return record

            # Unrecorded: every driver's first fixes (the hub looks its orders up, stores the first
            # track points) are start-up work, not the steady state the steps measure.
            warmup = await run_step(float(offered[-1]), 2)
            result["warmup"] = {k: warmup[k] for k in ("active_drivers", "messages", "complete", "p99_ms")}
            result.update(await self.ramp(tuple(float(offered[a]) for a in sc.active), run_step))
        finally:
            await session.close()
        return result

    # ------------------------------------------------------------------ reconnect storm

    def _storm_specs(
        self, dialect: str, server: srv.RunningServer, sc: Storm, epochs: list[str]
    ) -> list[ClientSpec]:
        specs = []
        for i in range(sc.clients):
            g = i % sc.streams
            if dialect == "soko":
                auth = token(server, Role.STAFF, f"st{i}", f"b{g}")
                recover = (f"chat:b:b{g}:s{g}", epochs[g])
                specs.append(
                    ClientSpec(i, server.port, SIO_PATH, auth, recover=recover, cursor=1, missed=sc.missed)
                )
            elif dialect == "sio":
                specs.append(ClientSpec(i, server.port, SIO_PATH, b"", (("join", f"g{g}"),)))
            else:
                specs.append(ClientSpec(i, server.port, f"/r/g{g}", None))
        return specs

    async def _chat_fill(
        self, session: Session, shoppers: list[tuple[WsClient, SioState]], messages: int
    ) -> list[str]:
        """Shopper ``s<g>`` sends ``messages`` to its conversation with boutique ``b<g>``; returns
        the epoch of each conversation."""
        gate = asyncio.Semaphore(256)
        epochs = [""] * len(shoppers)
        done = 0

        async def send(g: int, k: int) -> None:
            nonlocal done
            client, state = shoppers[g]
            body = {
                "stream": f"chat:b:b{g}:s{g}",
                "client_id": f"f{time.time_ns()}x{g}x{k}",
                "text": f"missed {k}",
            }
            async with gate:
                reply = await state.call(client, "chat.send", body)
            if not ok_reply(reply):
                raise RuntimeError(f"chat.send failed: {reply}")
            epochs[g] = reply["data"]["epoch"]
            done += 1
            if done % 100 == 0:
                self.progress.update(session.task, completed=done)

        self.progress.update(session.task, total=len(shoppers) * messages, completed=0)
        await asyncio.gather(*(send(g, k) for k in range(messages) for g in range(len(shoppers))))
        return epochs

    async def run_storm(self, sc: Storm, name: str, workdir: Path) -> dict[str, Any]:
        """Clients connect and join; then, ``repeat`` times: all drop, (hub) their conversations get
        ``missed`` new messages each, and all reconnect at the same instant."""
        kind = srv.SERVERS[name]
        server = srv.start(name, workdir / f"{sc.name}-{name}")
        session = Session(self, [server], f"{sc.name} {name}")
        durable = kind.dialect == "soko"
        result: dict[str, Any] = {
            "label": kind.label,
            "clients": sc.clients,
            "missed_per_client": sc.missed if durable else None,
            "measured": "reconnect, sync and catchup of the missed entries" if durable else PEER_NA_DURABLE,
        }
        try:
            shoppers: list[tuple[WsClient, SioState]] = []
            epochs: list[str] = []
            if durable:
                await session.ready()
                for g in range(sc.streams):
                    shoppers.append(await hub_client(server.port, token(server, Role.SHOPPER, f"s{g}")))
                    session.extra_clients.append(shoppers[-1][0])
                session.status("first message")
                epochs = await self._chat_fill(session, shoppers, 1)
            result.update(
                await self._connect(session, self._storm_specs(kind.dialect, server, sc, epochs), sc.workers)
            )
            runs = []
            for _ in range(self.repeat):
                await session.each("drop")
                await asyncio.sleep(1.0)
                if durable:
                    session.status("writing missed messages")
                    await self._chat_fill(session, shoppers, sc.missed)
                session.status("storm", total=None)
                before = await session.each("cpu")
                cpu0, own0, drops0 = session.cpu(), time.process_time(), srv.listen_overflows()
                start = time.time_ns() + 500_000_000
                replies = await session.each("storm", start, self.take_sources(sc.clients))
                cpu1, own1, drops1 = session.cpu(), time.process_time(), srv.listen_overflows()
                ready = sum(r["ready"] for r in replies)
                entries = sum(r["entries"] for r in replies)
                wall = max(r["lat_max_us"] for r in replies) / 1e6 if ready else None
                errors = sorted({e for r in replies for e in r["errors"]})
                loadgen = sum(r["cpu"] for r in replies) - sum(r["cpu"] for r in before) + own1 - own0
                runs.append(
                    {
                        "ready": ready,
                        "entries": entries,
                        "expected_entries": sc.clients * sc.missed if durable else 0,
                        "complete": ready == sc.clients
                        and (not durable or entries == sc.clients * sc.missed),
                        "errors": errors[:20],
                        "wall_s": round(wall, 3) if wall else None,
                        "reconnects_per_s": round(ready / wall) if wall else 0,
                        "deliveries_per_s": round(entries / wall) if wall and durable else None,
                        "server_cpu_s": round(cpu1 - cpu0, 3),
                        "server_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1) if wall else None,
                        "server_rss_kb": session.rss(),
                        "loadgen_cpu_s": round(loadgen, 3),
                        "loadgen_cpu_pct": round(100 * loadgen / wall, 1) if wall else None,
                        **percentiles_ms(merged_hist(replies)),
                        "max_ms": round(wall * 1000, 3) if wall else None,
                        **percentiles_ms(np.sum([r["tcp_hist"] for r in replies], axis=0), "tcp_"),
                        "listen_overflows": drops1 - drops0,
                    }
                )
            summary = merge_runs(runs)
            summary.update(
                {k: _median([r[k] for r in runs]) for k in ("reconnects_per_s", "ready", "entries")}
            )
            summary["kb_per_conn_after"] = (
                round((summary["server_rss_kb"] - result["rss_base_kb"]) / sc.clients, 1)
                if sc.clients
                else None
            )
            result["storm"] = summary
            result["ok"] = summary["complete"]
        finally:
            await session.close()
        return result

    # ------------------------------------------------------------------ idle

    async def run_idle(self, sc: Idle, name: str, workdir: Path) -> dict[str, Any]:
        """``sc.connections`` sockets joined to one room, or as many as the server's fd limit allows
        (said in ``fd_limit_note``); then ``idle_seconds`` of nothing."""
        kind = srv.SERVERS[name]
        server = srv.start(name, workdir / f"{sc.name}-{name}")
        session = Session(self, [server], f"{sc.name} {name}")
        result: dict[str, Any] = {"label": kind.label, "wanted": sc.connections}
        try:
            await session.ready()
            room = server.socket_capacity()
            n = sc.connections if room is None else min(sc.connections, room)
            specs = self._fanout_specs(kind.dialect, [server], n)
            result.update(await self._connect(session, specs, sc.workers))
            if n < sc.connections:
                result["fd_limit_note"] = (
                    f"measured {n:,} connections, not {sc.connections:,}: the server's fd limit"
                    f" {server.nofile():,} leaves room for {room:,} sockets; {self.nofile_note}"
                )
            before = await session.each("cpu")
            cpu0 = session.cpu()
            await asyncio.sleep(self.idle_seconds)
            after = await session.each("cpu")
            result.update(
                idle_seconds=self.idle_seconds,
                idle_server_cpu_pct=round(100 * (session.cpu() - cpu0) / self.idle_seconds, 1),
                idle_loadgen_cpu_pct=round(
                    100 * (sum(r["cpu"] for r in after) - sum(r["cpu"] for r in before)) / self.idle_seconds,
                    1,
                ),
                alive_after_idle=sum(r["alive"] for r in after),
                steps=[],
                peak=None,
                all_complete=False,
                ok=result["connected"] == n and sum(r["alive"] for r in after) == n,
            )
        finally:
            await session.close()
        return result

    # ------------------------------------------------------------------ catch-up

    async def run_catchup(self, sc: Catchup, workdir: Path) -> dict[str, Any]:
        """Fill ``inv:b1`` with ``sc.messages`` stock changes, then time one client paging them all
        (``repeat`` times, median)."""
        server = srv.start("soko", workdir / f"{sc.name}-soko")
        session = Session(self, [server], f"{sc.name} soko")
        result: dict[str, Any] = {"label": srv.SERVERS["soko"].label, "messages": sc.messages}
        try:
            rss_base = await session.ready()
            device_client, device = await hub_client(
                server.port, token(server, Role.DEVICE, "dev1", BOUTIQUE)
            )
            session.extra_clients.append(device_client)
            session.status("filling", total=sc.messages)
            for first in range(0, sc.messages, 100):
                updates = [
                    {
                        "type": "stock.adjust",
                        "event_id": f"c{i}",
                        "boutique_id": BOUTIQUE,
                        "sku": f"s{i % 50}",
                        "delta": 1,
                    }
                    for i in range(first, min(sc.messages, first + 100))
                ]
                reply = await device.call(device_client, "stock.update", {"updates": updates})
                if not ok_reply(reply):
                    raise RuntimeError(f"stock.update failed: {reply}")
                self.progress.update(session.task, completed=first + len(updates))
            reader, state = await hub_client(server.port, token(server, Role.SHOPPER, "reader"))
            session.extra_clients.append(reader)
            runs = []
            for _ in range(self.repeat):
                session.status("catching up", completed=0)
                runs.append(await self._catchup_once(sc, session, reader, state))
            summary = merge_runs(runs)
            summary["entries_per_s"] = _median([r["entries_per_s"] for r in runs])
            summary["seconds"] = _median([r["seconds"] for r in runs])
            summary["pages"] = runs[0]["pages"]
            summary["in_order"] = all(r["in_order"] for r in runs)
            summary["received"] = runs[0]["received"]
            result.update(summary)
            result.update(
                rss_base_kb=rss_base,
                ok=all(r["received"] == sc.messages and r["in_order"] for r in runs),
            )
        finally:
            await session.close()
        return result

    async def _catchup_once(
        self, sc: Catchup, session: Session, reader: WsClient, state: SioState
    ) -> dict[str, Any]:
        after, received, pages, in_order = 0, 0, 0, True
        epoch: str | None = None
        page_us: list[int] = []
        cpu0, own0, t0 = session.cpu(), time.process_time(), time.perf_counter()
        while pages <= sc.messages // 500 + 2:
            request = {"stream": f"inv:{BOUTIQUE}", "epoch": epoch, "after": after, "limit": 500}
            p0 = time.perf_counter_ns()
            reply = await state.call(reader, "catchup", request)
            page_us.append((time.perf_counter_ns() - p0) // 1000)
            if not ok_reply(reply):
                raise RuntimeError(f"catchup failed: {reply}")
            page = reply["data"]
            in_order = in_order and (epoch is None or page["recovered"])
            epoch = page["epoch"]
            seqs = [e["seq"] for e in page["entries"]]
            in_order = in_order and seqs == list(range(after + 1, after + 1 + len(seqs)))
            received += len(seqs)
            pages += 1
            self.progress.update(session.task, completed=received)
            if not page["has_more"]:
                break
            after = page["next_after"]
        seconds = time.perf_counter() - t0
        hist, _ = np.histogram(np.clip(page_us, 1, 1e8 - 1), bins=HIST_EDGES_US)
        return {
            "received": received,
            "pages": pages,
            "in_order": in_order,
            "complete": received == sc.messages and in_order,
            "seconds": round(seconds, 4),
            "entries_per_s": round(received / seconds),
            "deliveries_per_s": round(received / seconds),
            "server_cpu_s": round(session.cpu() - cpu0, 3),
            "server_rss_kb": session.rss(),
            "loadgen_cpu_s": round(time.process_time() - own0, 3),
            **percentiles_ms(hist),
        }

    # ------------------------------------------------------------------ the run

    async def _run_server(self, sc: Scenario, name: str, work: Path) -> dict[str, Any]:
        if isinstance(sc, Fanout):
            return await self.run_fanout(sc, name, work)
        if isinstance(sc, ChatPairs):
            return await self.run_chat(sc, name, work)
        if isinstance(sc, Gps):
            return await self.run_gps(sc, name, work)
        if isinstance(sc, Storm):
            return await self.run_storm(sc, name, work)
        assert isinstance(sc, Idle)
        return await self.run_idle(sc, name, work)

    async def run(self, scenarios: tuple[Scenario, ...]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="soko-bench-") as tmp:
            work = Path(tmp)
            for sc in scenarios:
                began = time.monotonic()
                entry: dict[str, Any] = {"kind": sc.kind, **describe(sc), "servers": {}, "n/a": {}}
                hub_only = isinstance(sc, Catchup | Cluster)
                if hub_only:
                    why = "no durable log" if isinstance(sc, Catchup) else "the hub's own scaling"
                    entry["n/a"] = {p: why for p in self.names if p != "soko"}
                if isinstance(sc, Catchup) and "soko" in self.names:
                    entry["servers"]["soko"] = await self.run_catchup(sc, work)
                elif isinstance(sc, Cluster) and "soko" in self.names:
                    one = entry["servers"]["soko-1"] = await self.run_cluster(sc, 1, work)
                    two = entry["servers"]["soko-2"] = await self.run_cluster(sc, 2, work)
                    entry["two_over_one"] = two_over_one(one, two)
                elif not hub_only:
                    for name in self.names:
                        entry["servers"][name] = await self._run_server(sc, name, work)
                entry["duration_s"] = round(time.monotonic() - began, 1)
                results[sc.name] = entry
        return results


def describe(sc: Scenario) -> dict[str, Any]:
    """The scenario's one-line description and its sizes, for the results."""
    if isinstance(sc, Fanout):
        return {
            "description": f"room fan-out 1 -> {sc.subscribers}, small messages",
            "subscribers": sc.subscribers,
        }
    if isinstance(sc, ChatPairs):
        return {
            "description": f"chat: {sc.pairs} pairs, each member sends to a 2-member room",
            "pairs": sc.pairs,
        }
    if isinstance(sc, Gps):
        return {
            "description": f"GPS: {sc.drivers} drivers at 1 Hz, 1-3 watchers each",
            "drivers": sc.drivers,
            "watchers": sum(watchers_of(d) for d in range(sc.drivers)),
        }
    if isinstance(sc, Storm):
        return {
            "description": f"reconnect storm: {sc.clients} clients reconnect at once"
            f" and catch up {sc.missed} missed messages each",
            "clients": sc.clients,
            "missed": sc.missed,
            "streams": sc.streams,
        }
    if isinstance(sc, Idle):
        return {
            "description": f"{sc.connections} idle connections, each joined to one room",
            "subscribers": sc.connections,
        }
    if isinstance(sc, Catchup):
        return {
            "description": f"catch-up: one client pages {sc.messages} missed stock entries",
            "messages": sc.messages,
        }
    return {
        "description": f"room fan-out 1 -> {sc.subscribers} on one hub process on Redis, then on two"
        " (subscribers split between them)",
        "subscribers": sc.subscribers,
    }


def two_over_one(one: dict[str, Any], two: dict[str, Any]) -> dict[str, float | None]:
    """Ratios of the two-process run to the one-process run."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    peak1, peak2 = one.get("peak") or {}, two.get("peak") or {}
    return {
        "peak_deliveries_per_s": ratio(peak2.get("deliveries_per_s"), peak1.get("deliveries_per_s")),
        "best_per_server_cpu_s": ratio(two.get("best_per_server_cpu_s"), one.get("best_per_server_cpu_s")),
    }


def run(
    mode: str,
    out: Path,
    names: list[str],
    show_progress: bool = True,
    repeat: int | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run the scenarios of ``mode`` ("quick" or "full"), or those of them named in ``only``, on
    ``names``; every step ``repeat`` times (default: 3 in full mode, 1 in quick mode). Writes and
    returns the results."""
    import uvloop

    scenarios = QUICK if mode == "quick" else FULL
    if only:
        scenarios = tuple(sc for sc in scenarios if sc.name in only or sc.kind in only)
    repeat = repeat or (3 if mode == "full" else 1)
    nofile, nofile_note = raise_nofile()
    started = datetime.now(UTC)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
    ) as progress:
        runner = Runner(names, progress, repeat, mode == "quick", nofile_note)
        scenario_results = uvloop.run(runner.run(scenarios))
    results = {
        "mode": mode,
        "repeat": repeat,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": {**machine(), "nofile": nofile, "nofile_note": nofile_note},
        "metrics": {
            "deliveries_per_s": "messages received by all receiving sockets / wall time from the first send"
            " to the last receipt (storm: entries caught up / wall time to the last client ready)",
            "deliveries_per_server_cpu_s": "the same deliveries / CPU seconds the server process(es) used",
            "server_cpu_pct": "server CPU seconds / wall seconds, in % of one core",
            "loadgen_cpu_pct": "the load generator's CPU seconds (workers + orchestrator) / wall seconds",
            "kb_per_conn": "server RSS growth from start to all clients joined, per client",
            "latency": "receive wall clock - send wall clock of each message (same machine); storm: time"
            " from the common reconnect instant to the client ready; idle: connect + join time",
            "peak": "the complete step with p99 <= 2 s and the most deliveries per second",
            "half_peak": "latency at a step offering half the peak's deliveries per second (measured)",
            "repeat": "runs per step; a step's figures are medians over its runs, counts are totals",
            "best_per_server_cpu_s": "the most deliveries per server CPU-second of any complete step",
            "catchup seconds": "wall time for one client to page every entry with `catchup` (limit 500)",
        },
        "scenarios": scenario_results,
    }
    write_reports(results, out)
    return results
