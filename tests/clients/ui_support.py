"""Running the real Kivy apps headless inside a test's event loop, against a real hub.

Test modules take every Kivy-dependent name from here (never from ``clients.shopper.app``
and the like directly), so this module sets Kivy's environment (offscreen SDL window, no
argv parsing, Python logging, a throwaway KIVY_HOME) before Kivy is first imported; it
refuses to load after Kivy was.

- :func:`running` starts an app with ``App.async_run`` on the test's loop (as ``soko
  shopper`` does), each in fresh Kivy Clock/Factory/Builder contexts, the way Kivy's own
  test fixtures run several apps one after another in one process; it stops the app after.
- :func:`tap` presses a widget with a real touch event at its centre, so hit-testing and
  ``on_release`` run as for a finger.
- :class:`TileServer` serves generated map tiles (a street grid, as PNG) on 127.0.0.1.
- :func:`eventually` waits on a condition with a deadline; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import math
import os
import shutil
import struct
import sys
import tempfile
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from blockbuster import BlockBuster, blockbuster_ctx

assert "kivy" not in sys.modules, "import tests.clients.ui_support before anything that imports Kivy"
_KIVY_HOME = tempfile.mkdtemp(prefix="soko-kivy-")
atexit.register(shutil.rmtree, _KIVY_HOME, True)
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
os.environ["KIVY_NO_ARGS"] = "1"
os.environ["KIVY_LOG_MODE"] = "PYTHON"
os.environ.setdefault("KIVY_HOME", _KIVY_HOME)
os.environ.setdefault("KIVY_NO_FILELOG", "1")

# Kivy reads files when first imported: import it here, outside any event loop.
from kivy.config import Config  # noqa: E402

for _option, _value in Config.items("input"):
    Config.remove_option("input", _option)  # no real input devices: taps are simulated

from kivy.base import stopTouchApp  # noqa: E402
from kivy.clock import Clock, ClockBase  # noqa: E402
from kivy.context import Context  # noqa: E402
from kivy.core.clipboard import Clipboard, CutBuffer  # noqa: E402, F401 (probes xclip/xsel now, not in a test)
from kivy.core.window import Window  # noqa: E402
from kivy.factory import Factory, FactoryBase  # noqa: E402
from kivy.lang.builder import Builder, BuilderBase  # noqa: E402
from kivy.tests.common import UnitTestTouch  # noqa: E402
from kivy.uix.label import Label  # noqa: E402

from clients.common.engine import SyncEngine  # noqa: E402
from clients.common.store import LocalStore  # noqa: E402
from clients.driver.app import DriverApp  # noqa: E402
from clients.shopper.app import ShopperApp  # noqa: E402
from clients.ui.base import run_with_engine  # noqa: E402
from clients.ui.maps import DEFAULT_ZOOM  # noqa: E402, F401 (for the test modules)
from clients.ui.widgets import TappableCard  # noqa: E402

DEADLINE_S = 30.0
SKIP_KIVY_IO = [
    # Kivy and mapview load images, fonts, atlases and kv files from disk on the UI thread by
    # design; our own code must still never block the loop (these are allowed only inside them).
    ("kivy/core/image/__init__.py", {"load", "__init__", "_set_filename"}),
    (
        "kivy/core/text/__init__.py",
        {"register", "_render_begin", "resolve_font_name", "get_system_fonts_dir"},
    ),
    ("kivy/resources.py", {"resource_find"}),
    ("kivy/app.py", {"load_kv", "load_config"}),
    ("kivy_garden/mapview/downloader.py", {"__init__"}),  # one os.path.exists on the cache dir
]


@pytest.fixture
def kivy_blockbuster() -> Iterator[BlockBuster]:
    """The suite's blockbuster, letting Kivy's own file loading through (see SKIP_KIVY_IO).

    Test modules use it as ``blockbuster`` (``from ... import kivy_blockbuster as blockbuster``
    overrides the autouse fixture of tests/conftest.py by name).
    """
    with blockbuster_ctx(["protocol", "storage", "hub", "clients", "edge"]) as bb:
        bb.functions["os.stat"].can_block_in("pymongo/pool_options.py", "get_container_env_info")
        for function in bb.functions.values():
            for filename, names in SKIP_KIVY_IO:
                function.can_block_in(filename, names)
        yield bb


async def eventually(
    condition: Callable[[], object] | Callable[[], Awaitable[object]],
    what: str = "condition",
    timeout: float = DEADLINE_S,
) -> None:
    """Wait until ``condition()`` (sync or async) is truthy; fail the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"{what} not reached within {timeout:g} s"
        await asyncio.sleep(0.03)


_tasks: weakref.WeakKeyDictionary[Any, asyncio.Task[None]] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """Run ``app`` (a :class:`clients.ui.base.SokoApp`) and its engine on this loop, with
    :func:`clients.ui.base.run_with_engine` as ``soko shopper``/``soko driver`` do, until the
    block ends; closing the window then stops the engine and closes the store."""
    context = Context(init=False)
    context["Clock"] = ClockBase(async_lib="asyncio")
    context["Factory"] = FactoryBase.create_from(Factory)
    context["Builder"] = BuilderBase.create_from(Builder)
    context.push()
    Window.create_window()
    Window.register()
    Window.initialized = True
    Window.canvas.clear()
    start = Clock.frames_displayed
    task = asyncio.ensure_future(run_with_engine(app, app.engine, app.store))
    _tasks[app] = task
    try:
        await eventually(
            lambda: task.done() or (app.root is not None and Clock.frames_displayed > start), "app start"
        )
        if task.done():
            task.result()
        await settle(app)
        yield app
    finally:
        if not task.done():
            stopTouchApp()
            await asyncio.wait_for(task, 10)
        if app.root is not None and app.root.parent is not None:
            Window.remove_widget(app.root)
        for child in Window.children[:]:
            Window.remove_widget(child)
        context.pop()


async def settle(app: Any, frames: int = 2) -> None:
    """Let pending refreshes finish and the Clock draw ``frames`` frames.

    Raises:
        whatever ended the app's loop, if it ended (an exception in a Kivy callback does).
    """
    task = _tasks[app]

    def alive(ok: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: task.done() or ok()

    await eventually(alive(app.idle.is_set), "UI refreshes done")
    start = Clock.frames_displayed
    await eventually(alive(lambda: Clock.frames_displayed >= start + frames), "frames drawn")
    if task.done():
        task.result()
        raise AssertionError("the app stopped")


async def tap(app: Any, target: Any) -> None:
    """Touch down and up at a widget's centre, as a finger would. ``target`` is the widget or
    a function returning it: lists are rebuilt on every change, so it is looked up only once
    the app has settled (no refresh pending, a frame drawn, so it is laid out)."""
    await settle(app, frames=1)
    widget = target() if callable(target) and not hasattr(target, "walk") else target
    assert widget.get_root_window() is not None, f"{widget!r} is not on screen"
    assert not widget.disabled, f"{widget!r} is disabled"
    x, y = widget.to_window(*widget.center)
    touch = UnitTestTouch(x, y)
    touch.touch_down()
    touch.touch_up()
    # Inside a ScrollView the press is replayed at once and the release 0.2 s later.
    await eventually(lambda: getattr(widget, "state", "normal") == "normal", "the tap released")
    await settle(app, frames=1)


def find(root: Any, predicate: Callable[[Any], bool]) -> list[Any]:
    """Every widget under ``root`` (depth first) for which ``predicate`` holds."""
    return [w for w in root.walk(restrict=True) if predicate(w)]


def card_with(box: Any, text: str) -> Any:
    """The one tappable card in ``box`` showing ``text``."""
    cards = [w for w in box.children if isinstance(w, TappableCard) and text in label_texts(w)]
    assert len(cards) == 1, f"{len(cards)} cards show {text!r}"
    return cards[0]


def label_texts(root: Any) -> list[str]:
    return [w.text for w in root.walk(restrict=True) if isinstance(w, Label)]


async def screenshot(app: Any, path: Path) -> Path:
    """Let the app settle, then save its root widget as a PNG (``export_to_png``)."""
    await settle(app, frames=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    app.root.export_to_png(str(path))
    return path


# ---------------------------------------------------------------- tiles


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``3 * width`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


LAND = bytes((236, 232, 224))
PARK = bytes((200, 230, 190))
STREET = bytes((255, 255, 255))
AVENUE = bytes((252, 214, 140))
BLOCK_PX = 64
AVENUE_EVERY = 6


def _cell(g: int) -> tuple[int, bool, bool]:
    """(block index, on a street, on an avenue) of a global pixel coordinate."""
    block, offset = divmod(g, BLOCK_PX)
    avenue = block % AVENUE_EVERY == 0
    return block, offset < (9 if avenue else 5), avenue


def tile_png(z: int, x: int, y: int, size: int = 256) -> bytes:
    """A map-like tile: land, a street grid with wider avenues, and a park here and there.
    The grid is continuous across tiles at one zoom, so the map looks like a town."""
    cols = [_cell(x * size + i) for i in range(size)]
    rows = []
    for j in range(size):
        rblock, rstreet, ravenue = _cell(y * size + j)
        if rstreet:
            rows.append((AVENUE if ravenue else STREET) * size)
            continue
        row = bytearray()
        for cblock, cstreet, cavenue in cols:
            if cstreet:
                row += AVENUE if cavenue else STREET
            elif (cblock * 7 + rblock * 13 + z) % 11 == 0:
                row += PARK
            else:
                row += LAND
        rows.append(bytes(row))
    return png(size, size, rows)


class TileServer:
    """Serves ``/{z}/{x}/{y}.png`` tiles from :func:`tile_png` on 127.0.0.1; counts requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, int, int]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def template(self) -> str:
        return self.url + "/{z}/{x}/{y}.png"

    async def _tile(self, request: web.Request) -> web.Response:
        z, x, y = (int(request.match_info[k]) for k in ("z", "x", "y"))
        self.requests.append((z, x, y))
        if not (0 <= x < 2**z and 0 <= y < 2**z):
            raise web.HTTPNotFound()
        body = await asyncio.to_thread(tile_png, z, x, y)
        return web.Response(body=body, content_type="image/png")

    async def start(self) -> TileServer:
        app = web.Application()
        app.router.add_get(r"/{z:\d+}/{x:\d+}/{y:\d+}.png", self._tile)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def tile_of(lat: float, lon: float, z: int) -> tuple[int, int]:
    """The XYZ tile holding (lat, lon) at zoom ``z``."""
    n = 2**z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return x, y


# ---------------------------------------------------------------- the other side


# ---------------------------------------------------------------- the apps under test


async def shopper_app(
    hub: Any,
    tmp_path: Path,
    user: str = "shopper-1",
    tiles: str = "http://127.0.0.1:9/{z}/{x}/{y}.png",
    **kw: Any,
) -> Any:
    """A :class:`ShopperApp` over a new store in ``tmp_path`` and an engine for ``hub`` (not
    started: :func:`running` starts both)."""
    store = await LocalStore.open(tmp_path / f"{user}.sqlite3")
    engine = SyncEngine(hub.url, hub.token("shopper", user), store, backoff_cap=0.5)
    return ShopperApp(engine, store, me=user, tiles=tiles, tile_cache=tmp_path / "tiles", **kw)


async def driver_app(hub: Any, tmp_path: Path, user: str = "driver-1", **kw: Any) -> Any:
    """A :class:`DriverApp` over a new store in ``tmp_path`` and an engine for ``hub``."""
    kw.setdefault("on_duty", True)
    kw.setdefault("gps", None)
    store = await LocalStore.open(tmp_path / f"{user}.sqlite3")
    engine = SyncEngine(hub.url, hub.token("driver", user), store, backoff_cap=0.5, online=kw["on_duty"])
    return DriverApp(engine, store, me=user, **kw)


async def place_order(
    hub: Any,
    order_id: str,
    *,
    shopper: str = "shopper-1",
    boutique: str = "boutique-a",
    driver: str | None = None,
    dropoff: tuple[float, float] | None = None,
) -> None:
    """Create an order through the service API (and assign a driver when given)."""
    body: dict[str, Any] = {
        "type": "order.created",
        "event_id": f"created-{order_id}",
        "order_id": order_id,
        "shopper_id": shopper,
        "boutique_id": boutique,
    }
    if dropoff is not None:
        body["dropoff"] = {"lat": dropoff[0], "lon": dropoff[1]}
    await hub.service("/api/v1/events", body)
    if driver is not None:
        await hub.service(
            "/api/v1/events",
            {
                "type": "delivery.assigned",
                "event_id": f"assigned-{order_id}",
                "order_id": order_id,
                "driver_id": driver,
            },
        )


async def set_stock(hub: Any, boutique: str, sku: str, level: int, event_id: str) -> None:
    await hub.service(
        "/api/v1/stock",
        {"type": "stock.set", "event_id": event_id, "boutique_id": boutique, "sku": sku, "level": level},
    )
