"""The driver's GPS sources and route files (Kivy-free)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import msgspec
import pytest

from clients.driver.cli import sample_route
from clients.driver.gps import (
    MAX_ROUTE_POINTS,
    Point,
    RouteError,
    RouteSource,
    distance_m,
    fix_from_plyer,
    load_route,
)
from protocol.messages import LocationUpdate

GPX_11 = """<?xml version="1.0"?>
<gpx version="1.1" creator="t" xmlns="http://www.topografix.com/GPX/1/1">
  <trk><trkseg>
    <trkpt lat="-1.2676" lon="36.8108"><ele>1700</ele></trkpt>
    <trkpt lat="-1.2665" lon="36.8080"/>
  </trkseg><trkseg>
    <trkpt lat="-1.2660" lon="36.8050"/>
  </trkseg></trk>
</gpx>"""

GPX_10_ROUTE = """<gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0">
  <wpt lat="0" lon="0"/>
  <rte><rtept lat="10.5" lon="-20.25"/><rtept lat="10.6" lon="-20.35"/></rte>
</gpx>"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_gpx_track_points_across_segments_in_order(tmp_path: Path) -> None:
    points = load_route(write(tmp_path, "r.gpx", GPX_11))
    assert points == [Point(-1.2676, 36.8108), Point(-1.2665, 36.8080), Point(-1.2660, 36.8050)]


def test_gpx_route_points_when_there_is_no_track(tmp_path: Path) -> None:
    assert load_route(write(tmp_path, "r.gpx", GPX_10_ROUTE)) == [Point(10.5, -20.25), Point(10.6, -20.35)]


@pytest.mark.parametrize(
    "doc",
    [
        {"type": "LineString", "coordinates": [[36.81, -1.26], [36.80, -1.27, 1700]]},
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "LineString", "coordinates": [[36.81, -1.26], [36.80, -1.27]]},
        },
        {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}},
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "MultiLineString",
                        "coordinates": [[[36.81, -1.26]], [[36.80, -1.27]]],
                    },
                },
            ],
        },
    ],
    ids=["linestring", "feature", "collection-multilinestring"],
)
def test_geojson_lines_become_lat_lon_points(tmp_path: Path, doc: dict) -> None:
    assert load_route(write(tmp_path, "r.geojson", json.dumps(doc))) == [
        Point(-1.26, 36.81),
        Point(-1.27, 36.80),
    ]


def test_the_bundled_route_in_both_formats_is_the_same_drive() -> None:
    gpx = load_route(sample_route())
    geojson = load_route(sample_route().with_suffix(".geojson"))
    assert gpx == geojson and len(gpx) >= 10
    assert 3000 < sum(distance_m(a, b) for a, b in itertools.pairwise(gpx)) < 6000


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("r.gpx", "<gpx><trk><trkpt lat='1' lon='2'></trk>", "not valid GPX XML"),
        ("r.gpx", "<kml/>", "not <gpx>"),
        ("r.gpx", "<gpx><wpt lat='1' lon='2'/></gpx>", "no <trkpt> or <rtept>"),
        (
            "r.gpx",
            "<gpx><trk><trkseg><trkpt lat='91' lon='2'/><trkpt lat='1' lon='2'/></trkseg></trk></gpx>",
            "latitude '91'",
        ),
        (
            "r.gpx",
            "<gpx><trk><trkseg><trkpt lat='x' lon='2'/><trkpt lat='1' lon='2'/></trkseg></trk></gpx>",
            "must be numbers",
        ),
        (
            "r.gpx",
            "<gpx><trk><trkseg><trkpt lat='1' lon='2'/></trkseg></trk></gpx>",
            "at least 2 points, found 1",
        ),
        ("r.geojson", "{not json", "not valid JSON"),
        ("r.geojson", '{"type": "Point", "coordinates": [1, 2]}', "no LineString"),
        ("r.geojson", '{"type": "LineString", "coordinates": [[1, 2], [200, 2]]}', "longitude 200"),
        ("r.geojson", '{"type": "LineString", "coordinates": [[1, 2], [true, 2]]}', "must be numbers"),
        ("r.geojson", '{"type": "LineString", "coordinates": [[1, 2], [3]]}', "a position is [lon, lat]"),
        ("r.geojson", "[1, 2]", "expected a GeoJSON object"),
        ("r.txt", "lat,lon\n1,2\n", "not a GPX (.gpx) or GeoJSON"),
    ],
)
def test_bad_route_files_are_refused_with_the_reason(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(RouteError, match="^" + str(path).replace(".", r"\.") + ": ") as caught:
        load_route(path)
    assert reason in str(caught.value)


def test_missing_and_oversized_route_files(tmp_path: Path) -> None:
    with pytest.raises(RouteError, match="cannot read the route file"):
        load_route(tmp_path / "nope.gpx")
    coords = [[0.0, i * 1e-6] for i in range(MAX_ROUTE_POINTS + 1)]
    big = write(tmp_path, "big.geojson", json.dumps({"type": "LineString", "coordinates": coords}))
    with pytest.raises(RouteError, match="more than"):
        load_route(big)


def test_a_drive_is_evenly_spaced_and_ends_at_the_last_point() -> None:
    route = load_route(sample_route())
    drive = RouteSource(route, speed_mps=10.0, interval_s=1.0).positions()
    steps = [distance_m(a, b) for (a, _), (b, _) in itertools.pairwise(drive)]
    assert drive[0][0] == route[0] and drive[-1][0] == route[-1]
    assert all(s <= 10.01 for s in steps)
    assert all(s > 8.0 for s in steps[:-1]), "only corners and the final step may be shorter"
    assert all(0.0 <= heading < 360.0 for _, heading in drive)


@pytest.mark.asyncio
async def test_route_fixes_are_valid_driver_locations_with_the_device_clock() -> None:
    clock = iter(range(1_700_000_000, 1_700_001_000))
    source = RouteSource(
        [Point(-1.2676, 36.8108), Point(-1.2665, 36.8080)],
        speed_mps=2000.0,
        interval_s=0.05,
        clock=lambda: next(clock),
    )
    fixes = [fix async for fix in source.fixes()]
    assert len(fixes) == len(source.positions()) >= 3
    for i, fix in enumerate(fixes):
        assert msgspec.convert(msgspec.to_builtins(fix), LocationUpdate) == fix
        assert fix.ts == (1_700_000_000 + i) * 1000 and fix.speed == 2000.0 and fix.accuracy == 5.0
    assert (fixes[-1].lat, fixes[-1].lon) == (-1.2665, 36.8080)


def test_plyer_keywords_become_a_fix() -> None:
    fix = fix_from_plyer(
        {"lat": -1.3, "lon": 36.8, "speed": 4.5, "bearing": 270.0, "accuracy": 12.0}, 1_700_000_000.5
    )
    assert fix == LocationUpdate(
        lat=-1.3, lon=36.8, accuracy=12.0, speed=4.5, heading=270.0, ts=1_700_000_000_500
    )
    odd = fix_from_plyer({"lat": "-1.3", "lon": 36.8, "bearing": 360.0, "speed": float("nan")}, 1.0)
    assert odd is not None and odd.heading is None and odd.speed is None and odd.accuracy == 0.0
    assert fix_from_plyer({"lon": 36.8}, 1.0) is None


@pytest.mark.asyncio
async def test_plyer_is_unavailable_on_a_desktop() -> None:
    from clients.driver.gps import GpsUnavailableError, PlyerSource

    with pytest.raises(GpsUnavailableError, match="--gps route"):
        await asyncio.wait_for(anext(PlyerSource().fixes()), 10)
