"""The engine survives what phones do to apps: killed at any point (SIGKILL of a real app
process) and a hub restarting in the middle of a catch-up. Nothing is lost, nothing is
duplicated, order is kept.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clients.common.engine import SyncEngine
from clients.common.state import Change
from clients.common.store import LocalStore
from tests.clients.conftest import (
    SHOPPER,
    STREAM,
    Engines,
    HubFactory,
    HubReader,
    Recorder,
    append_silently,
    eventually,
)
from tests.support import process
from tests.support.hub import free_port

ROOT = Path(__file__).resolve().parents[2]
COUNT = 50


class AppProcess:
    """``tests/clients/engine_app.py`` as a real process; its stdout lines are collected."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / f"app-{free_port()}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.clients.engine_app", *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await asyncio.to_thread(self.proc.stdout.readline):
            self.lines.append(line.decode().rstrip("\n"))

    def acked(self) -> int:
        return sum(line.startswith("acked ") for line in self.lines)

    async def wait_for(self, line: str) -> None:
        await eventually(lambda: line in self.lines or self.proc.poll() is not None, f"{line!r} from the app")
        assert line in self.lines, self.stderr_path.read_text()

    async def kill(self) -> None:
        await process.kill(self.proc)
        await self._reader

    async def stop(self) -> None:
        await process.terminate(self.proc)
        await self._reader
        assert self.proc.returncode == 0, self.stderr_path.read_text()


async def compose_offline_then_kill(tmp_path: Path, store_path: Path, token: str) -> list[str]:
    """Queue COUNT messages in an app that cannot reach any hub, SIGKILL it, and return the
    client ids its store holds as pending, in outbox order."""
    dead_hub = f"http://127.0.0.1:{free_port()}"
    app = AppProcess(tmp_path, "compose", str(store_path), dead_hub, token, STREAM, str(COUNT))
    await app.wait_for(f"queued {COUNT}")
    await app.kill()
    store = await LocalStore.open(store_path)
    try:
        pending = await store.pending(1000)
    finally:
        await store.close()
    assert [queued_text(item.payload) for item in pending] == [f"m{i:03d}" for i in range(COUNT)]
    return [item.client_id for item in pending]


def queued_text(payload: bytes) -> str:
    return str(json.loads(payload)["text"])


async def assert_hub_holds_exactly(reader: HubReader, client_ids: list[str]) -> None:
    entries = await reader.history()
    assert [e["text"] for e in entries] == [f"m{i:03d}" for i in range(COUNT)]
    assert [e["seq"] for e in entries] == list(range(1, COUNT + 1))
    assert [e["client_id"] for e in entries] == client_ids
    assert {e["author"] for e in entries} == {SHOPPER}


async def local_state(store_path: Path) -> tuple[int, list[tuple[int | None, str, str]]]:
    store = await LocalStore.open(store_path)
    try:
        return await store.pending_count(), [(m.seq, m.text, m.status) for m in await store.messages(STREAM)]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_fifty_messages_composed_offline_survive_a_kill_and_arrive_once_in_order(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub = await hub_factory()
    token = hub.token("shopper", SHOPPER)
    store_path = tmp_path / "phone.db"
    client_ids = await compose_offline_then_kill(tmp_path, store_path, token)

    app = AppProcess(tmp_path, "run", str(store_path), hub.url, token)
    try:
        await eventually(lambda: app.acked() == COUNT, "every ack")
    finally:
        await app.stop()
    async with HubReader(hub) as reader:
        await assert_hub_holds_exactly(reader, client_ids)
    pending, messages = await local_state(store_path)
    assert pending == 0
    assert messages == [(i + 1, f"m{i:03d}", "sent") for i in range(COUNT)]


@pytest.mark.asyncio
async def test_a_kill_in_the_middle_of_draining_still_gives_exactly_fifty_in_order(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    # A tight rate limit makes the drain take a while, so the kill lands in the middle of it.
    hub = await hub_factory(rate_per_second=20.0, rate_burst=8)
    token = hub.token("shopper", SHOPPER)
    store_path = tmp_path / "phone.db"
    client_ids = await compose_offline_then_kill(tmp_path, store_path, token)

    app = AppProcess(tmp_path, "run", str(store_path), hub.url, token)
    await eventually(lambda: app.acked() >= 10, "the first acks")
    await app.kill()
    pending, _ = await local_state(store_path)
    async with HubReader(hub) as reader:
        stored = len(await reader.history())
    assert 0 < pending < COUNT, "killed while some messages were acked and some were not"
    assert COUNT - pending <= stored < COUNT

    app = AppProcess(tmp_path, "run", str(store_path), hub.url, token)
    try:
        await eventually(lambda: local_state_pending_is_zero(store_path), "the rest of the acks")
    finally:
        await app.stop()
    async with HubReader(hub) as reader:
        await assert_hub_holds_exactly(reader, client_ids)
    _, messages = await local_state(store_path)
    assert messages == [(i + 1, f"m{i:03d}", "sent") for i in range(COUNT)]


async def local_state_pending_is_zero(store_path: Path) -> bool:
    pending, _ = await local_state(store_path)
    return pending == 0


@pytest.mark.asyncio
async def test_the_hub_restarting_mid_catch_up_is_resumed_cleanly(
    hub_factory: HubFactory, engines: Engines
) -> None:
    entries = 1000
    limits = {"rate_per_second": 40.0, "rate_burst": 5}
    hub = await hub_factory(**limits)
    await append_silently(hub, [f"e{i:04d}" for i in range(entries)])
    store = await engines.store()
    engine: SyncEngine = engines.start(hub.url, hub.token("shopper", SHOPPER), store, page_size=25)
    recorder = Recorder(engine)
    midway = asyncio.Event()

    def on_change(change: Change) -> None:
        if change.state is not None and change.state.phase == "syncing" and change.state.done >= 100:
            midway.set()

    engine.subscribe(on_change)
    await asyncio.wait_for(midway.wait(), 30)
    await hub.stop()
    at_stop = (await store.cursor(STREAM)).seq
    assert 100 <= at_stop < entries, "the hub stopped in the middle of the catch-up"
    seen_before_restart = len(recorder.states)

    hub = await hub_factory(port=hub.port, **limits)
    await eventually(lambda: engine.state.phase == "live", "live again")
    async with HubReader(hub) as reader:
        hub_entries = await reader.history()
    held = await store.messages(STREAM, limit=10 * entries)
    assert [(m.seq, m.text) for m in held] == [(e["seq"], e["text"]) for e in hub_entries]
    assert [m.seq for m in held] == list(range(1, entries + 1))
    assert (await store.cursor(STREAM)).seq == entries
    after = recorder.states[seen_before_restart:]
    assert any(s.error and "server_shutdown" in s.error for s in recorder.states), (
        "session.closing was reported"
    )
    resumed = [s.total for s in after if s.phase == "syncing" and s.total > 0]
    assert resumed and resumed[0] == entries - at_stop, "the catch-up resumed from the cursor"
