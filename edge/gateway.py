"""One store's gateway: MQTT readings -> sensor trackers -> outbox -> uplink to the hub.

Guarantees:
- A reading's effects are committed to the outbox before the reading is acknowledged to
  the broker: a stock or health change it completed, and the candidate level it started
  or moved while smoothing. Killing the gateway at any point loses nothing the broker
  handed over: unacked readings are redelivered, and a restarted gateway resumes the
  remembered candidate (it settles ``settle_s`` after the restart unless readings
  contradict it).
- While the broker link is down, silence is not held against any sensor.
- Each sensor's readings are handled in arrival order, one at a time, under one lock
  shared with the smoothing clock, so a sensor's outbox events are in the order its
  tracker produced them.
- The last level and health each sensor reported are remembered in the outbox, so a
  restarted gateway neither re-sends an unchanged level nor re-raises an alert.
- Stock leaves the outbox only when the hub has acknowledged it (see :mod:`edge.uplink`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from edge.backoff import jittered_backoff
from edge.config import GatewayConfig, SensorConfig
from edge.mqtt import Reading, TopicPattern, readings
from edge.outbox import Outbox, OutboxError
from edge.sensors import HealthChange, ReadingError, SensorMemory, ShelfTracker, StockChange, parse_reading
from edge.uplink import Uplink

log = logging.getLogger(__name__)


class Gateway:
    """Runs until cancelled. ``token()`` is called at every hub (re)connect, so a rotated
    token file takes effect without a restart."""

    def __init__(
        self,
        cfg: GatewayConfig,
        token: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._token = token
        self._clock = clock
        self._pattern = TopicPattern(cfg.mqtt.topic, cfg.boutique)
        self._sensors = {s.key: s for s in cfg.sensors}
        self._trackers: dict[str, ShelfTracker] = {}
        self._lock = asyncio.Lock()
        self._unknown_topics: set[str] = set()
        self._outbox: Outbox | None = None
        self._uplink_kind = ""
        self._saved_pending: dict[str, int | None] = {}

    async def run(self) -> None:
        """Open the outbox, restore each sensor's memory, then consume, smooth and upload."""
        outbox = await Outbox.open(
            Path(self._cfg.outbox.path), self._cfg.boutique, self._cfg.outbox.max_events
        )
        self._outbox = outbox
        try:
            memories = await outbox.memories()
            now = self._clock()
            self._trackers = {
                key: ShelfTracker(sensor, self._cfg.smoothing, memories.get(key, SensorMemory()), now)
                for key, sensor in self._sensors.items()
            }
            self._saved_pending = {key: memories.get(key, SensorMemory()).pending for key in self._sensors}
            for tracker in self._trackers.values():
                tracker.pause()  # until the broker link is up, silence means nothing
            uplink = Uplink(outbox, self._cfg.hub.url, self._token, self._cfg.hub.batch, self._uplink_state)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(uplink.run(), name="edge-uplink")
                tasks.create_task(self._smoothing_clock(), name="edge-clock")
                tasks.create_task(self._consume(), name="edge-mqtt")
        finally:
            self._outbox = None
            await outbox.close()

    async def _consume(self) -> None:
        async for reading in readings(
            self._cfg.mqtt, self._cfg.client_id(), self._pattern, self._broker_state, jittered_backoff
        ):
            await self._handle(reading)
            reading.ack()

    async def _handle(self, reading: Reading) -> None:
        topic = self._pattern.match(reading.topic)
        sensor = self._sensors.get(topic.key) if topic is not None else None
        if sensor is None:
            if reading.topic not in self._unknown_topics and len(self._unknown_topics) < 1000:
                self._unknown_topics.add(reading.topic)
                log.warning("mqtt: ignoring %r: no sensor in the config has this topic", reading.topic)
            return
        try:
            value = parse_reading(reading.payload)
        except ReadingError as exc:
            log.debug("mqtt: %r: unreadable payload (%s)", reading.topic, exc)
            value = math.nan
        async with self._lock:
            changes = self._trackers[sensor.key].observe(value, self._clock())
            await self._commit(sensor, changes)

    async def _smoothing_clock(self) -> None:
        """Let debounced changes settle and silent sensors be noticed, every ``tick_s``."""
        while True:
            await asyncio.sleep(self._cfg.smoothing.tick_s)
            async with self._lock:
                now = self._clock()
                for key, tracker in self._trackers.items():
                    await self._commit(self._sensors[key], tracker.tick(now))

    async def _commit(self, sensor: SensorConfig, changes: Sequence[StockChange | HealthChange]) -> None:
        """Put the tracker's changes in the outbox, then remember its unsettled candidate, if
        that changed, so a restart resumes the debounce instead of losing the change."""
        assert self._outbox is not None
        for change in changes:
            if isinstance(change, StockChange):
                await _until_stored(
                    self._outbox.put_stock, sensor.shelf, sensor.sensor, change.sku, change.level
                )
                self._saved_pending[sensor.key] = None  # put_stock clears it in the same transaction
                log.info("stock: %s %s -> %d", sensor.key, change.sku, change.level)
            else:
                await _until_stored(
                    self._outbox.put_health,
                    sensor.shelf,
                    sensor.sensor,
                    sensor.sku,
                    change.state,
                    change.detail,
                    time.time_ns() // 1_000_000,
                )
                log.warning("health: %s (%s) is %s: %s", sensor.key, sensor.sku, change.state, change.detail)
        pending = self._trackers[sensor.key].pending
        if pending != self._saved_pending.get(sensor.key):
            await _until_stored(
                self._outbox.remember_pending, sensor.shelf, sensor.sensor, sensor.sku, pending
            )
            self._saved_pending[sensor.key] = pending

    def _broker_state(self, connected: bool) -> None:
        """While the broker link is down, no sensor can be heard, so none is reported silent."""
        log.info("mqtt: %s", "connected" if connected else "disconnected")
        now = self._clock()
        for tracker in self._trackers.values():
            if connected:
                tracker.resume(now)
            else:
                tracker.pause()

    def _uplink_state(self, state: str) -> None:
        """Log the hub link's state when it changes kind (not at every batch of a drain)."""
        kind = state.split(" ", 1)[0]
        if kind != self._uplink_kind:
            self._uplink_kind = kind
            log.info("uplink: %s", state)


async def _until_stored(put: Callable[..., Awaitable[object]], *args: object) -> None:
    """Call ``put(*args)`` until the outbox takes it (a full disk, say, until the uplink frees
    room). Meanwhile the reading stays unacknowledged and the uplink keeps draining."""
    attempt = 0
    while True:
        try:
            await put(*args)
            return
        except OutboxError as exc:
            attempt += 1
            log.error("outbox: cannot store a sensor change (%s); retrying", exc)
            await jittered_backoff(attempt)
