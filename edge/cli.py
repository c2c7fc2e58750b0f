"""``soko edge``: run a store's gateway, show its status, check its config, simulate a store.

Exit codes: 0 success, 2 bad usage or an invalid config (the message names the file
and the field), 1 a runtime failure such as an unreadable outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

from edge.config import ConfigError, GatewayConfig, load_config
from edge.simulate import FAIL_MODES

TOKEN_ENV = "SOKO_EDGE_TOKEN"  # noqa: S105 (the name of a variable, not a secret)


def edge_main(argv: list[str]) -> int:
    """Entry point of ``soko edge`` (registered under ``soko.commands``)."""
    parser = argparse.ArgumentParser(prog="soko edge", description="In-store gateway for shelf sensors.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    run = commands.add_parser("run", help="run the gateway: MQTT readings in, stock events out to the hub")
    _config_arg(run)
    run.add_argument(
        "--token",
        help=f"the device token (default: env {TOKEN_ENV}, then the config's hub.token_file)",
    )
    run.add_argument("--log-level", default=os.environ.get("SOKO_LOG_LEVEL", "INFO"))

    status = commands.add_parser("status", help="queue depth, last uplink and sensor health")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")

    check = commands.add_parser("check", help="validate the config file and exit")
    _config_arg(check)

    commands.add_parser("example", help="print a commented example config (soko edge example > edge.toml)")

    simulate = commands.add_parser("simulate", help="publish realistic readings for the config's store")
    _config_arg(simulate)
    simulate.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    simulate.add_argument(
        "--rate", type=float, default=1.0, help="readings per sensor per second (default 1)"
    )
    simulate.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    simulate.add_argument("--failing", metavar="SHELF/SENSOR", help="make this sensor fail halfway through")
    simulate.add_argument(
        "--failing-mode",
        choices=FAIL_MODES,
        default="nan",
        help="how --failing fails: NaN readings, negative or overloaded readings, or silence (default nan)",
    )
    simulate.add_argument("--truth", type=Path, help="write the shelves' final counts to this JSON file")

    args = parser.parse_args(argv)
    if args.command == "example":
        print(resources.files("edge").joinpath("example.toml").read_text(encoding="utf-8"), end="")
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"soko edge: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(cfg.sensors)} sensors for boutique {cfg.boutique})")
        return 0
    if args.command == "status":
        return _status(cfg, as_json=args.json)
    if args.command == "simulate":
        return _simulate(cfg, args)
    return _run(cfg, args)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("SOKO_EDGE_CONFIG", "edge.toml")),
        help="the store's TOML config (default: env SOKO_EDGE_CONFIG, then ./edge.toml)",
    )


def token_source(cfg: GatewayConfig, flag: str | None) -> Callable[[], str]:
    """Where the device token comes from: the flag, then the environment, then the token
    file (re-read at every hub connect, so a rotated file is picked up).

    Raises:
        ConfigError: when none of the three is set.
    """
    fixed = flag or os.environ.get(TOKEN_ENV)
    if fixed:
        return lambda: fixed
    if cfg.hub.token_file is None:
        raise ConfigError(f"no device token: pass --token, set {TOKEN_ENV}, or set hub.token_file")
    path = Path(cfg.hub.token_file)

    def read() -> str:
        return path.read_text(encoding="utf-8").strip()

    return read


def _run(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        token = token_source(cfg, args.token)
    except ConfigError as exc:
        print(f"soko edge: {exc}", file=sys.stderr)
        return 2
    import uvloop

    from edge.gateway import Gateway

    print(
        f"soko edge: boutique {cfg.boutique}, {len(cfg.sensors)} sensors,"
        f" broker {cfg.mqtt.host}:{cfg.mqtt.port}, hub {cfg.hub.url}, outbox {cfg.outbox.path}",
        file=sys.stderr,
    )
    uvloop.run(_until_signalled(Gateway(cfg, token).run()))
    return 0


async def _until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until SIGINT or SIGTERM, then cancel it so it closes the outbox cleanly."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _status(cfg: GatewayConfig, *, as_json: bool) -> int:
    from edge.outbox import OutboxError, read_status
    from edge.status import render_status, status_json

    try:
        status = read_status(Path(cfg.outbox.path))
    except OutboxError as exc:
        print(f"soko edge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status_json(status), indent=2) if as_json else render_status(status))
    return 0


def _simulate(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from edge.simulate import simulate

    if args.failing is not None and args.failing not in {s.key for s in cfg.sensors}:
        print(f"soko edge: --failing {args.failing}: no such sensor in {args.config}", file=sys.stderr)
        return 2
    truth = asyncio.run(
        simulate(
            cfg,
            cfg.mqtt.host,
            cfg.mqtt.port,
            duration_s=args.duration,
            rate_hz=args.rate,
            seed=args.seed,
            failing=args.failing,
            failing_mode=args.failing_mode,
            truth_path=args.truth,
            progress=lambda line: print(line, file=sys.stderr),
        )
    )
    print(json.dumps(truth, sort_keys=True))
    return 0
