"""Orchestrate a benchmark run: start each server, drive it, measure it, write the results.

Scenario ``fanout``: ``N`` subscribers in one room, one publisher. Each step publishes ``m``
messages at a fixed rate chosen so that the offered load is a target number of deliveries per
second; steps rise until a server falls behind (a socket misses messages, or p99 latency goes
over ``SATURATED_P99_MS``), which gives latency against load and the peak. Each server runs
alone on a fresh process, the load generator (worker processes plus this one) runs beside it.

Scenario ``idle``: the same sockets, joined, with nothing published: RSS per connection.
Scenario ``catchup``: the hub alone (the peers keep no history): one client pages through
``inv:b1`` after it was filled with stock changes, checking every seq arrives once, in order.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import servers as srv
from bench.loadgen import (
    BOUTIQUE,
    CONNECTIONS_PER_SOURCE,
    HIST_EDGES_US,
    SIO_PATH,
    Publisher,
    SioState,
    worker_main,
)
from bench.report import write_reports
from bench.wsclient import WsClient, open_ws
from hub.auth import issue_token
from protocol.ids import Role

SATURATED_P99_MS = 2000.0


@dataclass(frozen=True)
class Fanout:
    name: str
    subscribers: int
    targets: tuple[int, ...]
    """Offered deliveries per second of each step."""
    step_seconds: float
    workers: int
    idle: float
    """Seconds without a new delivery after which a step is declared over (incomplete)."""
    kind: str = "fanout"
    """``fanout``, or ``idle``: no targets, only the memory of ``subscribers`` joined sockets."""


@dataclass(frozen=True)
class Catchup:
    """One client catches up ``messages`` missed entries of a durable stream (the hub only:
    the peers keep no history)."""

    name: str
    messages: int
    kind: str = "catchup"


Scenario = Fanout | Catchup
FULL_TARGETS = (5_000, 10_000, 20_000, 40_000, 80_000, 120_000, 160_000, 240_000)
QUICK: tuple[Scenario, ...] = (
    Fanout("fanout_200", 200, (10_000, 20_000), 1.0, 1, 5.0),
    Fanout("idle_1k", 1000, (), 0.0, 1, 0.0, kind="idle"),
    Catchup("catchup_1k", 1000),
)
# The file descriptor hard limit here is 20000, so a server cannot hold 20k sockets.
FULL: tuple[Scenario, ...] = (
    Fanout("fanout_1k", 1000, FULL_TARGETS, 4.0, 2, 10.0),
    Fanout("fanout_5k", 5000, FULL_TARGETS, 4.0, 2, 10.0),
    Fanout("idle_19k", 19_000, (), 0.0, 2, 0.0, kind="idle"),
    Catchup("catchup_10k", 10_000),
)


def percentiles_ms(hist: np.ndarray[Any, Any]) -> dict[str, float | None]:
    total = int(hist.sum())
    out: dict[str, float | None] = {}
    cum = np.cumsum(hist)
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        if total == 0:
            out[key] = None
            continue
        i = int(np.searchsorted(cum, q * total))
        out[key] = round(float(np.sqrt(HIST_EDGES_US[i] * HIST_EDGES_US[i + 1])) / 1000, 3)
    return out


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
    }


class Runner:
    def __init__(self, out: Path, names: list[str], progress: Progress) -> None:
        self.out = out
        self.names = names
        self.progress = progress
        self.source_base = 2
        """First 127.0.0.x of the next run's subscribers; 127.0.0.1 is left to publishers."""

    async def run_fanout(self, sc: Fanout, name: str, workdir: Path) -> dict[str, Any]:
        kind = srv.SERVERS[name]
        server = srv.start(name, workdir / f"{sc.name}-{name}")
        task = self.progress.add_task(f"{sc.name} {name}: starting", total=sc.subscribers)
        ctx = multiprocessing.get_context("spawn")
        procs: list[tuple[Any, Any]] = []
        publisher: Publisher | None = None
        result: dict[str, Any] = {"label": kind.label, "steps": []}
        try:
            await asyncio.to_thread(server.wait_ready)
            rss_base = srv.rss_kb(server.pid)
            tokens: list[str] = []
            if kind.dialect == "soko":
                tokens = [
                    issue_token(server.secret, role=Role.SHOPPER, sub=f"u{i}", boutique=None, ttl=7200)
                    for i in range(sc.subscribers)
                ]
            share = -(-sc.subscribers // sc.workers)
            for w in range(sc.workers):
                first = w * share
                count = min(share, sc.subscribers - first)
                cfg = {
                    "dialect": kind.dialect,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "first": first,
                    "count": count,
                    "tokens": tokens[first : first + count],
                    "source_base": self.source_base,
                }
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
                proc.start()
                procs.append((proc, parent))
            # Closed sockets keep their ports in TIME_WAIT for a minute: each run gets fresh addresses.
            self.source_base += -(-sc.subscribers // CONNECTIONS_PER_SOURCE)
            self.progress.update(task, description=f"{sc.name} {name}: connecting")
            connected, errors = 0, set()
            for _, pipe in procs:
                reply = await asyncio.to_thread(pipe.recv)
                connected += reply["connected"]
                errors.update(reply["errors"])
            await asyncio.sleep(2.0)
            rss_connected = srv.rss_kb(server.pid)
            result.update(
                connected=connected,
                connect_errors=sorted(errors),
                rss_base_kb=rss_base,
                rss_connected_kb=rss_connected,
                kb_per_conn=round((rss_connected - rss_base) / connected, 1) if connected else None,
            )
            self.progress.update(task, completed=connected)
            if not sc.targets:
                result.update(peak=None, all_complete=False, ok=connected == sc.subscribers)
                return result
            token = None
            if kind.dialect == "soko":
                token = issue_token(server.secret, role=Role.DEVICE, sub="dev1", boutique=BOUTIQUE, ttl=7200)
            publisher = Publisher(kind.dialect, "127.0.0.1", server.port, token)
            await publisher.connect()
            for step, target in enumerate(sc.targets):
                rate = target / sc.subscribers
                m = max(20, round(rate * sc.step_seconds))
                self.progress.update(
                    task, description=f"{sc.name} {name}: {target // 1000}k/s offered", total=m, completed=0
                )
                record = await self._step(server, procs, publisher, step, m, rate, sc, task)
                record["target_deliveries_per_s"] = target
                result["steps"].append(record)
                if not record["complete"] or (record["p99_ms"] or 0) > SATURATED_P99_MS:
                    break
            done = [s for s in result["steps"] if s["complete"] and (s["p99_ms"] or 0) <= SATURATED_P99_MS]
            result["peak"] = max(done, key=lambda s: s["deliveries_per_s"]) if done else None
            efficiency = [
                s["deliveries_per_server_cpu_s"]
                for s in result["steps"]
                if s["complete"] and s["deliveries_per_server_cpu_s"]
            ]
            result["best_per_server_cpu_s"] = max(efficiency, default=None)
            result["all_complete"] = bool(result["steps"]) and all(s["complete"] for s in result["steps"])
            result["ok"] = bool(result["steps"]) and result["steps"][0]["complete"]
        finally:
            if publisher is not None:
                publisher.close()
            for proc, pipe in procs:
                if proc.is_alive():
                    pipe.send(("close",))
                    await asyncio.to_thread(proc.join, 5)
                if proc.is_alive():
                    proc.terminate()
            server.stop()
            self.progress.remove_task(task)
        return result

    async def _step(
        self,
        server: srv.RunningServer,
        procs: list[tuple[Any, Any]],
        publisher: Publisher,
        step: int,
        m: int,
        rate: float,
        sc: Fanout,
        task: Any,
    ) -> dict[str, Any]:
        alive, worker_cpu0 = 0, 0.0
        for _, pipe in procs:
            pipe.send(("arm", step, m))
        for _, pipe in procs:
            reply = await asyncio.to_thread(pipe.recv)
            alive += reply["alive"]
            worker_cpu0 += reply["cpu"]
        cpu0, own0, t0 = srv.cpu_seconds(server.pid), time.process_time(), time.time_ns()
        publisher.errors.clear()
        await publisher.run(step, m, rate, lambda sent: self.progress.update(task, completed=sent))
        for _, pipe in procs:
            pipe.send(("collect", sc.idle, 120.0))
        replies = [await asyncio.to_thread(pipe.recv) for _, pipe in procs]
        cpu1, own1 = srv.cpu_seconds(server.pid), time.process_time()
        hist = np.sum([np.asarray(r["hist"], dtype=np.int64) for r in replies], axis=0)
        received = sum(r["received"] for r in replies)
        last = max(r["last_ns"] for r in replies)
        wall = (last - t0) / 1e9 if last else None
        server_cpu = cpu1 - cpu0
        expected = alive * m
        return {
            "rate_msgs_per_s": round(rate, 2),
            "messages": m,
            "subscribers_alive": alive,
            "subscribers_after": sum(r["alive"] for r in replies),
            "expected": expected,
            "received": received,
            "duplicates": sum(r["duplicates"] for r in replies),
            "foreign": sum(r["foreign"] for r in replies),
            "complete": received == expected and alive > 0 and not publisher.errors,
            "publisher_errors": list(publisher.errors),
            "wall_s": round(wall, 3) if wall else None,
            "deliveries_per_s": round(received / wall) if wall else 0,
            "server_cpu_s": round(server_cpu, 3),
            "deliveries_per_server_cpu_s": round(received / server_cpu) if server_cpu > 0 else None,
            "server_rss_kb": srv.rss_kb(server.pid),
            "loadgen_cpu_s": round(sum(r["cpu"] for r in replies) - worker_cpu0 + own1 - own0, 3),
            "mean_frame_bytes": round(sum(r["bytes"] for r in replies) / received, 1) if received else None,
            **percentiles_ms(hist),
            "max_ms": round(max(r["lat_max_us"] for r in replies) / 1000, 3),
            "mean_ms": round(sum(r["lat_sum_us"] for r in replies) / received / 1000, 3)
            if received
            else None,
        }

    async def run_catchup(self, sc: Catchup, workdir: Path) -> dict[str, Any]:
        """Fill ``inv:b1`` with ``sc.messages`` stock changes, then time one client paging them all."""
        server = srv.start("soko", workdir / f"{sc.name}-soko")
        task = self.progress.add_task(f"{sc.name} soko: filling", total=sc.messages)
        result: dict[str, Any] = {"label": srv.SERVERS["soko"].label, "messages": sc.messages}
        publisher: Publisher | None = None
        reader: WsClient | None = None
        try:
            await asyncio.to_thread(server.wait_ready)
            device = issue_token(server.secret, role=Role.DEVICE, sub="dev1", boutique=BOUTIQUE, ttl=7200)
            publisher = Publisher("soko", "127.0.0.1", server.port, device)
            await publisher.connect()
            assert publisher.client is not None
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
                reply = await publisher.state.call(publisher.client, "stock.update", {"updates": updates})
                if not reply.get("ok"):
                    raise RuntimeError(f"stock.update failed: {reply}")
                self.progress.update(task, completed=first + len(updates))
            shopper = issue_token(server.secret, role=Role.SHOPPER, sub="reader", boutique=None, ttl=7200)
            state = SioState(orjson.dumps({"token": shopper}))
            reader = await open_ws(
                "127.0.0.1",
                server.port,
                SIO_PATH,
                lambda c, p, n: None if p.startswith(b"42") else state.control(c, p),
                time.time_ns,
                state=state,
            )
            await asyncio.wait_for(state.connected, 30)
            self.progress.update(task, description=f"{sc.name} soko: catching up", completed=0)
            after, received, pages, in_order = 0, 0, 0, True
            epoch: str | None = None
            cpu0, t0 = srv.cpu_seconds(server.pid), time.perf_counter()
            while pages <= sc.messages // 500 + 2:
                request = {"stream": f"inv:{BOUTIQUE}", "epoch": epoch, "after": after, "limit": 500}
                reply = await state.call(reader, "catchup", request)
                if not reply.get("ok"):
                    raise RuntimeError(f"catchup failed: {reply}")
                page = reply["data"]
                in_order = in_order and (epoch is None or page["recovered"])
                epoch = page["epoch"]
                seqs = [e["seq"] for e in page["entries"]]
                in_order = in_order and seqs == list(range(after + 1, after + 1 + len(seqs)))
                received += len(seqs)
                pages += 1
                self.progress.update(task, completed=received)
                if not page["has_more"]:
                    break
                after = page["next_after"]
            seconds = time.perf_counter() - t0
            result.update(
                received=received,
                pages=pages,
                in_order=in_order,
                seconds=round(seconds, 4),
                entries_per_s=round(received / seconds),
                server_cpu_s=round(srv.cpu_seconds(server.pid) - cpu0, 3),
                ok=received == sc.messages and in_order,
            )
        finally:
            for client in (publisher.client if publisher else None, reader):
                if client is not None:
                    client.close()
            server.stop()
            self.progress.remove_task(task)
        return result

    async def run(self, scenarios: tuple[Scenario, ...]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="soko-bench-") as tmp:
            for sc in scenarios:
                entry: dict[str, Any] = {"kind": sc.kind, "servers": {}}
                if isinstance(sc, Catchup):
                    entry.update(
                        description=f"catch-up: one client pages {sc.messages} missed stock entries"
                        " (hub only)",
                        messages=sc.messages,
                    )
                    if "soko" in self.names:
                        entry["servers"]["soko"] = await self.run_catchup(sc, Path(tmp))
                else:
                    entry.update(
                        description=(
                            f"room fan-out 1 -> {sc.subscribers}, small messages"
                            if sc.kind == "fanout"
                            else f"{sc.subscribers} idle connections, each joined to one room"
                        ),
                        subscribers=sc.subscribers,
                    )
                    for name in self.names:
                        entry["servers"][name] = await self.run_fanout(sc, name, Path(tmp))
                results[sc.name] = entry
        return results


def run(mode: str, out: Path, names: list[str], show_progress: bool = True) -> dict[str, Any]:
    """Run every scenario of ``mode`` ("quick" or "full") on ``names``; write and return the results."""
    import uvloop

    scenarios = QUICK if mode == "quick" else FULL
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
        scenario_results = uvloop.run(Runner(out, names, progress).run(scenarios))
    results = {
        "mode": mode,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": machine(),
        "metrics": {
            "deliveries_per_s": "messages received by all subscribers / wall time from the first publish",
            "deliveries_per_server_cpu_s": "the same deliveries / CPU seconds the server process used",
            "kb_per_conn": "server RSS growth from start to all subscribers joined, per subscriber",
            "latency": "receive wall clock - send wall clock embedded in each message (same machine)",
            "peak": "the complete step with p99 <= 2 s and the most deliveries per second",
            "best_per_server_cpu_s": "the most deliveries per server CPU-second of any complete step",
            "catchup seconds": "wall time for one client to page every entry with `catchup` (limit 500)",
        },
        "scenarios": scenario_results,
    }
    write_reports(results, out)
    return results
