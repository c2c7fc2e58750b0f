"""``soko shopper``: the shopper app on a desktop.

Exit codes: 0 when the window was closed, 2 for a bad flag or token (the message says
which), 1 when the local store cannot be opened.
"""

from __future__ import annotations

import argparse
import sys

from clients.ui import cli
from protocol.ids import is_id


def shopper_main(argv: list[str]) -> int:
    """Entry point of ``soko shopper`` (registered under ``soko.commands``)."""
    parser = argparse.ArgumentParser(
        prog="soko shopper", description="Shop, chat with boutiques and follow your deliveries."
    )
    cli.add_common_args(parser)
    parser.add_argument("--tiles", default=cli.DEFAULT_TILES, help="map tile URL template with {z}, {x}, {y}")
    parser.add_argument(
        "--tiles-credit",
        default="\u00a9 OpenStreetMap contributors",
        help="the credit shown under the map, as the tile provider requires (default: OpenStreetMap's)",
    )
    parser.add_argument(
        "--boutiques",
        default="",
        help="comma-separated boutique ids to show (the hub has no catalogue of boutiques)",
    )
    args = parser.parse_args(argv)
    try:
        hub = cli.hub_url(args.hub)
        me = cli.identity(cli.token_value(args.token), "shopper")
        tiles = cli.tile_url(args.tiles)
        boutiques = [b.strip() for b in args.boutiques.split(",") if b.strip()]
        bad = [b for b in boutiques if not is_id(b)]
        if bad:
            raise cli.UsageError(f"--boutiques: not valid ids: {', '.join(map(repr, bad))}")
    except cli.UsageError as exc:
        print(f"soko shopper: {exc}", file=sys.stderr)
        return 2
    path = cli.store_path(args.store, "shopper", me.user)
    cli.configure_logging(args.log_level)
    cli.prepare_kivy()

    async def main() -> None:
        from clients.common.engine import SyncEngine
        from clients.common.store import LocalStore

        store = await LocalStore.open(path)  # before Kivy: a bad store fails without a window
        from clients.shopper.app import ShopperApp
        from clients.ui.base import run_with_engine

        engine = SyncEngine(hub, me.token, store)
        app = ShopperApp(
            engine,
            store,
            me=me.user,
            tiles=tiles,
            tile_cache=path.parent / "tiles",
            attribution=args.tiles_credit,
            boutiques=boutiques,
        )
        await run_with_engine(app, engine, store)

    return cli.run("soko shopper", main)
