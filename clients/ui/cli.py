"""What ``soko shopper`` and ``soko driver`` share: flags, their checks, default paths, running.

Kivy-free until :func:`run` imports the app: argument errors are reported without opening
a window, and :func:`prepare_kivy` sets Kivy's environment before Kivy is first imported
(Kivy reads ``sys.argv`` and its environment at import time).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol.ids import is_id

TOKEN_ENV = "SOKO_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
HUB_ENV = "SOKO_HUB_URL"
DEFAULT_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
"""OpenStreetMap's standard tiles; heavy use needs your own tile server (``--tiles``)."""


class UsageError(Exception):
    """A flag or the token is unusable; the message says which and why."""


@dataclass(frozen=True)
class Identity:
    """What the app reads from its token without verifying it (the hub verifies)."""

    token: str
    user: str
    role: str
    expires_at: int | None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hub", default=os.environ.get(HUB_ENV), help=f"the hub's URL (default: env {HUB_ENV})"
    )
    parser.add_argument("--token", help=f"your access token (default: env {TOKEN_ENV})")
    parser.add_argument(
        "--store",
        type=Path,
        help="the local store file (default: <user data dir>/soko/<app>-<user>.sqlite3)",
    )
    parser.add_argument("--log-level", default=os.environ.get("SOKO_LOG_LEVEL", "WARNING"))


def hub_url(value: str | None) -> str:
    """The hub's base URL, without a trailing slash.

    Raises:
        UsageError: missing, not http(s), or without a host.
    """
    if not value:
        raise UsageError(f"no hub: pass --hub URL or set {HUB_ENV}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--hub {value!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise UsageError(f"--hub {value!r}: give the hub's base URL, without a query or fragment")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise UsageError(f"--hub {value!r} has an invalid port") from None
    return value.rstrip("/")


def tile_url(value: str) -> str:
    """A tile URL template.

    Raises:
        UsageError: not http(s), or missing one of ``{z}``, ``{x}``, ``{y}``, or an unknown field.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--tiles {value!r} is not an http:// or https:// URL")
    fields = set(re.findall(r"{([^{}]*)}", value))
    missing = {"z", "x", "y"} - fields
    if missing:
        raise UsageError(f"--tiles {value!r} lacks {', '.join('{' + f + '}' for f in sorted(missing))}")
    unknown = fields - {"z", "x", "y", "s"}
    if unknown:
        raise UsageError(f"--tiles {value!r}: unknown field(s) {', '.join(sorted(unknown))}")
    return value


def token_value(flag: str | None) -> str | None:
    """The token from the flag, else from the environment."""
    return flag or os.environ.get(TOKEN_ENV)


def identity(token: str | None, role: str, now: float | None = None) -> Identity:
    """Read user, role and expiry from a JWT's claims (unverified) and check the role.

    Raises:
        UsageError: no token, not a JWT, no usable ``sub``, another role, or expired.
    """
    if not token:
        raise UsageError(f"no token: pass --token or set {TOKEN_ENV}")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise UsageError("the token is not a JWT (expected three dot-separated parts)")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise UsageError("the token is not a JWT (its claims are not base64 JSON)") from None
    if not isinstance(claims, dict):
        raise UsageError("the token is not a JWT (its claims are not an object)")
    user, token_role, exp = claims.get("sub"), claims.get("role"), claims.get("exp")
    if not isinstance(user, str) or not is_id(user):
        raise UsageError("the token names no valid user (claim 'sub')")
    if token_role != role:
        raise UsageError(f"this is a {token_role!r} token; soko {role} needs a {role!r} token")
    if isinstance(exp, int | float) and exp <= (time.time() if now is None else now):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(exp))
        raise UsageError(f"the token expired at {stamp}; ask for a new one")
    return Identity(
        token=token.strip(),
        user=user,
        role=role,
        expires_at=int(exp) if isinstance(exp, int | float) else None,
    )


def data_dir() -> Path:
    """Where the apps keep their stores: ``$SOKO_DATA_DIR``, else the platform's user data dir
    (XDG on Linux, Application Support on macOS, %APPDATA% on Windows) + ``/soko``."""
    if "SOKO_DATA_DIR" in os.environ:
        return Path(os.environ["SOKO_DATA_DIR"])
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "soko"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", home / "AppData" / "Roaming")) / "soko"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "soko"


def store_path(flag: Path | None, app: str, user: str) -> Path:
    """The store file: the flag, else one file per app and user under :func:`data_dir`."""
    return flag if flag is not None else data_dir() / f"{app}-{user}.sqlite3"


def prepare_kivy(home: Path | None = None) -> None:
    """Set Kivy's environment before it is imported: no argv parsing (our flags are ours),
    Python logging left alone unless asked otherwise, and Kivy's config home if given."""
    os.environ["KIVY_NO_ARGS"] = "1"
    os.environ.setdefault("KIVY_LOG_MODE", "MIXED")
    if home is not None:
        os.environ.setdefault("KIVY_HOME", str(home))


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(prog: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run the app's coroutine to the end (the window closed): 0; Ctrl-C: 130; a local store
    that cannot be opened: 1, with the reason on stderr."""
    from clients.common.store import StoreError

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except StoreError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
