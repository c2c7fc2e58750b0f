"""The PositionBook contract (hub/domains/location.py), on LocalPositionBook and on RedisPositionBook
over a real redis-server: latest position per driver, TTL, radius search nearest first.
With Redis down, the Redis book keeps answering from this node's own positions."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from hub.broker.base import Envelope
from hub.broker.redis import RedisBroker, redis_client
from hub.broker.redis_geo import RedisPositionBook
from hub.domains.geo import EARTH_RADIUS_M, Fix
from hub.domains.location import LocalPositionBook, Position, PositionBook
from hub.metrics import HubMetrics
from storage.base import LatLon
from tests.support.redis import RedisServer

CENTRE: LatLon = (-1.2921, 36.8219)
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
T0 = 1_700_000_000_000


def offset(north_m: float = 0.0, east_m: float = 0.0) -> LatLon:
    """A point near CENTRE, ``north_m``/``east_m`` metres away (approximately, for east)."""
    lat = CENTRE[0] + north_m / M_PER_DEG
    return (lat, CENTRE[1] + east_m / (M_PER_DEG * math.cos(math.radians(CENTRE[0]))))


def position(p: LatLon, ts: int = T0, speed: float | None = 4.5) -> Position:
    return Position(
        fix=Fix(lat=p[0], lon=p[1], accuracy=6.0, speed=speed, heading=123.0, ts=ts), avg_speed_mps=speed
    )


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def _ignore(_: Envelope) -> None:
    return None


async def _nothing() -> None:
    return None


@dataclass
class Backend:
    name: str
    redis: RedisServer | None


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend("redis", request.getfixturevalue("redis_server"))
    return Backend("local", None)


BookFactory = Callable[[float], Awaitable[PositionBook]]


@pytest_asyncio.fixture
async def make_book(backend: Backend) -> AsyncIterator[BookFactory]:
    """``await make_book(ttl)``: a fresh book of the backend under test."""
    books: list[PositionBook] = []
    brokers: list[RedisBroker] = []

    async def make(ttl: float) -> PositionBook:
        book: PositionBook
        if backend.redis is None:
            book = LocalPositionBook(ttl)
        else:
            broker = RedisBroker(backend.redis.url, f"n{len(brokers)}", HubMetrics())
            await broker.start(_ignore, _nothing)
            brokers.append(broker)
            book = RedisPositionBook(broker, HubMetrics(), ttl=ttl)
        books.append(book)
        return book

    yield make
    for book in books:
        await book.close()
    for broker in brokers:
        await broker.close()


@pytest.mark.asyncio
async def test_put_then_get_returns_the_latest_position(make_book: BookFactory) -> None:
    book = await make_book(60)
    assert await book.get("d1") is None
    first = position(offset(100), T0)
    await book.put("d1", first)
    assert await book.get("d1") == first
    second = position(offset(200), T0 + 5000, speed=None)
    await book.put("d1", second)
    assert await book.get("d1") == second


@pytest.mark.asyncio
async def test_drivers_are_isolated_and_listed_once(make_book: BookFactory) -> None:
    book = await make_book(60)
    a, b = position(offset(100)), position(offset(-300))
    await book.put("a", a)
    await book.put("b", b)
    assert await book.get("a") == a
    assert await book.get("b") == b
    moved = position(offset(east_m=50), T0 + 1000)
    await book.put("a", moved)
    assert await book.get("b") == b
    found = await book.nearby(*CENTRE, 1000, 10)
    assert [(n.driver_id, n.position) for n in found] == [("a", moved), ("b", b)]


@pytest.mark.asyncio
async def test_nearby_is_nearest_first_within_the_radius_and_limit(make_book: BookFactory) -> None:
    book = await make_book(60)
    places = {
        "far": offset(east_m=10_000),
        "mid": offset(north_m=-2000),
        "near": offset(north_m=100),
        "closer": offset(east_m=-40),
        "edge": offset(north_m=2400),
    }
    for n, (driver, p) in enumerate(places.items()):
        await book.put(driver, position(p, T0 + n))
    found = await book.nearby(*CENTRE, 2500, 10)
    assert [n.driver_id for n in found] == ["closer", "near", "mid", "edge"]
    assert [round(n.distance_m) for n in found] == [40, 100, 2000, 2400]
    assert found[1].position == position(places["near"], T0 + 2)
    top = await book.nearby(*CENTRE, 2500, 2)
    assert [n.driver_id for n in top] == ["closer", "near"]
    assert await book.nearby(*CENTRE, 30, 10) == []
    around_far = await book.nearby(*places["far"], 1, 10)
    assert [n.driver_id for n in around_far] == ["far"]


@pytest.mark.asyncio
async def test_a_position_expires_ttl_after_its_last_put(make_book: BookFactory) -> None:
    book = await make_book(1.0)
    await book.put("stays", position(offset(10)))
    await book.put("goes", position(offset(20)))
    await asyncio.sleep(0.6)
    await book.put("stays", position(offset(15), T0 + 600))  # restarts its TTL
    await asyncio.sleep(0.6)
    assert await book.get("goes") is None
    assert await book.get("stays") == position(offset(15), T0 + 600)
    assert [n.driver_id for n in await book.nearby(*CENTRE, 1000, 10)] == ["stays"]
    await asyncio.sleep(1.2)
    assert await book.get("stays") is None
    assert await book.nearby(*CENTRE, 1000, 10) == []


@pytest.mark.asyncio
async def test_redis_book_prunes_expired_drivers_from_the_geo_set(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, "n", HubMetrics())
    await broker.start(_ignore, _nothing)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        book = RedisPositionBook(broker, HubMetrics(), ttl=0.3)
        for n in range(5):
            await book.put(f"d{n}", position(offset(10 * n)))
        assert await raw.zcard("soko:pos:geo") == 5
        await asyncio.sleep(0.5)
        assert await raw.exists("soko:pos:fix:d0") == 0
        assert await book.nearby(*CENTRE, 1000, 10) == []
        assert await raw.zcard("soko:pos:geo") == 0
        assert await raw.zcard("soko:pos:exp") == 0
    finally:
        await raw.aclose()
        await broker.close()


@pytest.mark.asyncio
async def test_redis_book_shares_positions_between_nodes(redis_server: RedisServer) -> None:
    a = RedisBroker(redis_server.url, "a", HubMetrics())
    b = RedisBroker(redis_server.url, "b", HubMetrics())
    await a.start(_ignore, _nothing)
    await b.start(_ignore, _nothing)
    try:
        on_a, on_b = RedisPositionBook(a, HubMetrics(), ttl=60), RedisPositionBook(b, HubMetrics(), ttl=60)
        await on_a.put("d1", position(offset(100)))
        assert await on_b.get("d1") == position(offset(100))
        assert [n.driver_id for n in await on_b.nearby(*CENTRE, 500, 10)] == ["d1"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_redis_down_answers_from_this_nodes_positions_and_heals(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, "n", HubMetrics())
    await broker.start(_ignore, _nothing)
    try:
        book = RedisPositionBook(broker, HubMetrics(), ttl=60)
        await book.put("before", position(offset(100)))
        await redis_server.kill()
        await until(lambda: not broker.healthy())
        await book.put("during", position(offset(-200), T0 + 1))
        assert await book.get("before") == position(offset(100))
        assert await book.get("during") == position(offset(-200), T0 + 1)
        assert [n.driver_id for n in await book.nearby(*CENTRE, 1000, 10)] == ["before", "during"]

        await redis_server.start()  # empty: no persistence
        await until(broker.healthy)
        assert await book.get("during") == position(offset(-200), T0 + 1)  # this node's newer copy
        await book.put("after", position(offset(300), T0 + 2))
        assert [n.driver_id for n in await book.nearby(*CENTRE, 1000, 10)] == ["after"]
    finally:
        await broker.close()


class ClaimsHealthy:
    """A link whose broker has not noticed yet that Redis is gone: every call reaches a dead port."""

    def __init__(self, url: str) -> None:
        self.client = redis_client(url)

    def healthy(self) -> bool:
        return True


@pytest.mark.asyncio
async def test_failed_redis_calls_are_counted_and_fall_back(redis_server: RedisServer) -> None:
    await redis_server.stop()
    link = ClaimsHealthy(redis_server.url)
    metrics = HubMetrics()
    try:
        book = RedisPositionBook(link, metrics, ttl=60)
        await book.put("d1", position(offset(100)))
        assert await book.get("d1") == position(offset(100))
        assert [n.driver_id for n in await book.nearby(*CENTRE, 1000, 10)] == ["d1"]
        errors = metrics.shared_state_errors
        assert [errors.labels(f"positions.{op}")._value.get() for op in ("put", "get", "nearby")] == [1, 1, 1]
    finally:
        await link.client.aclose()
