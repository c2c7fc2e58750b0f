"""The store simulator against a real Mosquitto broker, and the broker fixture's persistent sessions.

A subscriber on the gateway's topic filter decodes what the simulator publishes with the
gateway's own parser (``edge.sensors.parse_reading``) and compares it with the simulator's truth.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
from pathlib import Path

import aiomqtt
import pytest

from edge.config import GatewayConfig, parse_config
from edge.mqtt import TopicPattern
from edge.sensors import parse_reading
from edge.simulate import FAIL_MODES, OVERLOAD_FACTOR, FailMode, SimulatedShelf, StoreSimulator, simulate
from tests.support.mosquitto import MosquittoServer

CONFIG = """
boutique = "b1"

[hub]
url = "http://127.0.0.1:9"

[mqtt]
host = "127.0.0.1"
port = {port}

[outbox]
path = "outbox.db"

[[sensors]]
shelf = "s1"
sensor = "w1"
sku = "sku-a"
kind = "weight"
capacity = 20
unit_weight = 250.0
tare = 1200.0

[[sensors]]
shelf = "s2"
sensor = "c1"
sku = "sku-b"
kind = "count"
capacity = 12

[[sensors]]
shelf = "s3"
sensor = "w2"
sku = "sku-c"
kind = "weight"
capacity = 8
unit_weight = 95.5
"""

Reading = tuple[str, float, int]
"""(sensor key, decoded value, delivery QoS)"""


def make_config(port: int) -> GatewayConfig:
    return parse_config(CONFIG.format(port=port), "store.toml", base_dir=Path("/nonexistent"))


@pytest.fixture
def cfg(mosquitto: MosquittoServer) -> GatewayConfig:
    return make_config(mosquitto.port)


def store(cfg: GatewayConfig, server: MosquittoServer, seed: int) -> StoreSimulator:
    return StoreSimulator(cfg, server.host, server.port, seed)


def subscriber(
    server: MosquittoServer, identifier: str | None = None, clean_session: bool | None = None
) -> aiomqtt.Client:
    return aiomqtt.Client(server.host, server.port, identifier=identifier, clean_session=clean_session)


async def subscribe(client: aiomqtt.Client, cfg: GatewayConfig) -> None:
    await client.subscribe(TopicPattern(cfg.mqtt.topic, cfg.boutique).subscription, qos=1)


async def collect(client: aiomqtt.Client, cfg: GatewayConfig, n: int) -> list[Reading]:
    """The next ``n`` messages, as readings of the configured sensors."""
    pattern = TopicPattern(cfg.mqtt.topic, cfg.boutique)
    out: list[Reading] = []
    async with asyncio.timeout(20):
        async for message in client.messages:
            sensor = pattern.match(message.topic.value)
            assert sensor is not None, message.topic.value
            assert isinstance(message.payload, bytes)
            out.append((sensor.key, parse_reading(message.payload), message.qos))
            if len(out) == n:
                break
    return out


def by_key(readings: list[Reading]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, value, _ in readings:
        out.setdefault(key, []).append(value)
    return out


def units(shelf: SimulatedShelf, value: float) -> int:
    """The unit count a healthy reading stands for (no hand on the shelf)."""
    return round((value - shelf.cfg.tare) / shelf.unit_weight) if shelf.cfg.kind == "weight" else int(value)


@pytest.mark.asyncio
async def test_readings_decode_to_the_truth(mosquitto: MosquittoServer, cfg: GatewayConfig) -> None:
    """Random takes and restocks: after each round every sensor's reading matches its shelf's count,
    weight within 6 sigma of ``tare + count * unit_weight``; the weight noise is real (not zero)."""
    ops = random.Random(1)
    residuals: list[float] = []
    async with (
        subscriber(mosquitto) as sub,
        store(cfg, mosquitto, 3) as sim,
    ):
        await subscribe(sub, cfg)
        assert sim.truth() == {"sku-a": 20, "sku-b": 12, "sku-c": 8}
        for _ in range(30):
            key = ops.choice(list(sim.shelves))
            if ops.random() < 0.2:
                sim.restock(key, ops.randint(0, sim.shelves[key].cfg.capacity))
            else:
                sim.take(key, ops.randint(1, 3))
            assert await sim.publish_all() == 3
            got = await collect(sub, cfg, 3)
            assert [key for key, _, _ in got] == list(sim.shelves)
            for key, value, qos in got:
                shelf = sim.shelves[key]
                assert qos == 1
                assert units(shelf, value) == shelf.count
                assert abs(value - shelf.expected()) <= 6 * shelf.noise_sigma + 0.05
                if shelf.cfg.kind == "weight":
                    residuals.append((value - shelf.expected()) / shelf.noise_sigma)
            assert sim.truth() == {sim.shelves[k].cfg.sku: sim.shelves[k].count for k in sim.shelves}
        assert 0.5 < statistics.pstdev(residuals) < 2.0
        assert sim.published == 90


@pytest.mark.asyncio
async def test_take_never_goes_below_zero_and_restock_is_bounded(
    mosquitto: MosquittoServer, cfg: GatewayConfig
) -> None:
    async with store(cfg, mosquitto, 1) as sim:
        assert sim.take("s2/c1", 100) == 12
        assert sim.take("s2/c1", 1) == 0
        assert sim.truth()["sku-b"] == 0
        with pytest.raises(ValueError, match=r"outside 0\.\.12"):
            sim.restock("s2/c1", 13)
        sim.restock("s2/c1")
        assert sim.truth()["sku-b"] == 12
        with pytest.raises(KeyError, match="s9/x"):
            sim.take("s9/x")


@pytest.mark.asyncio
async def test_a_resting_hand_adds_its_grams_until_lifted(
    mosquitto: MosquittoServer, cfg: GatewayConfig
) -> None:
    async with (
        subscriber(mosquitto) as sub,
        store(cfg, mosquitto, 5) as sim,
    ):
        await subscribe(sub, cfg)
        shelf = sim.shelves["s1/w1"]
        sim.hand("s1/w1", 400.0)
        await sim.publish_all()
        sim.hand("s1/w1", None)
        await sim.publish_all()
        rested, lifted = by_key(await collect(sub, cfg, 6))["s1/w1"]
        assert abs(rested - (shelf.expected() + 400.0)) <= 6 * shelf.noise_sigma + 0.05
        assert abs(lifted - shelf.expected()) <= 6 * shelf.noise_sigma + 0.05
        with pytest.raises(ValueError, match="only affects a weight sensor"):
            sim.hand("s2/c1", 100.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", FAIL_MODES)
async def test_failing_sensors_publish_what_their_mode_says(
    mosquitto: MosquittoServer, cfg: GatewayConfig, mode: FailMode
) -> None:
    """A weight and a count sensor fail for one round, then recover; the third stays healthy throughout.
    Per-topic order is kept, so a silent sensor's only reading is the one after it recovered."""
    failed = ("s1/w1", "s2/c1")
    async with (
        subscriber(mosquitto) as sub,
        store(cfg, mosquitto, 9) as sim,
    ):
        await subscribe(sub, cfg)
        for key in failed:
            sim.fail(key, mode)
        first = await sim.publish_all()
        for key in failed:
            sim.fail(key, None)
        assert await sim.publish_all() == 3
        assert first == (1 if mode == "silent" else 3)
        got = by_key(await collect(sub, cfg, first + 3))
    for key in failed:
        shelf = sim.shelves[key]
        if mode == "silent":
            assert len(got[key]) == 1
        else:
            bad = got[key][0]
            if mode == "nan":
                assert math.isnan(bad)
            elif mode == "negative":
                assert bad < 0
            else:
                assert bad >= shelf.cfg.tare + OVERLOAD_FACTOR * shelf.cfg.capacity * shelf.unit_weight
        assert units(shelf, got[key][-1]) == shelf.count
    assert [units(sim.shelves["s3/w2"], v) for v in got["s3/w2"]] == [8, 8]
    with pytest.raises(ValueError, match="unknown failing mode"):
        sim.fail("s1/w1", "melting")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_persistent_session_receives_readings_published_while_disconnected(
    mosquitto: MosquittoServer, cfg: GatewayConfig
) -> None:
    """What the gateway relies on: a clean_session=False QoS 1 subscriber that was away gets every
    reading published meanwhile, in order per sensor, without subscribing again."""
    async with subscriber(mosquitto, "gw-test", clean_session=False) as sub:
        await subscribe(sub, cfg)
    async with store(cfg, mosquitto, 2) as sim:
        for _ in range(5):
            for key in sim.shelves:
                sim.take(key, 1)
            await sim.publish_all()
    async with subscriber(mosquitto, "gw-test", clean_session=False) as sub:
        got = await collect(sub, cfg, 15)
    assert {qos for _, _, qos in got} == {1}
    for key, values in by_key(got).items():
        start = sim.shelves[key].cfg.capacity
        assert [units(sim.shelves[key], v) for v in values] == [start - i for i in range(1, 6)]


@pytest.mark.asyncio
async def test_queued_readings_survive_a_graceful_broker_restart(
    mosquitto: MosquittoServer, cfg: GatewayConfig
) -> None:
    async with subscriber(mosquitto, "gw-test", clean_session=False) as sub:
        await subscribe(sub, cfg)
    async with store(cfg, mosquitto, 2) as sim:
        sim.take("s1/w1", 4)
        await sim.publish_all()
    await mosquitto.stop()
    await mosquitto.start()
    async with subscriber(mosquitto, "gw-test", clean_session=False) as sub:
        got = by_key(await collect(sub, cfg, 3))
    assert units(sim.shelves["s1/w1"], got["s1/w1"][0]) == 16
    assert "mosquitto.db" in {p.name for p in mosquitto.workdir.iterdir()}


@pytest.mark.asyncio
async def test_run_publishes_every_tick_and_keeps_the_truth_in_bounds(
    mosquitto: MosquittoServer, cfg: GatewayConfig
) -> None:
    """1.5 s at 10 Hz is 15 ticks; the count sensor goes silent from 0.5 s (5 readings), the others
    publish every tick. Busy shoppers empty shelves; the truth stays within 0..capacity."""
    lines: list[str] = []
    async with (
        subscriber(mosquitto) as sub,
        store(cfg, mosquitto, 11) as sim,
    ):
        await subscribe(sub, cfg)
        await sim.run(
            1.5,
            10.0,
            lines.append,
            shopper_rate_hz=40.0,
            failing="s2/c1",
            failing_mode="silent",
            fail_after_s=0.5,
        )
        assert sim.published == 35
        got = by_key(await collect(sub, cfg, 35))
    assert {key: len(v) for key, v in got.items()} == {"s1/w1": 15, "s2/c1": 5, "s3/w2": 15}
    assert sim.taken > 0
    for shelf in sim.shelves.values():
        assert 0 <= shelf.count <= shelf.cfg.capacity
    assert lines == [lines[0], sim.progress_line(1.5)]
    assert lines[0].startswith("t=1s published=25 taken=")
    assert lines[1] == f"t=1.5s published=35 taken={sim.taken} restocked={sim.restocked}"


def test_the_random_process_is_determined_by_the_seed() -> None:
    cfg = make_config(1883)

    def trace(seed: int) -> list[tuple[dict[str, int], list[bytes | None]]]:
        sim = StoreSimulator(cfg, seed=seed)
        out = []
        for tick in range(200):
            sim.step(tick * 0.1, 0.1, shopper_rate_hz=5.0)
            out.append((sim.truth(), [s.payload() for s in sim.shelves.values()]))
        return out

    assert trace(4) == trace(4)
    assert trace(4) != trace(5)


@pytest.mark.asyncio
async def test_simulate_writes_the_truth_it_returns(
    mosquitto: MosquittoServer, cfg: GatewayConfig, tmp_path: Path
) -> None:
    truth_path = tmp_path / "truth.json"
    lines: list[str] = []
    truth = await simulate(
        cfg,
        mosquitto.host,
        mosquitto.port,
        duration_s=1.0,
        rate_hz=4.0,
        seed=1,
        failing="s1/w1",
        truth_path=truth_path,
        progress=lines.append,
    )
    assert json.loads(truth_path.read_text()) == truth
    assert set(truth) == {"sku-a", "sku-b", "sku-c"}
    assert lines == [lines[0]] and lines[0].startswith("t=1s published=12 ")


@pytest.mark.asyncio
async def test_simulate_rejects_bad_arguments_before_connecting(cfg: GatewayConfig) -> None:
    with pytest.raises(ValueError, match="no sensor 's9/x'"):
        await simulate(cfg, "127.0.0.1", 9, duration_s=1.0, failing="s9/x")
    with pytest.raises(ValueError, match="rate_hz"):
        await simulate(cfg, "127.0.0.1", 9, duration_s=1.0, rate_hz=0.0)
