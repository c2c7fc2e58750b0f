"""The ``soko`` command: a thin dispatcher over the ``soko.commands`` entry points.

Each package registers its own subcommands in pyproject.toml, so this module has
no import edge to any of them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points


def main(argv: list[str] | None = None) -> int:
    """Run ``soko <command> [args...]``; ``soko --help`` lists the commands."""
    args = sys.argv[1:] if argv is None else argv
    commands = {ep.name: ep for ep in entry_points(group="soko.commands")}
    if not args or args[0] in ("-h", "--help"):
        print("usage: soko <command> [--help]\n\ncommands:\n  " + "\n  ".join(sorted(commands)))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"soko: unknown command {name!r}; one of: {', '.join(sorted(commands))}", file=sys.stderr)
        return 2
    result = commands[name].load()(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
