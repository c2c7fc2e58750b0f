"""A simulated store: shelf sensors publishing realistic readings over MQTT.

Two layers:

- :class:`SimulatedShelf` is one sensor and the shelf it watches: the true unit ``count`` and what the
  sensor reads (a weight sensor reads ``tare + count * unit_weight`` plus gaussian noise plus a resting
  hand; a count sensor reads the count), or garbage in a ``failing`` mode.
- :class:`StoreSimulator` holds one shelf per configured sensor and publishes their readings at QoS 1 to
  the config's topic template. Tests drive it step by step (``take``, ``restock``, ``hand``, ``fail``,
  ``publish_all``); :meth:`StoreSimulator.run` is the random process for demos (shoppers, restocks,
  hands resting, a sensor failing). :func:`simulate` is what ``soko edge simulate`` calls.

Payloads: a finite reading is the JSON object ``{"value": <number>}``; a NaN reading is the text ``nan``
(JSON has no NaN). Randomness comes only from the seeded generator and the random process advances in
simulated time (tick ``i`` is at ``i / rate_hz`` seconds), so a seed gives the same events and readings
whatever the wall-clock pacing.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

import aiomqtt

from edge.config import GatewayConfig, SensorConfig

FailMode = Literal["nan", "negative", "overload", "silent"]
FAIL_MODES: tuple[FailMode, ...] = get_args(FailMode)

NOISE_FRACTION = 0.02
"""Standard deviation of a weight sensor's noise, as a fraction of one unit's weight."""
OVERLOAD_FACTOR = 3
"""An overloaded sensor reads at least this many times its shelf's capacity."""


class SimulatedShelf:
    """One sensor and its shelf: ``count`` (0..capacity) is the truth, :meth:`reading` what the sensor says.

    A healthy weight sensor reads ``tare + count * unit_weight + N(0, noise_sigma)`` plus ``hand`` grams
    while a hand rests on the shelf, rounded to 0.1 g; a healthy count sensor reads ``count``.
    ``failing`` overrides that: ``"nan"`` reads NaN, ``"negative"`` a value below 0, ``"overload"`` at least
    ``OVERLOAD_FACTOR`` times capacity (in units, or grams for a weight sensor), ``"silent"`` nothing.
    """

    def __init__(self, cfg: SensorConfig, rng: random.Random, count: int | None = None) -> None:
        self.cfg = cfg
        self._rng = rng
        self.count = cfg.capacity if count is None else count
        if not 0 <= self.count <= cfg.capacity:
            raise ValueError(f"{cfg.key}: count {self.count} outside 0..{cfg.capacity}")
        self.hand: float | None = None
        self.hand_until: float | None = None
        self.failing: FailMode | None = None

    @property
    def key(self) -> str:
        return self.cfg.key

    @property
    def unit_weight(self) -> float:
        """Grams per unit (1.0 for a count sensor, whose readings are in units)."""
        return self.cfg.unit_weight if self.cfg.unit_weight is not None else 1.0

    @property
    def noise_sigma(self) -> float:
        """Standard deviation of the noise on a healthy reading (0 for a count sensor)."""
        return NOISE_FRACTION * self.unit_weight if self.cfg.kind == "weight" else 0.0

    def expected(self) -> float:
        """The noise-free healthy reading for the current count, without any hand."""
        if self.cfg.kind == "count":
            return float(self.count)
        return self.cfg.tare + self.count * self.unit_weight

    def reading(self) -> float | None:
        """What the sensor publishes now; None when it is silent."""
        rng = self._rng
        if self.failing == "silent":
            return None
        if self.failing == "nan":
            return math.nan
        if self.cfg.kind == "count":
            if self.failing == "negative":
                return float(-rng.randint(1, 5))
            if self.failing == "overload":
                return float(OVERLOAD_FACTOR * self.cfg.capacity + rng.randint(1, 50))
            return float(self.count)
        if self.failing == "negative":
            return -round(self.unit_weight * rng.uniform(0.5, 5.0), 1)
        if self.failing == "overload":
            factor = OVERLOAD_FACTOR + rng.random()
            return round(self.cfg.tare + self.cfg.capacity * self.unit_weight * factor, 1)
        value = self.expected() + rng.gauss(0.0, self.noise_sigma) + (self.hand or 0.0)
        return round(value, 1)

    def payload(self) -> bytes | None:
        """:meth:`reading` encoded for MQTT (see the module docstring); None when silent."""
        value = self.reading()
        if value is None:
            return None
        if math.isnan(value):
            return b"nan"
        if self.cfg.kind == "count":
            return json.dumps({"value": int(value)}).encode()
        return json.dumps({"value": value}).encode()


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson(lam) sample (Knuth; lam is small here)."""
    limit = math.exp(-lam)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class StoreSimulator:
    """The configured store's sensors publishing to an MQTT broker, as an async context manager.

    ``shelves`` is keyed by ``"shelf/sensor"``; every shelf starts full. Readings go out at QoS 1:
    :meth:`publish_all` returns once the broker has acknowledged each of them. ``host``/``port`` default
    to the config's broker; the config's username/password are used. The client id is random, so it never
    takes over the gateway's persistent session.
    """

    def __init__(
        self,
        cfg: GatewayConfig,
        host: str | None = None,
        port: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.host = cfg.mqtt.host if host is None else host
        self.port = cfg.mqtt.port if port is None else port
        self.rng = random.Random(seed)  # noqa: S311  (a repeatable simulation, not secrets)
        self.shelves: dict[str, SimulatedShelf] = {s.key: SimulatedShelf(s, self.rng) for s in cfg.sensors}
        self.topics: dict[str, str] = {
            s.key: cfg.mqtt.topic.format(boutique=cfg.boutique, shelf=s.shelf, sensor=s.sensor)
            for s in cfg.sensors
        }
        self.published = 0
        self.taken = 0
        self.restocked = 0
        self._client: aiomqtt.Client | None = None

    async def __aenter__(self) -> StoreSimulator:
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.cfg.mqtt.username,
            password=self.cfg.mqtt.password,
            keepalive=self.cfg.mqtt.keepalive,
            clean_session=True,
        )
        await client.__aenter__()
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(exc_type, exc, tb)

    def _shelf(self, key: str) -> SimulatedShelf:
        try:
            return self.shelves[key]
        except KeyError:
            raise KeyError(f"no sensor {key!r} in the config") from None

    async def publish_all(self) -> int:
        """Publish one reading per non-silent sensor, in config order; return how many were published.

        Raises:
            RuntimeError: outside ``async with``.
            aiomqtt.MqttError: the broker connection failed.
        """
        if self._client is None:
            raise RuntimeError("StoreSimulator is not connected (use it with `async with`)")
        sent = 0
        for key, shelf in self.shelves.items():
            payload = shelf.payload()
            if payload is not None:
                await self._client.publish(self.topics[key], payload, qos=1)
                sent += 1
        self.published += sent
        return sent

    def take(self, key: str, n: int = 1) -> int:
        """A shopper takes up to ``n`` units (never below 0); return how many were taken."""
        if n < 0:
            raise ValueError(f"cannot take {n} units")
        shelf = self._shelf(key)
        taken = min(n, shelf.count)
        shelf.count -= taken
        self.taken += taken
        return taken

    def restock(self, key: str, to: int | None = None) -> None:
        """Staff fill the shelf to ``to`` units (default: its capacity); ValueError outside 0..capacity."""
        shelf = self._shelf(key)
        level = shelf.cfg.capacity if to is None else to
        if not 0 <= level <= shelf.cfg.capacity:
            raise ValueError(f"{key}: restock to {level} outside 0..{shelf.cfg.capacity}")
        shelf.count = level
        self.restocked += 1

    def hand(self, key: str, grams: float | None) -> None:
        """A hand rests on a weight sensor's shelf with ``grams`` extra (None: it is lifted).

        Raises:
            ValueError: for a count sensor, which a hand does not affect.
        """
        shelf = self._shelf(key)
        if shelf.cfg.kind != "weight":
            raise ValueError(f"{key}: a hand only affects a weight sensor")
        shelf.hand = grams
        shelf.hand_until = None

    def fail(self, key: str, mode: FailMode | None) -> None:
        """Make the sensor misbehave in ``mode`` from its next reading on (None: healthy again)."""
        if mode is not None and mode not in FAIL_MODES:
            raise ValueError(f"unknown failing mode {mode!r}; expected one of {', '.join(FAIL_MODES)}")
        self._shelf(key).failing = mode

    def truth(self) -> dict[str, int]:
        """Units on each SKU's shelf (the config gives each SKU one sensor), whatever the sensors say."""
        return {shelf.cfg.sku: shelf.count for shelf in self.shelves.values()}

    def progress_line(self, t: float) -> str:
        return f"t={t:g}s published={self.published} taken={self.taken} restocked={self.restocked}"

    def step(self, t: float, dt: float, shopper_rate_hz: float = 0.5) -> None:
        """Advance the random store by the tick of ``dt`` seconds that starts at simulated time ``t``.

        Hands rest under a second (0.2..0.9 s) on weight shelves; shoppers arrive as a Poisson process of
        ``shopper_rate_hz`` and take 1 or 2 units from a non-empty shelf;
        a shelf at or below a quarter of its capacity is restocked to full after a random delay
        (5 s on average).
        """
        rng = self.rng
        shelves = list(self.shelves.values())
        for shelf in shelves:
            if shelf.hand_until is not None and shelf.hand_until <= t:
                shelf.hand = shelf.hand_until = None
        weighed = [s for s in shelves if s.cfg.kind == "weight" and s.hand is None]
        if weighed and rng.random() < 0.1 * dt * len(weighed):
            shelf = rng.choice(weighed)
            shelf.hand = round(rng.uniform(80.0, 800.0), 1)
            shelf.hand_until = t + rng.uniform(0.2, 0.9)
        for _ in range(_poisson(rng, shopper_rate_hz * dt)):
            stocked = [s for s in shelves if s.count > 0]
            if not stocked:
                break
            shelf = rng.choice(stocked)
            self.take(shelf.key, rng.choice((1, 1, 1, 2)))
        for shelf in shelves:
            if shelf.count <= shelf.cfg.capacity // 4 and rng.random() < 0.2 * dt:
                self.restock(shelf.key)

    async def run(
        self,
        duration_s: float,
        rate_hz: float = 1.0,
        progress: Callable[[str], None] | None = None,
        *,
        shopper_rate_hz: float = 0.5,
        failing: str | None = None,
        failing_mode: FailMode = "nan",
        fail_after_s: float | None = None,
    ) -> None:
        """The random process for ``duration_s`` simulated seconds (``math.inf``: until cancelled).

        Every tick (``1 / rate_hz`` s, paced by the event loop's clock) applies :meth:`step` and then
        publishes every sensor's reading. Sensor ``failing`` (a ``"shelf/sensor"`` key) switches to
        ``failing_mode`` at ``fail_after_s`` (default: halfway; 6 s for an endless run).
        ``progress`` gets :meth:`progress_line` at each whole simulated second, and at the end when that is
        not one.

        Raises:
            ValueError: for a non-positive rate or duration, or an unknown ``failing`` sensor or mode.
            aiomqtt.MqttError: the broker connection failed.
        """
        _check_run_args(self.cfg, duration_s, rate_hz, failing, failing_mode)
        if fail_after_s is None:
            fail_after_s = duration_s / 2 if math.isfinite(duration_s) else 6.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        dt = 1.0 / rate_hz
        tick = 0
        reported = False
        while tick / rate_hz < duration_s:
            t = tick / rate_hz
            if failing is not None and t >= fail_after_s and self.shelves[failing].failing is None:
                self.fail(failing, failing_mode)
            self.step(t, dt, shopper_rate_hz)
            await self.publish_all()
            tick += 1
            now = tick / rate_hz
            reported = math.floor(now) > math.floor(t)
            if progress is not None and reported:
                progress(self.progress_line(math.floor(now)))
            if now < duration_s:
                await asyncio.sleep(max(0.0, start + now - loop.time()))
        if progress is not None and not reported:
            progress(self.progress_line(round(tick / rate_hz, 3)))


def _check_run_args(
    cfg: GatewayConfig, duration_s: float, rate_hz: float, failing: str | None, failing_mode: str
) -> None:
    if not (rate_hz > 0 and math.isfinite(rate_hz)):
        raise ValueError(f"rate_hz: must be a positive number, got {rate_hz}")
    if not duration_s > 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    if failing is not None and failing not in {s.key for s in cfg.sensors}:
        raise ValueError(f"failing: no sensor {failing!r} in the config")
    if failing_mode not in FAIL_MODES:
        raise ValueError(
            f"failing_mode: unknown mode {failing_mode!r}; expected one of {', '.join(FAIL_MODES)}"
        )


async def simulate(
    cfg: GatewayConfig,
    host: str | None = None,
    port: int | None = None,
    *,
    duration_s: float,
    rate_hz: float = 1.0,
    seed: int | None = None,
    failing: str | None = None,
    failing_mode: FailMode = "nan",
    fail_after_s: float | None = None,
    truth_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Run the simulated store (:meth:`StoreSimulator.run`) and return the final truth ``{sku: units}``.

    The truth is also written as JSON to ``truth_path`` when given, even if the run is cancelled
    (an endless run stopped with Ctrl-C). Raises ValueError for bad arguments before connecting.
    """
    _check_run_args(cfg, duration_s, rate_hz, failing, failing_mode)
    sim = StoreSimulator(cfg, host, port, seed)
    try:
        async with sim:
            await sim.run(
                duration_s,
                rate_hz,
                progress,
                failing=failing,
                failing_mode=failing_mode,
                fail_after_s=fail_after_s,
            )
    finally:
        if truth_path is not None:
            text = json.dumps(sim.truth(), indent=2, sort_keys=True) + "\n"
            await asyncio.to_thread(truth_path.write_text, text)
    return sim.truth()
