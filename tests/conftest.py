"""Shared fixtures: real hubs on random ports, tokens, and clients.

``hub_factory`` starts an in-process hub (aiohttp AppRunner on 127.0.0.1:0) over a
SQLite file in a per-test directory; stopping and starting it again on the same
directory is a hub restart with durable state. ``HubProcess`` (tests/support)
runs ``soko hub`` as a real subprocess for signal tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from blockbuster import BlockBuster, blockbuster_ctx

from tests.support.hub import RunningHub, start_hub
from tests.support.mongo import SecantusServer
from tests.support.mosquitto import MosquittoServer
from tests.support.redis import RedisServer


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which our packages make a blocking call on the running event loop."""
    with blockbuster_ctx(["protocol", "storage", "hub", "clients", "edge"]) as bb:
        # pymongo stats /.dockerenv once per connection pool it creates, to describe its host.
        bb.functions["os.stat"].can_block_in("pymongo/pool_options.py", "get_container_env_info")
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


@pytest_asyncio.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh ``redis-server`` on a random port; tests may ``kill()`` and ``start()`` it again."""
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoServer]:
    """A fresh Mosquitto broker on a random port (persistent sessions); tests may stop/kill and restart it."""
    server = MosquittoServer(tmp_path / "mosquitto")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """One SecantusDB (MongoDB wire protocol) server process for the whole session, on a random port."""
    server = SecantusServer(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_url(secantus: SecantusServer) -> str:
    """``mongodb://127.0.0.1:<port>/soko_<uuid>``: a fresh, empty database on the session's server."""
    return secantus.url(f"soko_{uuid.uuid4().hex}")
