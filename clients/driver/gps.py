"""Where the driver's position comes from: the phone's GPS (plyer) or a simulated route.

Kivy-free. A source is an async iterator of :class:`protocol.messages.LocationUpdate`
fixes, ready for ``engine.send_location``. ``ts`` is this device's clock in ms, as the
hub expects.

Routes are GPX 1.0/1.1 (track points, else route points) or GeoJSON (LineString or
MultiLineString geometries, bare or in Features and FeatureCollections, joined in
file order). :func:`load_route` raises :class:`RouteError` with the file name and the
reason for anything it cannot use.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from protocol.messages import LocationUpdate

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), as the hub's own distance math uses."""
SIMULATED_ACCURACY_M = 5.0
MAX_ROUTE_POINTS = 100_000
"""A route file with more points is refused rather than held in memory."""


class RouteError(ValueError):
    """A route file that cannot be used; the message names the file and what is wrong."""


class GpsUnavailableError(RuntimeError):
    """The platform has no GPS that plyer can read (any desktop), or the user refused access."""


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


def distance_m(a: Point, b: Point) -> float:
    """Great-circle (haversine) distance in metres."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(a: Point, b: Point) -> float:
    """Initial bearing from ``a`` to ``b``, degrees in [0, 360)."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dl = math.radians(b.lon - a.lon)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def load_route(path: Path) -> list[Point]:
    """Read a GPX or GeoJSON route: at least two points, in order.

    The format is chosen by suffix (``.gpx``; ``.geojson`` or ``.json``), else by the
    first character (``<`` or ``{``).

    Raises:
        RouteError: unreadable file, unknown format, malformed XML or JSON, a point out
            of range or not a number, fewer than two points, more than MAX_ROUTE_POINTS.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RouteError(f"{path}: cannot read the route file ({exc})") from None
    suffix = path.suffix.lower()
    head = text.lstrip()[:1]
    if suffix == ".gpx" or (suffix not in (".geojson", ".json") and head == "<"):
        points = _parse_gpx(path, text)
    elif suffix in (".geojson", ".json") or head == "{":
        points = _parse_geojson(path, text)
    else:
        raise RouteError(f"{path}: not a GPX (.gpx) or GeoJSON (.geojson) route")
    if len(points) < 2:
        raise RouteError(f"{path}: a route needs at least 2 points, found {len(points)}")
    return points


def _point(path: Path, where: str, lat: object, lon: object) -> Point:
    try:
        la, lo = float(lat), float(lon)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RouteError(f"{path}: {where}: lat/lon must be numbers, got {lat!r}, {lon!r}") from None
    if not (math.isfinite(la) and -90.0 <= la <= 90.0):
        raise RouteError(f"{path}: {where}: latitude {lat!r} is outside [-90, 90]")
    if not (math.isfinite(lo) and -180.0 <= lo <= 180.0):
        raise RouteError(f"{path}: {where}: longitude {lon!r} is outside [-180, 180]")
    return Point(la, lo)


def _parse_gpx(path: Path, text: str) -> list[Point]:
    try:
        # A local file the driver chose; the bundled expat refuses entity-expansion bombs.
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise RouteError(f"{path}: not valid GPX XML ({exc})") from None
    if _local(root.tag) != "gpx":
        raise RouteError(f"{path}: the root element is <{_local(root.tag)}>, not <gpx>")
    for kind in ("trkpt", "rtept"):
        nodes = [el for el in root.iter() if _local(el.tag) == kind]
        if nodes:
            _bound(path, len(nodes))
            return [
                _point(path, f"<{kind}> #{i}", el.get("lat"), el.get("lon")) for i, el in enumerate(nodes, 1)
            ]
    raise RouteError(f"{path}: the GPX file has no <trkpt> or <rtept> points")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_geojson(path: Path, text: str) -> list[Point]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RouteError(f"{path}: not valid JSON ({exc})") from None
    lines: list[Any] = []
    _collect_lines(path, doc, lines)
    if not lines:
        raise RouteError(f"{path}: the GeoJSON has no LineString or MultiLineString geometry")
    points: list[Point] = []
    for coords in lines:
        if not isinstance(coords, list):
            raise RouteError(f"{path}: a LineString's coordinates must be a list")
        _bound(path, len(points) + len(coords))
        for pos in coords:
            where = f"coordinate #{len(points) + 1}"
            if not isinstance(pos, list) or len(pos) < 2:
                raise RouteError(f"{path}: {where}: a position is [lon, lat], got {pos!r}")
            if isinstance(pos[0], bool) or isinstance(pos[1], bool):
                raise RouteError(f"{path}: {where}: lat/lon must be numbers, got {pos!r}")
            points.append(_point(path, where, pos[1], pos[0]))
    return points


def _collect_lines(path: Path, node: object, out: list[Any]) -> None:
    if not isinstance(node, dict):
        raise RouteError(f"{path}: expected a GeoJSON object, got {type(node).__name__}")
    kind = node.get("type")
    if kind == "FeatureCollection":
        features = node.get("features")
        if not isinstance(features, list):
            raise RouteError(f"{path}: a FeatureCollection needs a 'features' list")
        for feature in features:
            _collect_lines(path, feature, out)
    elif kind == "Feature":
        if node.get("geometry") is not None:
            _collect_lines(path, node["geometry"], out)
    elif kind == "GeometryCollection":
        for geometry in node.get("geometries") or []:
            _collect_lines(path, geometry, out)
    elif kind == "LineString":
        out.append(node.get("coordinates"))
    elif kind == "MultiLineString":
        coords = node.get("coordinates")
        if not isinstance(coords, list):
            raise RouteError(f"{path}: a MultiLineString's coordinates must be a list of lines")
        out.extend(coords)
    elif not isinstance(kind, str):
        raise RouteError(f"{path}: not GeoJSON (no 'type')")


def _bound(path: Path, n: int) -> None:
    if n > MAX_ROUTE_POINTS:
        raise RouteError(f"{path}: more than {MAX_ROUTE_POINTS} points")


class GpsSource(Protocol):
    """An endless (plyer) or finite (route) stream of fixes. ``fixes()`` may be iterated once."""

    description: str

    def fixes(self) -> AsyncIterator[LocationUpdate]: ...


class RouteSource:
    """Drives along a route at a constant ``speed_mps``, one fix every ``interval_s``.

    Positions are interpolated along the great circle between route points, so fixes are
    evenly spaced whatever the file's point density; ``speed`` and ``heading`` are set, and
    ``ts`` is the wall clock at emission. The iterator ends with the route's last point.
    """

    def __init__(
        self,
        route: Sequence[Point],
        *,
        speed_mps: float = 8.0,
        interval_s: float = 1.0,
        name: str = "route",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(route) < 2:
            raise ValueError("a route needs at least 2 points")
        if speed_mps <= 0 or interval_s <= 0:
            raise ValueError("speed and interval must be positive")
        self.route = list(route)
        self.speed_mps = speed_mps
        self.interval_s = interval_s
        self.description = f"simulated {name} at {speed_mps * 3.6:.0f} km/h"
        self._clock = clock

    def positions(self) -> list[tuple[Point, float]]:
        """Every (position, heading) the drive emits, in order; the last is the route's end."""
        step = self.speed_mps * self.interval_s
        out: list[tuple[Point, float]] = []
        carried = 0.0
        for a, b in zip(self.route, self.route[1:], strict=False):
            leg = distance_m(a, b)
            heading = bearing_deg(a, b) if leg > 0 else (out[-1][1] if out else 0.0)
            if not out:
                out.append((a, heading))
            pos = step - carried
            while pos <= leg:
                f = pos / leg
                out.append((Point(a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f), heading))
                pos += step
            carried = leg - (pos - step)
        end = self.route[-1]
        if out[-1][0] != end:
            out.append((end, out[-1][1]))
        return out

    async def fixes(self) -> AsyncIterator[LocationUpdate]:
        for i, (point, heading) in enumerate(self.positions()):
            if i:
                await asyncio.sleep(self.interval_s)
            yield LocationUpdate(
                lat=point.lat,
                lon=point.lon,
                accuracy=SIMULATED_ACCURACY_M,
                speed=self.speed_mps,
                heading=round(heading, 1) % 360.0,
                ts=int(self._clock() * 1000),
            )


class PlyerSource:
    """The phone's GPS through plyer (Android location manager), at most one fix a second.

    plyer calls back on a platform thread; the newest fix replaces an unread older one
    (latest value, never a backlog). :meth:`fixes` raises :class:`GpsUnavailableError` where
    plyer has no GPS (every desktop) or the provider reports it disabled.
    """

    description = "phone GPS (plyer)"

    def __init__(self, min_time_ms: int = 1000, min_distance_m: float = 0.0) -> None:
        self.min_time_ms = min_time_ms
        self.min_distance_m = min_distance_m

    async def fixes(self) -> AsyncIterator[LocationUpdate]:
        loop = asyncio.get_running_loop()
        latest: asyncio.Queue[LocationUpdate | GpsUnavailableError] = asyncio.Queue(maxsize=1)

        def put(item: LocationUpdate | GpsUnavailableError) -> None:
            if latest.full():
                latest.get_nowait()
            latest.put_nowait(item)

        def on_location(**kw: Any) -> None:
            fix = fix_from_plyer(kw, time.time())
            if fix is not None:
                loop.call_soon_threadsafe(put, fix)

        def on_status(status_type: str, status: str) -> None:
            if status_type == "provider-disabled":
                loop.call_soon_threadsafe(put, GpsUnavailableError(f"GPS provider disabled: {status}"))

        gps = _plyer_gps()
        try:
            gps.configure(on_location=on_location, on_status=on_status)
            gps.start(minTime=self.min_time_ms, minDistance=self.min_distance_m)
        except NotImplementedError:
            raise GpsUnavailableError(
                "plyer has no GPS on this platform; on a desktop use --gps route --route FILE"
            ) from None
        try:
            while True:
                item = await latest.get()
                if isinstance(item, GpsUnavailableError):
                    raise item
                yield item
        finally:
            gps.stop()


def _plyer_gps() -> Any:
    try:
        from plyer import gps
    except ImportError as exc:
        raise GpsUnavailableError(
            f"plyer is not installed ({exc}); pip install 'soko-live[clients]'"
        ) from None
    return gps


def fix_from_plyer(kw: dict[str, Any], now_s: float) -> LocationUpdate | None:
    """Turn plyer's ``on_location`` keywords into a fix; None when lat/lon are missing.

    plyer reports ``bearing`` (degrees) and ``speed`` (m/s) as 0.0 when unknown on some
    devices; they are passed on as given, except a bearing outside [0, 360) which is dropped.
    """
    try:
        lat, lon = float(kw["lat"]), float(kw["lon"])
    except (KeyError, TypeError, ValueError):
        return None
    accuracy = _opt_float(kw.get("accuracy"))
    heading = _opt_float(kw.get("bearing"))
    return LocationUpdate(
        lat=lat,
        lon=lon,
        accuracy=accuracy if accuracy is not None and accuracy >= 0 else 0.0,
        speed=_opt_float(kw.get("speed")),
        heading=heading if heading is not None and 0.0 <= heading < 360.0 else None,
        ts=int(now_s * 1000),
    )


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
