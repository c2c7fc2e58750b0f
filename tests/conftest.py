"""Shared fixtures: real hubs on random ports, tokens, and clients.

``hub_factory`` starts an in-process hub (aiohttp AppRunner on 127.0.0.1:0) over a
SQLite file in a per-test directory; stopping and starting it again on the same
directory is a hub restart with durable state. ``HubProcess`` (tests/support)
runs ``soko hub`` as a real subprocess for signal tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from blockbuster import BlockBuster, blockbuster_ctx

from tests.support.hub import RunningHub, start_hub


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which our packages make a blocking call on the running event loop."""
    with blockbuster_ctx(["protocol", "storage", "hub", "clients", "edge"]) as bb:
        yield bb


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hubdata"
    d.mkdir()
    return d


@pytest_asyncio.fixture
async def hub_factory(data_dir: Path) -> AsyncIterator[object]:
    """Call ``await hub_factory(**setting_overrides)`` to start a hub; all are stopped at teardown."""
    started: list[RunningHub] = []

    async def factory(**overrides: object) -> RunningHub:
        overrides.setdefault("data", data_dir)
        hub = await start_hub(**overrides)
        started.append(hub)
        return hub

    yield factory
    for hub in reversed(started):
        await hub.stop()


@pytest_asyncio.fixture
async def hub(hub_factory) -> RunningHub:  # type: ignore[no-untyped-def]
    """One running hub with default settings."""
    return await hub_factory()
