"""Sensor readings to stock levels and health, sans-I/O.

Nothing here reads a clock, sleeps or touches the network: the caller passes ``now``
(monotonic seconds) to every call and acts on the returned events, so the same code runs
under the gateway, the simulator and the tests.

How a :class:`ShelfTracker` reads a sensor
------------------------------------------

Every reading is one of:

* **clear at m units**. Weight sensor: ``r = (grams - tare) / unit_weight`` is within
  ``tolerance`` of the whole number ``m``. Count sensor: the value is a whole number ``m``
  (within 1e-6), passed through.
* **ambiguous** (weight only): ``r`` lies between two such bands, as when an item is in
  motion, a hand rests on the shelf or the scale jitters. It is not a count.
* **invalid** (nonsense): NaN or infinite; negative (weight: ``r < -tolerance``; count:
  below 0); beyond capacity (weight: ``r > capacity + 0.5``, i.e. nearer to more units than
  the shelf holds; count: above ``capacity``); a count that is not a whole number.

Time runs only through the calls: each :meth:`~ShelfTracker.observe` and
:meth:`~ShelfTracker.tick` checks every rule below at its ``now``, so a deadline is met at
the first call at or after it (the gateway ticks every ``tick_s``). When no reading arrives,
the last one stands: it is "the reading in force" until the next one (sensors that publish
only on change are common).

Debounce and hysteresis. The level (the last count emitted) stays until readings clearly
land on another count ``m``. ``m`` becomes the *candidate* (:attr:`~ShelfTracker.pending`)
at ``t0``, the first reading clear at ``m``, and is emitted as one :class:`StockChange` at
the first call with ``now - t0 >= settle_s``. In between:

* a reading clear at ``m`` keeps the candidate (and its ``t0``);
* a reading clear at another count ``k`` makes ``k`` the candidate from that reading;
* an ambiguous reading, or one clear at the current level, drops the candidate;
* an invalid reading changes nothing: garbage neither confirms, cancels nor restarts a
  change, so valid readings that agree for ``settle_s`` settle even if garbage is
  interleaved (a sensor alternating NaN and "3 units" moves the level to 3 after
  ``settle_s`` and is reported invalid, see below).

So jitter within the bands, or a hand resting for less than ``settle_s``, changes nothing,
and a hand resting longer gives at most one change and one change back. A tracker whose
memory has no level emits the first settled count, so the hub learns the shelf's state.

Health (one :class:`HealthChange` per transition, never repeated). An invalid reading opens
a *trouble spell* unless one is open; the spell closes when health would return to ``ok``
by the rule below (valid readings in force for ``settle_s``), or on silence.

* ``invalid``: at the first call where all of these hold: (1) the reading in force is
  invalid; (2) the open spell began (its first invalid reading) at least ``settle_s`` ago;
  (3) at least half of the window's readings were invalid, the window being the readings
  with time in ``(now - settle_s, now]`` plus the one in force at ``now - settle_s``.
  Hence a continuous stream of nonsense is reported ``settle_s`` after it began, a sensor
  whose readings are garbage half of the time is reported, and a burst of nonsense shorter
  than ``settle_s`` with valid readings for ``settle_s`` before and after it (like a hand
  pressing briefly on a full shelf) is not: during the burst (2) fails, after it (1).
  Invalid readings never change the level. A tracker keeps only the window's readings.
* ``silent``: no reading for ``silent_after_s``, measured from the last reading, or from
  construction or :meth:`~ShelfTracker.resume`, whichever is latest; never reported between
  :meth:`~ShelfTracker.pause` and ``resume`` (the gateway pauses while its broker link is
  down, so a lost broker is not every sensor going silent). Silence drops the candidate
  and any spell.
* ``ok`` again: from ``silent``, on the first valid (clear or ambiguous) reading; from
  ``invalid``, once no invalid reading was in force for the last ``settle_s``, i.e. the first
  valid reading after the last invalid one is ``settle_s`` old.

The starting level, health and candidate come from :class:`SensorMemory`, so a restarted
gateway neither re-sends a level the hub already has nor re-raises an alert already raised,
and a change still settling when it stopped is not lost: the remembered candidate counts
its ``t0`` from construction, so it settles ``settle_s`` after the restart unless readings
drop or replace it. A remembered candidate equal to the level or outside ``0..capacity``
(the config changed) is discarded.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import get_args

from edge.config import SensorConfig, SmoothingConfig
from protocol.messages import SensorState

__all__ = [
    "MAX_READING_BYTES",
    "HealthChange",
    "ReadingError",
    "SensorMemory",
    "ShelfTracker",
    "StockChange",
    "parse_reading",
]

MAX_READING_BYTES = 1024
"""Longer payloads are refused unread."""
_COUNT_EPSILON = 1e-6
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


class ReadingError(ValueError):
    """A payload that is not a reading at all (the message says why, quoting a bounded prefix)."""


def parse_reading(payload: bytes) -> float:
    """Read one sensor value from an MQTT payload.

    Accepted, surrounded by any whitespace: a number as plain text or JSON (``12.5``,
    ``-3``, ``1e3``); ``nan``, ``inf``, ``-inf`` in any case (also JSON's ``NaN`` and
    ``Infinity``); a JSON string holding such a number (``"12.5"``); a JSON object with a
    ``"value"`` key holding either (``{"value": 12.5, "ts": 1700000000}``; other keys are
    ignored). The result may be NaN or infinite: judging the value is the tracker's job.

    Raises:
        ReadingError: empty, longer than :data:`MAX_READING_BYTES`, not UTF-8, not JSON
            where JSON was begun, no ``"value"``, or not a number (``true``, ``null``,
            ``"12 g"``, a list...).
    """
    if len(payload) > MAX_READING_BYTES:
        raise ReadingError(f"payload of {len(payload)} bytes is longer than {MAX_READING_BYTES}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ReadingError(f"payload is not UTF-8 text: {payload[:40]!r}") from None
    if not text:
        raise ReadingError("empty payload")
    if text[0] not in '{"':
        return _number(text)
    try:
        value = json.loads(text)
    except ValueError:
        raise ReadingError(f"payload is not valid JSON: {text[:40]!r}") from None
    if isinstance(value, dict):
        if "value" not in value:
            raise ReadingError(f'JSON object has no "value": {text[:40]!r}')
        value = value["value"]
    if isinstance(value, str):
        return _number(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ReadingError(f"value out of range: {text[:40]!r}") from None
    raise ReadingError(f"value is not a number: {text[:40]!r}")


def _number(text: str) -> float:
    if _NUMBER.fullmatch(text) is None:
        raise ReadingError(f"not a number: {text[:40]!r}")
    return float(text)


@dataclass(frozen=True, slots=True)
class StockChange:
    """The shelf settled on ``level`` units of ``sku``."""

    sku: str
    level: int


@dataclass(frozen=True, slots=True)
class HealthChange:
    """The sensor's health became ``state``; ``detail`` (<= 200 chars) says why, for staff."""

    state: SensorState
    detail: str


@dataclass(frozen=True, slots=True)
class SensorMemory:
    """What the hub was last told about a sensor: its level (None: nothing yet) and health,
    and the candidate level still settling when the gateway stopped (None: none)."""

    level: int | None = None
    health: str = "ok"
    pending: int | None = None


_STATES: tuple[SensorState, ...] = get_args(SensorState)


class ShelfTracker:
    """Turns one sensor's readings into debounced :class:`StockChange` and
    :class:`HealthChange` events, by the rules in this module's docstring.

    ``now`` must not go backwards between calls. Each call returns the events it caused,
    oldest first (a health change before a stock change from the same call).
    """

    def __init__(
        self, cfg: SensorConfig, smoothing: SmoothingConfig, memory: SensorMemory, now: float
    ) -> None:
        """Raises ValueError when ``memory.health`` is not ok, silent or invalid."""
        if memory.health not in _STATES:
            raise ValueError(f"unknown health {memory.health!r} for {cfg.key}")
        self._cfg = cfg
        self._settle_s = smoothing.settle_s
        self._silent_after_s = smoothing.silent_after_s
        self._level = memory.level
        self._health: SensorState = memory.health
        pending = memory.pending
        keep = pending is not None and pending != memory.level and 0 <= pending <= cfg.capacity
        self._candidate: int | None = pending if keep else None
        self._candidate_since = now
        self._heard_at = now
        self._paused = False
        self._window: deque[tuple[float, bool]] = deque()
        self._spell_since: float | None = None
        self._valid_since: float | None = None
        self._invalid_detail = ""

    @property
    def level(self) -> int | None:
        """The last level emitted (or remembered); None before the first."""
        return self._level

    @property
    def health(self) -> SensorState:
        """The last health emitted (or remembered)."""
        return self._health

    @property
    def pending(self) -> int | None:
        """The candidate level still settling; None when there is none. Persist it when it
        changes (as :attr:`SensorMemory.pending`) so a restart does not lose the change."""
        return self._candidate

    def pause(self) -> None:
        """Stop reporting silence until :meth:`resume`: readings are not reaching us, so
        their absence says nothing about the sensor. Every other rule still applies."""
        self._paused = True

    def resume(self, now: float) -> None:
        """End a pause (if any) and count silence from ``now``."""
        self._paused = False
        self._heard_at = now

    def observe(self, value: float, now: float) -> list[StockChange | HealthChange]:
        """Take one reading (grams for a weight sensor, units for a count sensor)."""
        self._heard_at = now
        verdict = self._classify(value)
        self._window.append((now, isinstance(verdict, str)))
        events: list[StockChange | HealthChange] = []
        if isinstance(verdict, str):
            self._valid_since = None
            if self._spell_since is None:
                self._spell_since = now
            self._invalid_detail = verdict
        else:
            if self._valid_since is None:
                self._valid_since = now
            if self._health == "silent":
                events.append(self._set_health("ok", "readings resumed"))
            if verdict is None or verdict == self._level:
                self._candidate = None
            elif verdict != self._candidate:
                self._candidate = verdict
                self._candidate_since = now
        events += self._settle(now)
        return events

    def tick(self, now: float) -> list[StockChange | HealthChange]:
        """Let time pass without a reading: settle what has waited ``settle_s``, and report
        the sensor silent once nothing was read for ``silent_after_s`` (unless paused)."""
        events = self._settle(now)
        if not self._paused and self._health != "silent" and now - self._heard_at >= self._silent_after_s:
            self._candidate = None
            self._window.clear()
            self._spell_since = None
            self._valid_since = None
            events.append(self._set_health("silent", f"no reading for {self._silent_after_s:g} s"))
        return events

    def _settle(self, now: float) -> list[StockChange | HealthChange]:
        events: list[StockChange | HealthChange] = []
        window = self._window
        while len(window) > 1 and window[1][0] <= now - self._settle_s:
            window.popleft()
        if (
            self._spell_since is not None
            and self._valid_since is None
            and self._health != "invalid"
            and now - self._spell_since >= self._settle_s
            and 2 * sum(invalid for _, invalid in window) >= len(window)
        ):
            events.append(self._set_health("invalid", self._invalid_detail))
        if self._valid_since is not None and now - self._valid_since >= self._settle_s:
            self._spell_since = None
            if self._health == "invalid":
                events.append(self._set_health("ok", "readings valid again"))
        if self._candidate is not None and now - self._candidate_since >= self._settle_s:
            self._level = self._candidate
            self._candidate = None
            events.append(StockChange(self._cfg.sku, self._level))
        return events

    def _set_health(self, state: SensorState, detail: str) -> HealthChange:
        self._health = state
        return HealthChange(state, detail)

    def _classify(self, value: float) -> int | str | None:
        """Clear count (int), ambiguous (None) or invalid (str: why, for staff)."""
        cfg = self._cfg
        if not math.isfinite(value):
            return f"reading {value}"
        if cfg.kind == "count":
            if value < -_COUNT_EPSILON:
                return f"reading {_units(value)} is negative"
            count = round(value)
            if abs(value - count) > _COUNT_EPSILON:
                return f"reading {_units(value)} is not a whole number"
            if count > cfg.capacity:
                return f"reading {_units(value)} is beyond capacity {cfg.capacity}"
            return count
        assert cfg.unit_weight is not None  # config validation guarantees it for weight sensors
        units = (value - cfg.tare) / cfg.unit_weight
        if units < -cfg.tolerance:
            if value < 0:
                return f"reading {_grams(value)} g is negative"
            return f"reading {_grams(value)} g is below the empty shelf (tare {_grams(cfg.tare)} g)"
        if units > cfg.capacity + 0.5:
            return f"reading {_grams(value)} g is beyond capacity {cfg.capacity} units"
        count = round(units)
        return count if abs(units - count) <= cfg.tolerance else None


def _grams(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1e9 else f"{value:.4g}"


def _units(value: float) -> str:
    if abs(value) < 1e15 and abs(value - round(value)) <= _COUNT_EPSILON:
        return str(round(value))
    return f"{value:.6g}"
