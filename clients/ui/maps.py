"""The tracking map: ``kivy-garden.mapview`` over a configurable tile server, with the driver's
marker.

Tiles are fetched on downloader threads (never on the event loop) and cached as files under
``cache_dir``. The tile URL is a template with ``{z}``, ``{x}``, ``{y}`` (and optionally
``{s}`` for a subdomain among ``a``, ``b``, ``c``), checked by :func:`clients.ui.cli.tile_url`.

mapview's own downloader writes a cache file in place while another request for the same
tile may already load it, and an image that fails to load raises out of the Kivy clock,
which ends the app. :class:`TileDownloader` writes each file atomically and turns a tile
that cannot be loaded into a logged, blank tile.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
from concurrent.futures import as_completed
from importlib import resources
from pathlib import Path
from typing import Any

import requests
from kivy.properties import BooleanProperty
from kivy_garden.mapview import MapMarker, MapSource, MapView
from kivy_garden.mapview.downloader import Downloader

log = logging.getLogger(__name__)

USER_AGENT = "soko-live-shopper (kivy-garden.mapview)"
"""Tile servers (OpenStreetMap's among them) require a User-Agent that names the app."""

DEFAULT_ZOOM = 15
DEFAULT_ATTRIBUTION = "\u00a9 OpenStreetMap contributors"
"""The credit OpenStreetMap's tiles (the default ``--tiles``) require to be shown with the map."""
NAIROBI = (-1.2864, 36.8172)
"""Where the map opens before it knows a position."""


def asset(name: str) -> str:
    """Path of a packaged image under ``clients/ui/assets``."""
    return str(resources.files("clients.ui").joinpath("assets", name))


class TileDownloader(Downloader):  # type: ignore[misc]
    """mapview's downloader (worker threads, results handed to the Kivy clock), except that a
    cache file is written to a temporary name and renamed into place, so no reader ever sees
    half a tile, and a tile whose image cannot be loaded is logged and left blank."""

    def _load_tile(self, tile: Any) -> Any:
        if tile.state == "done":
            return None
        cache_fn = tile.cache_fn
        if os.path.exists(cache_fn):
            return tile.set_source, (cache_fn,)
        source = tile.map_source
        url = source.url.format(
            z=tile.zoom,
            x=tile.tile_x,
            y=source.get_row_count(tile.zoom) - tile.tile_y - 1,
            s=random.choice(source.subdomains),  # noqa: S311 (load spreading, not security)
        )
        try:
            response = requests.get(url, headers={"User-Agent": USER_AGENT}, timeout=5)
            response.raise_for_status()
        except requests.RequestException as exc:
            log.warning("map: tile %s not loaded: %s", url, exc)
            return None
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache_fn), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(response.content)
            os.replace(tmp, cache_fn)
        except OSError as exc:
            log.warning("map: tile %s not cached: %s", url, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return None
        return tile.set_source, (cache_fn,)

    def _check_executor(self, _dt: float) -> None:
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):  # as_completed(..., 0): the rest are not done yet
            for future in as_completed(self._futures[:], 0):
                self._futures.remove(future)
                try:
                    result = future.result()
                    if result is not None:
                        callback, args = result
                        callback(*args)
                except Exception:
                    log.exception("map: a tile could not be shown")
                if time.monotonic() - start > self.cap_time:
                    break


class TileSource(MapSource):  # type: ignore[misc]
    """A tile URL template whose tiles go through one :class:`TileDownloader`."""

    def __init__(self, downloader: TileDownloader, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.downloader = downloader

    def fill_tile(self, tile: Any) -> None:
        if tile.state != "done":
            self.downloader.download_tile(tile)


class TrackMap(MapView):  # type: ignore[misc]
    """A map that follows one driver: :meth:`show_driver` moves (and adds) the marker,
    :meth:`hide_driver` removes it. ``has_driver`` tells whether the marker is shown.

    ``cache_dir`` must exist (creating it is disk I/O, kept off the event loop by the caller).
    The map recentres on the driver when the marker leaves the middle half of the view, so
    the driver stays visible without fighting a user who pans a little.
    """

    has_driver = BooleanProperty(False)

    def __init__(self, tiles: str, cache_dir: Path, **kwargs: Any) -> None:
        source = TileSource(
            TileDownloader(cache_dir=str(cache_dir)),
            url=tiles,
            cache_key="soko-" + hashlib.sha256(tiles.encode()).hexdigest()[:12],
            cache_dir=str(cache_dir),
            min_zoom=2,
            max_zoom=19,
            attribution=DEFAULT_ATTRIBUTION,
        )
        kwargs.setdefault("zoom", DEFAULT_ZOOM)
        kwargs.setdefault("lat", NAIROBI[0])
        kwargs.setdefault("lon", NAIROBI[1])
        super().__init__(map_source=source, cache_dir=str(cache_dir), **kwargs)
        self.driver = MapMarker(source=asset("driver.png"), anchor_x=0.5, anchor_y=0.5)

    def show_driver(self, lat: float, lon: float) -> None:
        """Put the driver's marker at (lat, lon), adding it first if hidden."""
        self.driver.lat, self.driver.lon = lat, lon
        if not self.has_driver:
            self.add_marker(self.driver)
            self.has_driver = True
            self.center_on(lat, lon)
        elif not self._in_middle(lat, lon):
            self.center_on(lat, lon)
        self.trigger_update(False)

    def hide_driver(self) -> None:
        if self.has_driver:
            self.remove_marker(self.driver)
            self.has_driver = False

    def _in_middle(self, lat: float, lon: float) -> bool:
        x, y = self.get_window_xy_from(lat, lon, self.zoom)
        return bool(
            self.x + self.width / 4 <= x <= self.right - self.width / 4
            and self.y + self.height / 4 <= y <= self.top - self.height / 4
        )
