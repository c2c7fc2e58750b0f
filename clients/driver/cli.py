"""``soko driver``: the driver app on a desktop (or a phone, with ``--gps plyer``).

Exit codes: 0 when the window was closed, 2 for a bad flag, token or route file (the
message says which), 1 when the local store cannot be opened.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from clients.driver.gps import GpsSource, PlyerSource, RouteError, RouteSource, load_route
from clients.ui import cli

SAMPLE_ROUTE = "westlands-kilimani.gpx"


def sample_route() -> Path:
    """The bundled demo route (GPX), about 4.2 km across Nairobi."""
    return Path(str(resources.files("clients.driver").joinpath("routes", SAMPLE_ROUTE)))


def on_phone() -> bool:
    """True inside a python-for-android (or kivy-ios) build, where plyer has a GPS."""
    return "ANDROID_ARGUMENT" in os.environ or os.environ.get("KIVY_BUILD") == "ios"


def gps_source(kind: str, route: Path | None, speed_kmh: float, interval_s: float) -> GpsSource | None:
    """The GPS source the flags ask for.

    Raises:
        cli.UsageError: plyer off a phone, a bad speed or interval.
        RouteError: the route file cannot be used.
    """
    if kind == "none":
        return None
    if kind == "plyer":
        if not on_phone():
            raise cli.UsageError("--gps plyer needs a phone; on a desktop use --gps route [--route FILE]")
        return PlyerSource()
    if not 1 <= speed_kmh <= 250:
        raise cli.UsageError(f"--speed {speed_kmh}: give a speed between 1 and 250 km/h")
    if not 0.8 <= interval_s <= 60:
        raise cli.UsageError(
            f"--interval {interval_s}: give 0.8 to 60 seconds (the hub keeps one fix per 0.8 s)"
        )
    path = route or sample_route()
    return RouteSource(load_route(path), speed_mps=speed_kmh / 3.6, interval_s=interval_s, name=path.name)


def driver_main(argv: list[str]) -> int:
    """Entry point of ``soko driver`` (registered under ``soko.commands``)."""
    parser = argparse.ArgumentParser(
        prog="soko driver", description="Take delivery jobs, share your position, chat with customers."
    )
    cli.add_common_args(parser)
    parser.add_argument(
        "--gps",
        choices=("plyer", "route", "none"),
        default="plyer" if on_phone() else "route",
        help="where positions come from: the phone's GPS (plyer), a simulated drive along --route, "
        "or none (default: plyer on a phone, route elsewhere)",
    )
    parser.add_argument(
        "--route",
        type=Path,
        help=f"GPX or GeoJSON route for --gps route (default: the bundled {SAMPLE_ROUTE})",
    )
    parser.add_argument("--speed", type=float, default=30.0, help="simulated speed in km/h (default 30)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between simulated fixes (default 1)"
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="start on duty (default: as the app was last left; off at first)",
    )
    args = parser.parse_args(argv)
    try:
        hub = cli.hub_url(args.hub)
        me = cli.identity(cli.token_value(args.token), "driver")
        if args.route is not None and args.gps != "route":
            raise cli.UsageError("--route needs --gps route")
        gps = gps_source(args.gps, args.route, args.speed, args.interval)
    except (cli.UsageError, RouteError) as exc:
        print(f"soko driver: {exc}", file=sys.stderr)
        return 2
    path = cli.store_path(args.store, "driver", me.user)
    cli.configure_logging(args.log_level)
    cli.prepare_kivy()
    if gps is not None:
        print(f"soko driver: GPS from {gps.description}", file=sys.stderr)

    async def main() -> None:
        from clients.common.engine import SyncEngine
        from clients.common.store import LocalStore

        store = await LocalStore.open(path)  # before Kivy: a bad store fails without a window
        from clients.driver.app import ON_DUTY_KEY, DriverApp
        from clients.ui.base import run_with_engine

        on_duty = bool(args.online or await store.get(ON_DUTY_KEY, False))
        engine = SyncEngine(hub, me.token, store, online=on_duty)
        app = DriverApp(engine, store, me=me.user, gps=gps, on_duty=on_duty)
        await run_with_engine(app, engine, store)

    return cli.run("soko driver", main)
