"""edge.sensors: readings to debounced stock levels and health, on a deterministic clock.

The tracker is fed the way the gateway feeds it: readings as they arrive, and ``tick`` every
``tick_s`` in between. Times are plain numbers, so every assertion is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest

from edge.config import SensorConfig, SmoothingConfig
from edge.sensors import (
    MAX_READING_BYTES,
    HealthChange,
    ReadingError,
    SensorMemory,
    ShelfTracker,
    StockChange,
    parse_reading,
)

SETTLE = 2.0
SILENT = 60.0
TICK = 0.25
SMOOTHING = SmoothingConfig(settle_s=SETTLE, silent_after_s=SILENT, tick_s=TICK)
TARE = 1000.0
UNIT = 250.0
WEIGHT = SensorConfig(
    shelf="A1", sensor="w1", sku="tea", kind="weight", capacity=12, unit_weight=UNIT, tare=TARE, tolerance=0.2
)
COUNT = SensorConfig(shelf="B1", sensor="c1", sku="honey", kind="count", capacity=12)

Event = StockChange | HealthChange
Readings = list[tuple[float, float]]
"""(time, value) pairs."""
Timed = tuple[float, Event]


def grams(units: float) -> float:
    """What the WEIGHT scale reads with ``units`` items on it."""
    return TARE + UNIT * units


def tracker(
    cfg: SensorConfig = WEIGHT,
    level: int | None = 5,
    health: str = "ok",
    smoothing: SmoothingConfig = SMOOTHING,
    memory_pending: int | None = None,
) -> ShelfTracker:
    memory = SensorMemory(level=level, health=health, pending=memory_pending)
    return ShelfTracker(cfg, smoothing, memory, now=0.0)


def every(start: float, end: float, value: float | Iterable[float], step: float = 0.25) -> Readings:
    """Readings from ``start`` (inclusive) to ``end`` (exclusive) every ``step`` s; an iterable
    ``value`` is cycled (jitter patterns). Times are multiples of 1/4 s, exact in binary."""
    values = [value] if isinstance(value, int | float) else list(value)
    n = round((end - start) / step)
    return [(start + i * step, values[i % len(values)]) for i in range(n)]


def drive(t: ShelfTracker, readings: Readings, until: float, start: float = 0.0) -> list[Timed]:
    """Feed ``readings`` in time order with a tick every TICK s from ``start`` to ``until``;
    every event with its time."""
    ticks = [(start + k * TICK, 1, math.nan) for k in range(round((until - start) / TICK) + 1)]
    steps = sorted([(at, 0, value) for at, value in readings] + ticks)
    out: list[Timed] = []
    for at, is_tick, value in steps:
        events = t.tick(at) if is_tick else t.observe(value, at)
        out += [(at, e) for e in events]
    return out


def events(timed: list[Timed]) -> list[Event]:
    return [e for _, e in timed]


def stock(timed: list[Timed]) -> list[Timed]:
    return [(at, e) for at, e in timed if isinstance(e, StockChange)]


# --- stock levels -----------------------------------------------------------------------------


def test_first_settled_level_is_emitted_once_when_memory_has_none() -> None:
    t = tracker(level=None)
    out = drive(t, every(0.0, 10.0, grams(5)), until=10.0)
    assert out == [(SETTLE, StockChange("tea", 5))]
    assert t.level == 5


def test_a_single_reading_settles_by_tick() -> None:
    """Sensors that publish only on change: the last reading stands, and tick settles it."""
    t = tracker(level=None)
    out = drive(t, [(0.1, grams(3))], until=5.0)
    assert out == [(2.25, StockChange("tea", 3))]


def test_restart_at_the_remembered_level_sends_nothing() -> None:
    assert drive(tracker(level=5), every(0.0, 20.0, grams(5)), until=20.0) == []


def test_jitter_around_a_level_changes_nothing() -> None:
    # Within the band (|r - 5| <= 0.2), between bands (ambiguous), and one stray reading that
    # is clear at 6 but does not last.
    jitter = [grams(u) for u in (5.0, 5.15, 4.82, 5.19, 5.35, 4.6, 5.05, 5.9, 4.95, 5.1)]
    assert drive(tracker(level=5), every(0.0, 60.0, jitter), until=60.0) == []


def test_taking_two_items_gives_exactly_one_change_after_settle() -> None:
    motion = [grams(u) for u in (4.6, 3.7, 3.4)]  # lifting: in between counts
    readings = [*every(0.0, 5.0, grams(5)), (5.0, motion[0]), (5.25, motion[1]), (5.5, motion[2])]
    readings += every(5.75, 20.0, [grams(3), grams(3.1), grams(2.9)])
    out = drive(tracker(level=5), readings, until=20.0)
    assert out == [(5.75 + SETTLE, StockChange("tea", 3))]


def test_hand_resting_shorter_than_settle_gives_nothing() -> None:
    # A hand adds ~1.7 units of weight, then presses a clear 7 for 1.75 s, then lets go.
    readings = every(0.0, 5.0, grams(5)) + every(5.0, 5.5, grams(6.7))
    readings += every(5.5, 7.25, grams(7.0)) + every(7.25, 20.0, grams(5))
    assert drive(tracker(level=5), readings, until=20.0) == []


def test_hand_resting_longer_than_settle_gives_one_change_and_one_back() -> None:
    hand = [grams(u) for u in (6.9, 7.05, 7.15, 6.95)]
    readings = every(0.0, 5.0, grams(5)) + every(5.0, 15.0, hand) + every(15.0, 30.0, grams(5))
    out = drive(tracker(level=5), readings, until=30.0)
    assert out == [(5.0 + SETTLE, StockChange("tea", 7)), (15.0 + SETTLE, StockChange("tea", 5))]


def test_a_reading_back_at_the_level_cancels_the_candidate() -> None:
    readings = [*every(0.0, 1.75, grams(3)), (1.75, grams(5)), *every(2.0, 3.0, grams(3))]
    out = drive(tracker(level=5), readings, until=6.0)
    assert out == [(2.0 + SETTLE, StockChange("tea", 3))]


def test_an_ambiguous_reading_restarts_the_wait() -> None:
    readings = [*every(0.0, 1.75, grams(3)), (1.75, grams(3.5)), *every(2.0, 10.0, grams(3))]
    out = drive(tracker(level=5), readings, until=10.0)
    assert out == [(2.0 + SETTLE, StockChange("tea", 3))]


@pytest.mark.parametrize(
    "garbage", [math.nan, grams(-2), grams(13)], ids=["nan", "negative", "beyond-capacity"]
)
def test_a_lone_invalid_reading_neither_cancels_nor_restarts_the_wait(garbage: float) -> None:
    t = tracker(level=5)
    assert t.observe(grams(3), 0.0) == []
    assert (t.observe(garbage, 1.0), t.pending) == ([], 3)
    readings = [(1.25, grams(3)), (1.5, garbage), *every(1.75, 10.0, grams(3))]
    assert drive(t, readings, until=10.0) == [(SETTLE, StockChange("tea", 3))]
    assert t.health == "ok"


def test_pending_is_the_candidate_while_it_settles() -> None:
    t = tracker(level=5)
    assert t.pending is None
    t.observe(grams(3), 0.0)
    assert t.pending == 3
    t.observe(grams(2), 0.5)
    assert t.pending == 2
    t.observe(grams(2.5), 1.0)
    assert t.pending is None
    t.observe(grams(4), 1.25)
    assert t.tick(3.25) == [StockChange("tea", 4)]
    assert (t.level, t.pending) == (4, None)


def test_a_change_to_another_count_restarts_the_wait() -> None:
    readings = every(0.0, 1.75, grams(3)) + every(1.75, 10.0, grams(2))
    out = drive(tracker(level=5), readings, until=10.0)
    assert out == [(1.75 + SETTLE, StockChange("tea", 2))]


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (-0.2, StockChange("tea", 0)),
        (-0.21, HealthChange("invalid", "reading 947.5 g is below the empty shelf (tare 1000.0 g)")),
        (4.81, StockChange("tea", 5)),
        (4.79, None),
        (5.5, None),
        (12.2, StockChange("tea", 12)),
        (12.5, None),
        (12.51, HealthChange("invalid", "reading 4127.5 g is beyond capacity 12 units")),
        (-4.2, HealthChange("invalid", "reading -50.0 g is negative")),
    ],
)
def test_weight_bands(units: float, expected: Event | None) -> None:
    """With settle_s = 0 each reading's verdict shows at once: clear, ambiguous (nothing), invalid."""
    t = tracker(level=None, smoothing=SmoothingConfig(settle_s=0.0))
    assert t.observe(grams(units), 1.0) == ([expected] if expected else [])


# --- health -----------------------------------------------------------------------------------


def test_nan_stream_raises_invalid_once_and_never_stock() -> None:
    t = tracker(level=5)
    out = drive(t, every(0.0, 30.0, math.nan), until=30.0)
    assert out == [(SETTLE, HealthChange("invalid", "reading nan"))]
    assert (t.level, t.health) == (5, "invalid")


def test_recovery_from_invalid_gives_one_ok_after_settle() -> None:
    t = tracker(level=5)
    readings = every(0.0, 10.0, math.nan) + every(10.0, 30.0, [grams(5), grams(5.1)])
    out = drive(t, readings, until=30.0)
    assert out == [
        (SETTLE, HealthChange("invalid", "reading nan")),
        (10.0 + SETTLE, HealthChange("ok", "readings valid again")),
    ]
    assert t.health == "ok"


def test_recovery_on_another_count_reports_ok_then_the_level() -> None:
    readings = every(0.0, 10.0, math.nan) + every(10.0, 20.0, grams(2))
    out = drive(tracker(level=5), readings, until=20.0)
    assert out == [
        (SETTLE, HealthChange("invalid", "reading nan")),
        (12.0, HealthChange("ok", "readings valid again")),
        (12.0, StockChange("tea", 2)),
    ]


def test_a_brief_burst_of_nonsense_raises_nothing() -> None:
    readings = every(0.0, 5.0, grams(5)) + every(5.0, 6.75, -120.0) + every(6.75, 20.0, grams(5))
    assert drive(tracker(level=5), readings, until=20.0) == []


def test_flaky_sensor_stays_invalid_until_valid_for_settle() -> None:
    """Valid runs of 1 s between invalid ones never reach settle_s, so no ok; the valid
    readings all say 4, and garbage does not cancel them, so the level moves once."""
    pattern = every(0.0, 3.0, math.inf)
    for start in range(3, 30, 2):
        pattern += every(start, start + 1.0, grams(4)) + every(start + 1.0, start + 2.0, math.inf)
    out = drive(tracker(level=5), pattern, until=30.0)
    assert out == [(SETTLE, HealthChange("invalid", "reading inf")), (3.0 + SETTLE, StockChange("tea", 4))]


@pytest.mark.parametrize(
    ("cfg", "three", "sku"), [(WEIGHT, grams(3), "tea"), (COUNT, 3.0, "honey")], ids=["weight", "count"]
)
def test_alternating_garbage_and_valid_readings_is_invalid_and_the_valid_ones_count(
    cfg: SensorConfig, three: float, sku: str
) -> None:
    """Ten minutes of NaN, 3, NaN, 3...: half the readings are garbage, so one invalid at
    settle_s; the valid ones agree on 3 for settle_s, so the level moves once, to 3."""
    t = tracker(cfg, level=5)
    out = drive(t, every(0.0, 600.0, [math.nan, three]), until=600.0)
    assert out == [(SETTLE, HealthChange("invalid", "reading nan")), (0.25 + SETTLE, StockChange(sku, 3))]
    assert (t.level, t.health, t.pending) == (3, "invalid", None)


def test_half_garbage_at_uneven_times_is_invalid() -> None:
    # NaN at whole seconds, a valid reading 0.125 s after each: the valid one stands 7/8 of the time.
    readings = [(k + d, v) for k in range(60) for d, v in ((0.0, math.nan), (0.125, grams(5)))]
    out = drive(tracker(level=5), readings, until=60.0)
    assert out == [(SETTLE, HealthChange("invalid", "reading nan"))]


def test_garbage_in_a_third_of_the_readings_is_tolerated() -> None:
    """Fewer than half invalid: no alert, and the valid readings still move the level."""
    t = tracker(level=5)
    out = drive(t, every(0.0, 600.0, [grams(3), grams(3), math.nan]), until=600.0)
    assert out == [(SETTLE, StockChange("tea", 3))]
    assert t.health == "ok"


def test_short_bursts_that_keep_coming_back_are_one_spell() -> None:
    # 1.5 s of nonsense, 0.5 s valid, nonsense again: the spell began at 0 and did not close.
    readings = every(0.0, 1.5, -1.0) + every(1.5, 2.0, grams(5)) + every(2.0, 3.5, -1.0)
    readings += every(3.5, 10.0, grams(5))
    out = drive(tracker(level=5), readings, until=10.0)
    assert out == [
        (SETTLE, HealthChange("invalid", "reading -1.0 g is negative")),
        (3.5 + SETTLE, HealthChange("ok", "readings valid again")),
    ]


def test_a_burst_after_a_closed_spell_starts_a_new_one() -> None:
    # Two 1.5 s bursts with more than settle_s of valid readings between them: each is brief.
    readings = every(0.0, 1.5, -1.0) + every(1.5, 4.0, grams(5)) + every(4.0, 5.5, -1.0)
    readings += every(5.5, 10.0, grams(5))
    assert drive(tracker(level=5), readings, until=10.0) == []


def test_hand_on_a_full_shelf_is_not_a_broken_sensor_unless_it_persists() -> None:
    pressed = grams(12.9)
    brief = every(0.0, 3.0, grams(12)) + every(3.0, 4.5, pressed) + every(4.5, 10.0, grams(12))
    assert drive(tracker(level=12), brief, until=10.0) == []

    long = every(0.0, 3.0, grams(12)) + every(3.0, 10.0, pressed) + every(10.0, 20.0, grams(12))
    out = drive(tracker(level=12), long, until=20.0)
    assert out == [
        (3.0 + SETTLE, HealthChange("invalid", "reading 4225.0 g is beyond capacity 12 units")),
        (10.0 + SETTLE, HealthChange("ok", "readings valid again")),
    ]


def test_silence_raises_silent_once_then_ok_on_the_next_reading() -> None:
    t = tracker(level=5)
    out = drive(t, every(0.0, 10.0, grams(5)), until=100.0)
    last_reading = 9.75
    assert out == [(last_reading + SILENT, HealthChange("silent", "no reading for 60 s"))]
    assert (t.level, t.health) == (5, "silent")
    assert t.observe(grams(5), 100.1) == [HealthChange("ok", "readings resumed")]
    assert (t.level, t.health) == (5, "ok")


def test_silence_is_measured_from_construction_when_nothing_arrives() -> None:
    t = ShelfTracker(WEIGHT, SMOOTHING, SensorMemory(level=5), now=1000.0)
    assert t.tick(1059.9) == []
    assert t.tick(1060.0) == [HealthChange("silent", "no reading for 60 s")]
    assert t.tick(1200.0) == []


def test_paused_tracker_reports_no_silence_and_resume_restarts_the_timer() -> None:
    t = tracker(level=5)
    assert t.observe(grams(5), 0.0) == []
    t.pause()
    assert [e for k in range(2000) for e in t.tick(k * TICK)] == []
    t.resume(500.0)
    assert t.tick(500.0 + SILENT - TICK) == []
    assert t.tick(500.0 + SILENT) == [HealthChange("silent", "no reading for 60 s")]


def test_pause_still_settles_a_pending_change() -> None:
    t = tracker(level=5)
    t.observe(grams(3), 0.0)
    t.pause()
    assert t.tick(SETTLE) == [StockChange("tea", 3)]


def test_an_ambiguous_reading_ends_silence() -> None:
    t = tracker(level=5, health="silent")
    assert t.observe(grams(5.5), 1.0) == [HealthChange("ok", "readings resumed")]


def test_invalid_readings_after_silence_raise_invalid_once() -> None:
    t = tracker(level=5, health="silent")
    out = drive(t, every(1.0, 10.0, -1.0), until=10.0)
    assert out == [(1.0 + SETTLE, HealthChange("invalid", "reading -1.0 g is negative"))]


def test_restart_does_not_re_raise_a_remembered_alert() -> None:
    still_invalid = drive(tracker(level=5, health="invalid"), every(0.0, 30.0, math.nan), until=30.0)
    assert still_invalid == []
    still_silent = drive(tracker(level=5, health="silent"), [], until=200.0)
    assert still_silent == []


def test_a_remembered_pending_change_settles_settle_s_after_restart() -> None:
    t = ShelfTracker(WEIGHT, SMOOTHING, SensorMemory(level=5, pending=3), now=100.0)
    assert t.pending == 3
    assert t.tick(100.0 + SETTLE - TICK) == []
    assert t.tick(100.0 + SETTLE) == [StockChange("tea", 3)]
    assert (t.level, t.pending) == (3, None)


def test_agreeing_readings_after_restart_do_not_restart_the_wait() -> None:
    t = ShelfTracker(WEIGHT, SMOOTHING, SensorMemory(level=None, pending=3), now=100.0)
    assert t.observe(grams(3), 101.0) == []
    assert t.observe(grams(3), 102.0) == [StockChange("tea", 3)]


@pytest.mark.parametrize(
    ("reading", "outcome"),
    [(grams(5), []), (grams(4.5), []), (grams(2), [(101.0 + SETTLE, StockChange("tea", 2))])],
    ids=["back-at-level", "ambiguous", "another-count"],
)
def test_readings_after_restart_drop_or_replace_a_remembered_pending(
    reading: float, outcome: list[Timed]
) -> None:
    t = ShelfTracker(WEIGHT, SMOOTHING, SensorMemory(level=5, pending=3), now=100.0)
    assert drive(t, [(101.0, reading)], until=110.0, start=100.0) == outcome


@pytest.mark.parametrize("pending", [5, 13, -1], ids=["at-level", "beyond-capacity", "negative"])
def test_a_remembered_pending_that_cannot_be_a_change_is_discarded(pending: int) -> None:
    t = tracker(level=5, memory_pending=pending)
    assert t.pending is None
    assert drive(t, every(0.0, 10.0, grams(5)), until=10.0) == []


def test_memory_with_unknown_health_is_refused() -> None:
    with pytest.raises(ValueError, match="broken"):
        tracker(health="broken")


# --- count sensors ----------------------------------------------------------------------------


def test_count_sensor_passes_whole_numbers_through_debounced() -> None:
    t = tracker(COUNT, level=None)
    readings = every(0.0, 5.0, 7.0) + every(5.0, 6.0, 6.0000001) + every(6.0, 12.0, 6.0)
    out = drive(t, readings, until=12.0)
    assert out == [(SETTLE, StockChange("honey", 7)), (5.0 + SETTLE, StockChange("honey", 6))]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (2.5, "reading 2.5 is not a whole number"),
        (-1.0, "reading -1 is negative"),
        (13.0, "reading 13 is beyond capacity 12"),
        (math.nan, "reading nan"),
        (-math.inf, "reading -inf"),
    ],
)
def test_count_sensor_nonsense(value: float, detail: str) -> None:
    t = tracker(COUNT, level=4)
    out = drive(t, every(0.0, 10.0, value), until=10.0)
    assert out == [(SETTLE, HealthChange("invalid", detail))]
    assert t.level == 4


def test_count_sensor_at_capacity_and_zero_is_valid() -> None:
    t = tracker(COUNT, level=4, smoothing=SmoothingConfig(settle_s=0.0))
    assert t.observe(12.0, 1.0) == [StockChange("honey", 12)]
    assert t.observe(-0.0000001, 2.0) == [StockChange("honey", 0)]


# --- parse_reading ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"12.5", 12.5),
        (b" 12.5\n", 12.5),
        (b"-3", -3.0),
        (b"1e3", 1000.0),
        (b".5", 0.5),
        (b'"12.5"', 12.5),
        (b'{"value": 12.5, "ts": 1700000000}', 12.5),
        (b'{"value": 7}', 7.0),
        (b'{"value": " 8.25 "}', 8.25),
        (b"inf", math.inf),
        (b"-Infinity", -math.inf),
    ],
)
def test_parse_reading_numbers(payload: bytes, value: float) -> None:
    assert parse_reading(payload) == value


@pytest.mark.parametrize("payload", [b"nan", b"NaN", b'"nan"', b'{"value": NaN}'])
def test_parse_reading_nan(payload: bytes) -> None:
    assert math.isnan(parse_reading(payload))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"abc",
        b"12 g",
        b"1_000",
        b"0x10",
        b"true",
        b"null",
        b"[1]",
        b"{",
        b'{"v": 1}',
        b'{"value": true}',
        b'{"value": null}',
        b'{"value": "12 g"}',
        b'"',
        b"\xff\xfe",
        b"1" * (MAX_READING_BYTES + 1),
    ],
)
def test_parse_reading_garbage(payload: bytes) -> None:
    with pytest.raises(ReadingError):
        parse_reading(payload)
