"""``python -m bench [--quick | --full] [--servers soko,node,pysio,ws] [--scenarios a,b] [--repeat N]
[--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import FULL, QUICK, run
from bench.servers import SERVERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="CI size (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="the sizes of issue 8")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of %(default)s")
    kinds = sorted({sc.kind for sc in FULL})
    names = ", ".join(sc.name for sc in (*QUICK, *FULL))
    parser.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated scenario names or kinds of the mode (kinds: {', '.join(kinds)};"
        f" names: {names}); default all",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per step, median reported (default 3 full, 1 quick)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    servers = [n for n in args.servers.split(",") if n]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    only = [n for n in args.scenarios.split(",") if n]
    scenarios = QUICK if (args.mode or "quick") == "quick" else FULL
    unknown = set(only) - {sc.name for sc in scenarios} - {sc.kind for sc in scenarios}
    if unknown:
        parser.error(f"no such scenario in this mode: {', '.join(sorted(unknown))}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    results = run(
        args.mode or "quick",
        args.out,
        servers,
        show_progress=not args.no_progress,
        repeat=args.repeat,
        only=only or None,
    )
    print((args.out / "latest.md").read_text())
    failed = [
        f"{sc}/{server}"
        for sc, entry in results["scenarios"].items()
        for server, r in entry["servers"].items()
        if not r.get("ok")
    ]
    if failed:
        print(f"failed (lightest step incomplete, or nothing measured): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
