"""Pure GPS arithmetic: distances, fix validation, Traccar-style filtering, ETA and geofences.

Nothing here does I/O or keeps state between calls; :mod:`hub.domains.location`
holds the per-driver state and feeds it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from protocol.errors import ErrorCode, SokoError
from protocol.messages import Eta, LocationUpdate
from storage.base import LatLon

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), the sphere every distance here is measured on."""
DETOUR_FACTOR = 1.3
"""Road distance over great-circle distance assumed by the ETA (a common urban average)."""
ETA_FLOOR_MPS = 3.0
"""Slowest speed an ETA assumes (about 10.8 km/h), so a driver waiting at a light is not 'hours away'."""
SPEED_SMOOTHING = 0.3
"""Weight of the newest speed sample in the exponentially weighted average."""

AT_BOUTIQUE = "at_boutique"
NEAR_CUSTOMER = "near_customer"
AT_DOOR = "at_door"


class Fix(msgspec.Struct, frozen=True, kw_only=True):
    """One validated GPS fix: degrees, metres, m/s, degrees clockwise from north, device ms."""

    lat: float
    lon: float
    accuracy: float
    speed: float | None
    heading: float | None
    ts: int


def distance_m(a: LatLon, b: LatLon) -> float:
    """Great-circle (haversine) distance between two ``(lat, lon)`` points, in metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _bad(field: str, rule: str, value: float) -> SokoError:
    return SokoError(ErrorCode.INVALID_POSITION, f"{field} must be {rule}, got {value!r}")


def validate_update(update: LocationUpdate, now_ms: int, future_skew_s: float) -> Fix:
    """Check a reported fix and return it as a :class:`Fix`.

    Raises:
        SokoError: INVALID_POSITION naming the field when ``lat`` is not finite in [-90, 90],
            ``lon`` not finite in [-180, 180], ``accuracy`` not finite and >= 0, ``speed``
            (when given) not finite and >= 0, or ``heading`` (when given) not finite in
            [0, 360); FUTURE_TIMESTAMP when ``ts`` is more than ``future_skew_s`` seconds
            ahead of ``now_ms``.
    """
    if not (math.isfinite(update.lat) and -90 <= update.lat <= 90):
        raise _bad("lat", "a finite number in [-90, 90]", update.lat)
    if not (math.isfinite(update.lon) and -180 <= update.lon <= 180):
        raise _bad("lon", "a finite number in [-180, 180]", update.lon)
    if not (math.isfinite(update.accuracy) and update.accuracy >= 0):
        raise _bad("accuracy", "a finite number of metres >= 0", update.accuracy)
    if update.speed is not None and not (math.isfinite(update.speed) and update.speed >= 0):
        raise _bad("speed", "a finite number of m/s >= 0", update.speed)
    if update.heading is not None and not (math.isfinite(update.heading) and 0 <= update.heading < 360):
        raise _bad("heading", "a finite number of degrees in [0, 360)", update.heading)
    ahead_ms = update.ts - now_ms
    if ahead_ms > future_skew_s * 1000:
        raise SokoError(
            ErrorCode.FUTURE_TIMESTAMP,
            f"ts is {ahead_ms / 1000:.1f} s ahead of the hub's clock (at most {future_skew_s:g} s allowed)",
        )
    return Fix(
        lat=update.lat,
        lon=update.lon,
        accuracy=update.accuracy,
        speed=update.speed,
        heading=update.heading,
        ts=update.ts,
    )


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """Thresholds of :class:`FixFilter`; distances in metres, times in seconds."""

    max_accuracy_m: float = 100.0
    min_distance_m: float = 5.0
    min_period_s: float = 0.8
    max_speed_kmh: float = 250.0
    heartbeat_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to keep a fix; ``reason`` names the filter that dropped it."""

    kept: bool
    reason: str | None = None


KEEP = Decision(kept=True)


class FixFilter:
    """Decides, from the last KEPT fix, whether a new fix is worth keeping (after Traccar's filters).

    In order, a fix is dropped as: ``accuracy`` when its accuracy radius exceeds
    ``max_accuracy_m``; ``outdated`` when it is not newer than the last kept fix;
    ``speed`` when reaching it from the last kept fix implies more than ``max_speed_kmh``;
    ``period`` when it comes less than ``min_period_s`` after the last kept fix;
    ``distance`` when it lies less than ``min_distance_m`` from it. A fix at least
    ``heartbeat_s`` after the last kept one passes the period and distance filters
    anyway, so a parked driver still shows up as alive. The first fix of a driver
    meets only the accuracy filter.
    """

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    def decide(self, last: Fix | None, fix: Fix) -> Decision:
        c = self.config
        if fix.accuracy > c.max_accuracy_m:
            return Decision(kept=False, reason="accuracy")
        if last is None:
            return KEEP
        dt_s = (fix.ts - last.ts) / 1000
        if dt_s <= 0:
            return Decision(kept=False, reason="outdated")
        moved = distance_m((last.lat, last.lon), (fix.lat, fix.lon))
        if moved / dt_s * 3.6 > c.max_speed_kmh:
            return Decision(kept=False, reason="speed")
        if dt_s >= c.heartbeat_s:
            return KEEP
        if dt_s < c.min_period_s:
            return Decision(kept=False, reason="period")
        if moved < c.min_distance_m:
            return Decision(kept=False, reason="distance")
        return KEEP


def speed_sample(last: Fix | None, fix: Fix) -> float | None:
    """The speed a kept fix reports, else the one implied by the previous kept fix (m/s); None for a
    first fix without a reported speed."""
    if fix.speed is not None:
        return fix.speed
    if last is None or fix.ts <= last.ts:
        return None
    return distance_m((last.lat, last.lon), (fix.lat, fix.lon)) / ((fix.ts - last.ts) / 1000)


def smoothed_speed(
    previous: float | None, sample: float | None, weight: float = SPEED_SMOOTHING
) -> float | None:
    """The exponentially weighted average after ``sample``: ``weight * sample + (1 - weight) * previous``."""
    if sample is None:
        return previous
    if previous is None:
        return sample
    return weight * sample + (1 - weight) * previous


def estimate_eta(
    here: LatLon,
    *,
    pickup: LatLon | None,
    dropoff: LatLon,
    via_pickup: bool,
    speed_mps: float | None,
    floor_mps: float = ETA_FLOOR_MPS,
    detour: float = DETOUR_FACTOR,
) -> Eta:
    """Estimated arrival at ``dropoff``, as described on :class:`protocol.messages.Eta`.

    Remaining distance = great-circle distance ``here -> pickup -> dropoff`` while
    ``via_pickup`` (the order is not picked up yet) and a pickup is known, else
    ``here -> dropoff``, times ``detour``. Speed = ``speed_mps`` (the driver's
    exponentially weighted recent speed), never below ``floor_mps`` (also used when
    unknown). ``seconds`` and ``distance_m`` are rounded to whole units.
    """
    if via_pickup and pickup is not None:
        straight = distance_m(here, pickup) + distance_m(pickup, dropoff)
    else:
        straight = distance_m(here, dropoff)
    route = straight * detour
    speed = max(floor_mps, speed_mps or 0.0)
    return Eta(seconds=round(route / speed), distance_m=round(route), speed_mps=round(speed, 2))


@dataclass(frozen=True, slots=True)
class FenceConfig:
    """Geofence radii in metres: around the pickup, and two around the dropoff."""

    at_boutique_m: float = 100.0
    near_customer_m: float = 500.0
    at_door_m: float = 50.0


def fences_containing(
    here: LatLon, *, pickup: LatLon | None, dropoff: LatLon | None, config: FenceConfig
) -> frozenset[str]:
    """The fences (:data:`AT_BOUTIQUE`, :data:`NEAR_CUSTOMER`, :data:`AT_DOOR`) that contain ``here``;
    a fence whose centre is unknown contains nothing. Boundaries are inside."""
    inside: set[str] = set()
    if pickup is not None and distance_m(here, pickup) <= config.at_boutique_m:
        inside.add(AT_BOUTIQUE)
    if dropoff is not None:
        to_door = distance_m(here, dropoff)
        if to_door <= config.near_customer_m:
            inside.add(NEAR_CUSTOMER)
        if to_door <= config.at_door_m:
            inside.add(AT_DOOR)
    return frozenset(inside)
