"""Pure GPS rules (hub/domains/geo.py): distance, validation, filters, ETA, geofences."""

from __future__ import annotations

import math

import pytest

from hub.domains.geo import (
    AT_BOUTIQUE,
    AT_DOOR,
    EARTH_RADIUS_M,
    NEAR_CUSTOMER,
    FenceConfig,
    FilterConfig,
    Fix,
    FixFilter,
    distance_m,
    estimate_eta,
    fences_containing,
    smoothed_speed,
    speed_sample,
    validate_update,
)
from protocol.errors import ErrorCode, SokoError
from protocol.messages import LocationUpdate
from storage.base import LatLon

HOME: LatLon = (-1.2921, 36.8219)
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180
T0 = 1_700_000_000_000


def north(p: LatLon, metres: float) -> LatLon:
    """The point ``metres`` due north of ``p`` (exact on the sphere: along a meridian)."""
    return (p[0] + metres / METRES_PER_DEGREE, p[1])


def fix(p: LatLon, ts: int, *, accuracy: float = 5.0, speed: float | None = None) -> Fix:
    return Fix(lat=p[0], lon=p[1], accuracy=accuracy, speed=speed, heading=None, ts=ts)


# ---------------------------------------------------------------- distance


def test_distance_is_the_great_circle_distance() -> None:
    assert distance_m(HOME, HOME) == 0
    assert distance_m((0.0, 0.0), (1.0, 0.0)) == pytest.approx(111_195, abs=1)
    assert distance_m((0.0, 0.0), (0.0, 1.0)) == pytest.approx(111_195, abs=1)
    # Nairobi to Mombasa, about 440 km as the crow flies.
    assert distance_m(HOME, (-4.0435, 39.6682)) == pytest.approx(440_000, rel=0.01)
    a, b = HOME, (HOME[0] + 0.01, HOME[1] + 0.02)
    assert distance_m(a, b) == pytest.approx(distance_m(b, a))
    assert distance_m(HOME, north(HOME, 250)) == pytest.approx(250, abs=1e-6)


# ---------------------------------------------------------------- filters

FILTER = FixFilter(FilterConfig())
"""Defaults: accuracy 100 m, distance 5 m, period 0.8 s, speed 250 km/h, heartbeat 30 s."""


def test_default_filter_config_matches_the_documented_settings() -> None:
    assert FilterConfig() == FilterConfig(
        max_accuracy_m=100, min_distance_m=5, min_period_s=0.8, max_speed_kmh=250, heartbeat_s=30
    )


def test_first_fix_is_kept_unless_inaccurate() -> None:
    assert FILTER.decide(None, fix(HOME, T0)).kept
    assert FILTER.decide(None, fix(HOME, T0, accuracy=100)).kept
    dropped = FILTER.decide(None, fix(HOME, T0, accuracy=100.5))
    assert (dropped.kept, dropped.reason) == (False, "accuracy")


def test_a_normal_move_is_kept() -> None:
    decision = FILTER.decide(fix(HOME, T0), fix(north(HOME, 10), T0 + 1000))
    assert (decision.kept, decision.reason) == (True, None)


@pytest.mark.parametrize("dt_ms", [0, -1, -60_000])
def test_a_fix_not_newer_than_the_last_kept_is_outdated(dt_ms: int) -> None:
    decision = FILTER.decide(fix(HOME, T0), fix(north(HOME, 50), T0 + dt_ms))
    assert (decision.kept, decision.reason) == (False, "outdated")


def test_an_impossible_speed_is_dropped() -> None:
    # 1 km in 10 s is 360 km/h; 600 m in 10 s is 216 km/h.
    assert FILTER.decide(fix(HOME, T0), fix(north(HOME, 1000), T0 + 10_000)).reason == "speed"
    assert FILTER.decide(fix(HOME, T0), fix(north(HOME, 600), T0 + 10_000)).kept


def test_a_fix_sooner_than_the_min_period_is_dropped() -> None:
    decision = FILTER.decide(fix(HOME, T0), fix(north(HOME, 10), T0 + 500))
    assert (decision.kept, decision.reason) == (False, "period")
    # A 1 Hz device whose clock jitters by 150 ms is not thinned.
    assert FILTER.decide(fix(HOME, T0), fix(north(HOME, 10), T0 + 850)).kept


def test_a_fix_closer_than_the_min_distance_is_dropped() -> None:
    decision = FILTER.decide(fix(HOME, T0), fix(north(HOME, 4), T0 + 2000))
    assert (decision.kept, decision.reason) == (False, "distance")
    assert FILTER.decide(fix(HOME, T0), fix(north(HOME, 6), T0 + 2000)).kept


def test_a_heartbeat_fix_overrides_the_period_and_distance_filters() -> None:
    assert FILTER.decide(fix(HOME, T0), fix(HOME, T0 + 29_900)).reason == "distance"
    assert FILTER.decide(fix(HOME, T0), fix(HOME, T0 + 30_000)).kept
    heartbeat_only = FixFilter(FilterConfig(min_period_s=60, heartbeat_s=30))
    assert heartbeat_only.decide(fix(HOME, T0), fix(north(HOME, 10), T0 + 20_000)).reason == "period"
    assert heartbeat_only.decide(fix(HOME, T0), fix(north(HOME, 10), T0 + 30_000)).kept


def test_a_heartbeat_fix_still_meets_the_accuracy_and_speed_filters() -> None:
    late = T0 + 60_000
    assert FILTER.decide(fix(HOME, T0), fix(HOME, late, accuracy=500)).reason == "accuracy"
    # 5 km in 60 s is 300 km/h.
    assert FILTER.decide(fix(HOME, T0), fix(north(HOME, 5000), late)).reason == "speed"


def test_filters_apply_in_order_accuracy_outdated_speed_period_distance() -> None:
    last = fix(HOME, T0)
    assert FILTER.decide(last, fix(north(HOME, 9000), T0, accuracy=500)).reason == "accuracy"
    assert FILTER.decide(last, fix(north(HOME, 9000), T0)).reason == "outdated"
    assert FILTER.decide(last, fix(north(HOME, 9000), T0 + 100)).reason == "speed"
    assert FILTER.decide(last, fix(north(HOME, 1), T0 + 100)).reason == "period"


# ---------------------------------------------------------------- validation

NOW = T0


def update(**changes: object) -> LocationUpdate:
    values: dict[str, object] = {
        "lat": HOME[0],
        "lon": HOME[1],
        "accuracy": 8.0,
        "speed": 4.0,
        "heading": 90.0,
    }
    values["ts"] = NOW
    values.update(changes)
    return LocationUpdate(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lat", 90.0001),
        ("lat", -91.0),
        ("lat", math.nan),
        ("lat", math.inf),
        ("lon", 180.5),
        ("lon", -181.0),
        ("lon", math.nan),
        ("accuracy", -1.0),
        ("accuracy", math.nan),
        ("accuracy", math.inf),
        ("speed", -0.1),
        ("speed", math.nan),
        ("speed", math.inf),
        ("heading", 360.0),
        ("heading", -0.5),
        ("heading", math.nan),
    ],
)
def test_invalid_position_names_the_field(field: str, value: float) -> None:
    with pytest.raises(SokoError) as caught:
        validate_update(update(**{field: value}), NOW, 10)
    assert caught.value.code is ErrorCode.INVALID_POSITION
    assert caught.value.message.startswith(f"{field} must be ")


def test_valid_edges_pass_and_become_a_fix() -> None:
    edge = update(lat=-90.0, lon=180.0, accuracy=0.0, speed=0.0, heading=0.0)
    assert validate_update(edge, NOW, 10) == Fix(
        lat=-90.0, lon=180.0, accuracy=0.0, speed=0.0, heading=0.0, ts=NOW
    )
    assert validate_update(update(heading=359.99, speed=None), NOW, 10).heading == 359.99
    assert validate_update(update(heading=None, speed=None), NOW, 10).speed is None


def test_a_timestamp_beyond_the_allowed_skew_is_refused() -> None:
    assert validate_update(update(ts=NOW + 10_000), NOW, 10).ts == NOW + 10_000
    assert validate_update(update(ts=NOW - 3_600_000), NOW, 10).ts == NOW - 3_600_000
    with pytest.raises(SokoError) as caught:
        validate_update(update(ts=NOW + 10_001), NOW, 10)
    assert caught.value.code is ErrorCode.FUTURE_TIMESTAMP
    assert caught.value.message.startswith("ts is 10.0 s ahead")


# ---------------------------------------------------------------- speed and ETA


def test_speed_sample_prefers_the_reported_speed_else_derives_it() -> None:
    last = fix(HOME, T0)
    assert speed_sample(last, fix(north(HOME, 10), T0 + 2000, speed=7.5)) == 7.5
    assert speed_sample(last, fix(north(HOME, 10), T0 + 2000)) == pytest.approx(5.0)
    assert speed_sample(None, fix(HOME, T0)) is None
    assert speed_sample(None, fix(HOME, T0, speed=3.0)) == 3.0


def test_smoothed_speed_is_an_exponentially_weighted_average() -> None:
    assert smoothed_speed(None, 10.0) == 10.0
    assert smoothed_speed(10.0, 20.0) == pytest.approx(13.0)
    assert smoothed_speed(10.0, 20.0, weight=0.5) == pytest.approx(15.0)
    assert smoothed_speed(10.0, None) == 10.0
    assert smoothed_speed(None, None) is None


DROPOFF = north(HOME, 3000)


def test_eta_after_pickup_goes_straight_to_the_door_with_the_detour_factor() -> None:
    eta = estimate_eta(north(DROPOFF, -1000), pickup=HOME, dropoff=DROPOFF, via_pickup=False, speed_mps=10.0)
    assert (eta.distance_m, eta.seconds, eta.speed_mps) == (1300, 130, 10.0)


def test_eta_before_pickup_goes_via_the_pickup() -> None:
    # The driver is 1 km north of the boutique, 2 km short of the door: 1 km back, then 3 km.
    here = north(HOME, 1000)
    eta = estimate_eta(here, pickup=HOME, dropoff=DROPOFF, via_pickup=True, speed_mps=10.0)
    assert (eta.distance_m, eta.seconds) == (5200, 520)
    direct = estimate_eta(here, pickup=HOME, dropoff=DROPOFF, via_pickup=False, speed_mps=10.0)
    assert (direct.distance_m, direct.seconds) == (2600, 260)
    unknown_pickup = estimate_eta(here, pickup=None, dropoff=DROPOFF, via_pickup=True, speed_mps=10.0)
    assert unknown_pickup.distance_m == 2600


@pytest.mark.parametrize("speed", [None, 0.0, 1.0, 2.999])
def test_eta_speed_never_goes_below_the_floor(speed: float | None) -> None:
    eta = estimate_eta(north(DROPOFF, -300), pickup=None, dropoff=DROPOFF, via_pickup=False, speed_mps=speed)
    assert (eta.speed_mps, eta.distance_m, eta.seconds) == (3.0, 390, 130)
    floor = estimate_eta(
        north(DROPOFF, -300), pickup=None, dropoff=DROPOFF, via_pickup=False, speed_mps=speed, floor_mps=6.5
    )
    assert (floor.speed_mps, floor.seconds) == (6.5, 60)


# ---------------------------------------------------------------- geofences

FENCES = FenceConfig()


def inside(here: LatLon, *, pickup: LatLon | None = HOME, dropoff: LatLon | None = DROPOFF) -> frozenset[str]:
    return fences_containing(here, pickup=pickup, dropoff=dropoff, config=FENCES)


def test_default_radii() -> None:
    assert FenceConfig() == FenceConfig(at_boutique_m=100, near_customer_m=500, at_door_m=50)


def test_at_boutique_within_the_pickup_radius() -> None:
    assert inside(north(HOME, 99)) == {AT_BOUTIQUE}
    assert inside(north(HOME, 101)) == frozenset()
    assert inside(HOME, pickup=None) == frozenset()


def test_near_customer_and_at_door_around_the_dropoff() -> None:
    assert inside(north(DROPOFF, 501)) == frozenset()
    assert inside(north(DROPOFF, -499)) == {NEAR_CUSTOMER}
    assert inside(north(DROPOFF, 49)) == {NEAR_CUSTOMER, AT_DOOR}
    assert inside(DROPOFF, dropoff=None) == frozenset()


def test_overlapping_fences_are_all_reported_and_radii_are_configurable() -> None:
    near = (HOME[0], HOME[1] + 0.0001)  # about 11 m east of the boutique
    assert inside(HOME, dropoff=near) == {AT_BOUTIQUE, NEAR_CUSTOMER, AT_DOOR}
    tight = FenceConfig(at_boutique_m=10, near_customer_m=20, at_door_m=5)
    assert fences_containing(near, pickup=HOME, dropoff=HOME, config=tight) == {NEAR_CUSTOMER}
