"""Fixtures for the sync engine tests: engines over temporary stores, change recorders, and
helpers that read what a real hub stores.

Every wait is on a condition with a deadline (``eventually``); nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from clients.common.engine import SyncEngine
from clients.common.state import Change, SyncState
from clients.common.store import LocalStore
from hub.app import STORE
from hub.domains.entries import ChatPayload, encode_payload
from protocol.ids import boutique_chat
from tests.support.hub import RunningHub
from tests.support.peer import Peer

HubFactory = Callable[..., Awaitable[RunningHub]]
BOUTIQUE = "boutique-a"
SHOPPER = "shopper-1"
STREAM = boutique_chat(BOUTIQUE, SHOPPER)
DEADLINE_S = 30.0


async def eventually(
    condition: Callable[[], object] | Callable[[], Awaitable[object]],
    what: str = "condition",
    timeout: float = DEADLINE_S,
) -> None:
    """Wait until ``condition()`` (sync or async) is truthy; fail the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"{what} not reached within {timeout:g} s"
        await asyncio.sleep(0.02)


class Recorder:
    """Subscribes to an engine and keeps every change and every state, in order."""

    def __init__(self, engine: SyncEngine) -> None:
        self.changes: list[Change] = []
        self.states: list[SyncState] = [engine.state]
        engine.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        self.changes.append(change)
        if change.state is not None:
            self.states.append(change.state)

    def phases(self) -> list[str]:
        """The phases seen, consecutive repeats collapsed."""
        out: list[str] = []
        for state in self.states:
            if not out or out[-1] != state.phase:
                out.append(state.phase)
        return out

    def outbox(self, client_id: str) -> list[str]:
        """The statuses announced for one outbox item, in order."""
        return [c.status or "" for c in self.changes if c.kind == "outbox" and c.client_id == client_id]


class Engines:
    """Creates stores and running engines; closes all of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.stores: list[LocalStore] = []
        self.engines: list[tuple[SyncEngine, asyncio.Task[None]]] = []

    async def store(self, name: str = "app") -> LocalStore:
        store = await LocalStore.open(self.tmp_path / f"{name}.db")
        self.stores.append(store)
        return store

    def start(self, url: str, token: str, store: LocalStore, **options: Any) -> SyncEngine:
        options.setdefault("backoff_cap", 0.5)
        engine = SyncEngine(url, token, store, **options)
        self.engines.append((engine, asyncio.create_task(engine.run())))
        return engine

    async def close(self) -> None:
        for engine, task in self.engines:
            await engine.close()
            await task
        for store in self.stores:
            await store.close()


@pytest_asyncio.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Engines]:
    made = Engines(tmp_path)
    yield made
    await made.close()


class HubReader(Peer):
    """A :class:`Peer` of its own (staff by default) to read what the hub stores and to act as
    the other party of the test's conversation."""

    def __init__(self, hub: RunningHub, role: str = "staff", sub: str = "staff-1", boutique: str = BOUTIQUE):
        super().__init__(hub.url, hub.token(role, sub, boutique if role == "staff" else None))

    async def history(self, stream: str = STREAM) -> list[dict[str, Any]]:
        return await super().history(stream)


async def append_silently(
    hub: RunningHub, texts: list[str], stream: str = STREAM, author: str = "staff-1"
) -> None:
    """Append chat entries straight to the hub's store, so no live frame is sent for them
    (as if the frames were dropped on the way)."""
    store = hub.app[STORE]
    for i, text in enumerate(texts):
        await store.append(
            stream,
            author=author,
            client_id=f"silent-{text}-{i}",
            payload=encode_payload(ChatPayload(author_role="staff", text=text)),
            ts=1_700_000_000_000 + i,
            members=(f"user:{SHOPPER}", f"boutique:{BOUTIQUE}"),
        )
