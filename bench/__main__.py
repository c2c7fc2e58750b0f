"""``python -m bench [--quick | --full] [--servers soko,node,pysio,ws] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import run
from bench.servers import SERVERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="CI size (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="1k and 5k subscribers")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of %(default)s")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.servers.split(",") if n]
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    results = run(args.mode or "quick", args.out, names, show_progress=not args.no_progress)
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
