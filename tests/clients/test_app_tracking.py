"""The shopper's map follows a driver whose driver app (``soko driver``, a real subprocess with a
simulated route) streams positions through a real hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.ui_support import (
    DEFAULT_ZOOM,
    TileServer,
    card_with,
    eventually,
    label_texts,
    place_order,
    running,
    shopper_app,
    tap,
    tile_of,
)
from tests.clients.ui_support import kivy_blockbuster as blockbuster  # noqa: F401
from tests.support.process import terminate

pytestmark = pytest.mark.asyncio


def soko_driver(hub, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SDL_VIDEODRIVER": "offscreen",
        "KIVY_HOME": str(tmp_path / "kivy-driver"),
        "SOKO_TOKEN": hub.token("driver", "driver-1"),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub.soko",
            "driver",
            "--hub",
            hub.url,
            "--store",
            str(tmp_path / "driver.db"),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        # a file, not a pipe nobody reads: a full pipe would block the driver's logging
        stderr=(tmp_path / "driver.log").open("wb"),
    )


async def test_the_driver_marker_moves_when_the_driver_app_streams(hub_factory, tmp_path: Path) -> None:
    hub = await hub_factory()
    tiles = await TileServer().start()
    await place_order(hub, "o-7", driver="driver-1", dropoff=(-1.2925, 36.7875))
    app = await shopper_app(hub, tmp_path, tiles=tiles.template)
    driver = soko_driver(hub, tmp_path, "--gps", "route", "--speed", "60", "--online")
    try:
        async with running(app):
            await tap(app, app.nav["orders"])
            await eventually(lambda: "Order o-7" in label_texts(app.orders_box), "the order is listed")
            await tap(app, lambda: card_with(app.orders_box, "Order o-7"))
            assert app.sm.current == "order"
            await eventually(
                lambda: driver.poll() is None and app.track_map.has_driver, "the driver marker shows"
            )
            marker = app.track_map.driver
            first_fix, first_pos = (marker.lat, marker.lon), tuple(marker.pos)
            await eventually(
                lambda: (marker.lat, marker.lon) != first_fix, "a newer position moves the marker"
            )
            await eventually(lambda: tuple(marker.pos) != first_pos, "the marker moves on screen")
            assert app.eta_label.text.startswith("ETA "), app.eta_label.text
            here = tile_of(marker.lat, marker.lon, DEFAULT_ZOOM)
            await eventually(
                lambda: any((z, x) == (DEFAULT_ZOOM, here[0]) for z, x, _y in tiles.requests),
                "the map fetched tiles around the driver from the configured tile URL",
            )
        assert driver.poll() is None, (tmp_path / "driver.log").read_text(errors="replace")
    finally:
        await terminate(driver)
        await tiles.stop()
