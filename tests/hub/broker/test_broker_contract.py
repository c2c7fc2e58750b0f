"""The broker contract (hub/broker/base.py), run on memory:// and on a real redis-server.

Every node applies every envelope exactly once, its own included; with Redis, a
node keeps delivering locally while Redis is down, resubscribes once it is back,
and reports the recovery so its clients can catch up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from hub.broker.base import Broker, Envelope
from hub.broker.memory import MemoryBroker
from hub.broker.redis import RedisBroker
from hub.metrics import HubMetrics
from tests.support.redis import RedisServer
from tests.support.tcpproxy import BlackholeProxy

Received = list[Envelope]


def envelope(n: int) -> Envelope:
    return Envelope(kind="emit", rooms=(f"user:u{n}",), event="chat.message", data={"n": n, "text": "é"})


class Recorder:
    """One node's view: what its broker handed over, and how often it recovered."""

    def __init__(self) -> None:
        self.received: Received = []
        self.recoveries = 0

    async def on_envelope(self, env: Envelope) -> None:
        self.received.append(env)

    async def on_recovered(self) -> None:
        self.recoveries += 1


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


BrokerFactory = Callable[[str], Awaitable[tuple[Broker, Recorder]]]


@pytest_asyncio.fixture
async def redis_nodes(redis_server: RedisServer) -> AsyncIterator[BrokerFactory]:
    started: list[Broker] = []

    async def node(node_id: str) -> tuple[Broker, Recorder]:
        broker = RedisBroker(redis_server.url, node_id, HubMetrics())
        recorder = Recorder()
        await broker.start(recorder.on_envelope, recorder.on_recovered)
        started.append(broker)
        return broker, recorder

    yield node
    for broker in started:
        await broker.close()


@pytest.mark.asyncio
async def test_memory_broker_delivers_each_envelope_once_to_its_node() -> None:
    broker, rec = MemoryBroker(), Recorder()
    await broker.start(rec.on_envelope, rec.on_recovered)
    for n in range(3):
        await broker.publish(envelope(n))
    assert rec.received == [envelope(0), envelope(1), envelope(2)]
    assert broker.healthy()


@pytest.mark.asyncio
async def test_redis_every_node_applies_every_envelope_exactly_once_in_order(
    redis_nodes: BrokerFactory,
) -> None:
    nodes = [await redis_nodes(f"n{i}") for i in range(3)]
    assert all(broker.healthy() for broker, _ in nodes)
    for n in range(50):
        await nodes[n % 3][0].publish(envelope(n))
    await until(lambda: all(len(rec.received) >= 50 for _, rec in nodes))
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive by now
    for i, (_, rec) in enumerate(nodes):
        assert len(rec.received) == 50, f"node {i} got {len(rec.received)}"
        assert sorted(e.data["n"] for e in rec.received) == list(range(50))
        # Per publisher, order is kept.
        for origin in range(3):
            mine = [e.data["n"] for e in rec.received if e.data["n"] % 3 == origin]
            assert mine == sorted(mine)
    assert nodes[0][1].received[0] == envelope(0)  # payloads survive the trip unchanged


@pytest.mark.asyncio
async def test_redis_down_keeps_local_delivery_counts_drops_and_recovers_within_2s(
    redis_server: RedisServer, redis_nodes: BrokerFactory
) -> None:
    (a, rec_a), (b, rec_b) = await redis_nodes("a"), await redis_nodes("b")
    await redis_server.kill()
    await until(lambda: not a.healthy() and not b.healthy(), timeout=5)
    await a.publish(envelope(1))
    assert rec_a.received == [envelope(1)]  # local delivery does not wait for Redis
    assert isinstance(a, RedisBroker)
    assert a._metrics.broker_dropped._value.get() == 1

    await redis_server.start()
    back = asyncio.get_running_loop().time()
    await until(lambda: a.healthy() and b.healthy(), timeout=10)
    resubscribed_after = asyncio.get_running_loop().time() - back
    assert resubscribed_after < 2.0, f"resubscribed after {resubscribed_after:.2f}s"
    await until(lambda: rec_a.recoveries == 1 and rec_b.recoveries == 1)

    await a.publish(envelope(2))
    await until(lambda: envelope(2) in rec_b.received)
    assert rec_b.received == [envelope(2)]  # envelope 1 was dropped (at-most-once), never replayed


@pytest.mark.asyncio
async def test_a_dropped_subscriber_connection_is_rebuilt(
    redis_server: RedisServer, redis_nodes: BrokerFactory
) -> None:
    """CLIENT KILL of the subscriber connections only (Redis stays up) is noticed and healed."""
    (a, rec_a), (b, rec_b) = await redis_nodes("a"), await redis_nodes("b")
    assert isinstance(a, RedisBroker)
    killed = await a.client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    await until(lambda: rec_a.recoveries >= 1 and rec_b.recoveries >= 1 and a.healthy() and b.healthy())
    await b.publish(envelope(7))
    await until(lambda: envelope(7) in rec_a.received)


@pytest.mark.asyncio
async def test_a_broker_started_while_redis_is_down_serves_locally_then_joins(
    redis_server: RedisServer,
) -> None:
    await redis_server.kill()
    broker, rec = RedisBroker(redis_server.url, "late", HubMetrics()), Recorder()
    try:
        await broker.start(rec.on_envelope, rec.on_recovered)  # returns after ~2 s without Redis
        assert not broker.healthy()
        await broker.publish(envelope(1))
        assert rec.received == [envelope(1)]
        await redis_server.start()
        await until(broker.healthy, timeout=5)
    finally:
        await broker.close()


@pytest.mark.asyncio
async def test_a_half_open_link_is_caught_by_the_self_echo_heartbeat(redis_server: RedisServer) -> None:
    """No socket error ever surfaces through a blackholed link; only the missing echo reveals it."""
    proxy = BlackholeProxy(redis_server.port)
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    a, rec_a = RedisBroker(url, "a", HubMetrics()), Recorder()
    b, rec_b = RedisBroker(redis_server.url, "b", HubMetrics()), Recorder()
    try:
        await a.start(rec_a.on_envelope, rec_a.on_recovered)
        await b.start(rec_b.on_envelope, rec_b.on_recovered)
        assert a.healthy()
        proxy.blackholed = True
        await until(lambda: not a.healthy(), timeout=10)
        assert b.healthy()  # the other node's own link is fine
        proxy.blackholed = False  # new connections flow again; the old ones stay silent
        await until(lambda: a.healthy() and rec_a.recoveries == 1, timeout=10)
        await b.publish(envelope(9))
        await until(lambda: envelope(9) in rec_a.received)
    finally:
        await a.close()
        await b.close()
        await proxy.close()
