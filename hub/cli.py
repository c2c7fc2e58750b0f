"""``soko hub`` and ``soko token``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hub.auth import issue_token, load_or_create_secret
from hub.config import Settings
from protocol.ids import Role


def hub_main(argv: list[str]) -> int:
    """Run one hub node until SIGINT/SIGTERM. Needs no external service on the defaults."""
    parser = argparse.ArgumentParser(prog="soko hub", description="Run a Soko Live hub node.")
    parser.add_argument("--host", help="listen address (default 127.0.0.1, env SOKO_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default 8080, env SOKO_PORT)")
    parser.add_argument(
        "--data", type=Path, help="directory for the SQLite file and JWT secret (default .soko)"
    )
    parser.add_argument("--store", help="store URL (default sqlite:///<data>/soko.db, env SOKO_STORE)")
    parser.add_argument("--broker", help="broker URL (default memory://, env SOKO_BROKER)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allow_origin",
        metavar="ORIGIN",
        help="allowed browser Origin; repeat for several (env SOKO_ALLOW_ORIGIN, comma-separated)",
    )
    parser.add_argument("--log-level", default=os.environ.get("SOKO_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env(
            overrides={
                "host": args.host,
                "port": args.port,
                "data": args.data,
                "store": args.store,
                "broker": args.broker,
                "allow_origin": tuple(args.allow_origin) if args.allow_origin else None,
            }
        )
    except ValueError as exc:
        parser.error(str(exc))

    import uvloop
    from aiohttp import web

    from hub.app import create_app

    app = create_app(settings)
    print(
        f"soko hub: listening on http://{settings.host}:{settings.port} (data in {settings.data.resolve()})",
        file=sys.stderr,
    )
    print("soko hub: get a token with: soko token --role shopper --sub alice", file=sys.stderr)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        loop=uvloop.new_event_loop(),
        shutdown_timeout=settings.shutdown_grace + 3,
        backlog=settings.listen_backlog,
    )
    return 0


def token_main(argv: list[str]) -> int:
    """Print a JWT the local hub accepts (same secret: SOKO_JWT_SECRET or <data>/jwt.secret)."""
    parser = argparse.ArgumentParser(prog="soko token", description="Mint a token for the local hub.")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--sub", required=True, help="user, driver, device or service id")
    parser.add_argument("--boutique", help="boutique id (required for staff and device)")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)"
    )
    parser.add_argument("--data", type=Path, help="the hub's data directory (default .soko)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(overrides={"data": args.data})
    secret = settings.jwt_secret or load_or_create_secret(settings.data)
    try:
        token = issue_token(
            secret,
            role=Role(args.role),
            sub=args.sub,
            boutique=args.boutique,
            ttl=args.ttl,
            audience=settings.jwt_audience,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(token)
    return 0
