"""Packaging the apps for Android with buildozer / python-for-android, and starting them there.

buildozer packages one directory whose top holds ``main.py``; our apps also need the
``protocol`` and ``clients`` packages. ``stage`` lays out such a directory::

    python -m clients.ui.android stage shopper build/android-shopper [--config soko.json]
    cd build/android-shopper && buildozer android debug

It copies ``protocol/`` and ``clients/`` (sources and package data, no caches or tests),
the app's ``buildozer.spec`` (``clients/<app>/buildozer.spec``), a two-line ``main.py``
calling :func:`phone_main`, and the optional config. Nothing here imports Kivy.

On the phone there are no command-line flags: :func:`phone_main` reads ``soko.json``
(``{"hub": URL, "token": JWT, ...}``, the same names as the flags) from the app's private
files directory, else from the package, and keeps the local store in the private directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

APPS = ("shopper", "driver")
CONFIG_NAME = "soko.json"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.sqlite3*", "buildozer.spec")
_MAIN = '''"""Entry point of the {app} app on Android (written by clients.ui.android stage)."""

import sys

from clients.ui.android import phone_main

sys.exit(phone_main("{app}"))
'''


def stage(app: str, out: Path, repo: Path, config: Path | None = None) -> Path:
    """Lay out ``out`` for ``buildozer android debug``; returns ``out``.

    The packaged config may name the hub and other flags but never a token: anyone holding
    the APK could read it. The token goes in the ``soko.json`` of the app's private
    directory on the phone, which :func:`phone_main` reads first.

    Raises:
        ValueError: an unknown app, ``out`` exists and is not empty, or the config holds a token.
        FileNotFoundError: ``repo`` lacks ``protocol/`` or ``clients/``, or the config is missing.
    """
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}; one of {', '.join(APPS)}")
    if config is not None and "token" in json.loads(config.read_text(encoding="utf-8")):
        raise ValueError(
            f"{config}: a token packaged in the APK can be read by anyone who has the APK; "
            f"put it in {CONFIG_NAME} in the app's private directory on the phone instead"
        )
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty")
    for package in ("protocol", "clients"):
        if not (repo / package / "__init__.py").is_file():
            raise FileNotFoundError(f"{repo / package} is not the project's {package} package")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(repo / "protocol", out / "protocol", ignore=_IGNORE)
    shutil.copytree(repo / "clients", out / "clients", ignore=_IGNORE)
    shutil.copy2(repo / "clients" / app / "buildozer.spec", out / "buildozer.spec")
    (out / "main.py").write_text(_MAIN.format(app=app), encoding="utf-8")
    if config is not None:
        json.loads(config.read_text(encoding="utf-8"))
        shutil.copy2(config, out / CONFIG_NAME)
    return out


def phone_argv(app: str, config: dict[str, object], private_dir: Path) -> list[str]:
    """The command line the phone's config stands for: every key is a flag (``"boutiques":
    "a,b"`` -> ``--boutiques a,b``, ``"online": true`` -> ``--online``); the store defaults
    to the app's private directory.

    Raises:
        ValueError: the config is not a JSON object of strings, numbers and booleans.
    """
    argv: list[str] = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            argv += [flag, str(value)]
        elif value is not False and value is not None:
            raise ValueError(f"{CONFIG_NAME}: {key!r} must be a string, a number or a boolean")
    if "store" not in config:
        argv += ["--store", str(private_dir / f"{app}.sqlite3")]
    return argv


def phone_main(app: str) -> int:
    """Start ``app`` inside an APK: read the config, ask for location permission (driver), run."""
    private = Path(os.environ.get("ANDROID_PRIVATE", os.getcwd()))
    packaged = Path(__file__).resolve().parents[2] / CONFIG_NAME
    for candidate in (private / CONFIG_NAME, packaged):
        if candidate.is_file():
            config = json.loads(candidate.read_text(encoding="utf-8"))
            break
    else:
        print(f"soko {app}: no {CONFIG_NAME} in {private} or the package", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print(f"soko {app}: {CONFIG_NAME} must hold a JSON object", file=sys.stderr)
        return 2
    if app == "driver":
        _ask_location_permission()
    main: Callable[[list[str]], int]
    if app == "driver":
        from clients.driver.cli import driver_main as main
    else:
        from clients.shopper.cli import shopper_main as main
    return main(phone_argv(app, config, private))


def _ask_location_permission() -> None:
    """Android 6+ grants location only at run time; plyer's GPS reports nothing until then."""
    try:
        from android.permissions import Permission, request_permissions  # type: ignore[import-not-found]
    except ImportError:
        return
    request_permissions([Permission.ACCESS_FINE_LOCATION, Permission.ACCESS_COARSE_LOCATION])


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.ui.android", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("stage", help="lay out a directory for buildozer")
    cmd.add_argument("app", choices=APPS)
    cmd.add_argument("out", type=Path)
    cmd.add_argument("--config", type=Path, help=f"a {CONFIG_NAME} to package (hub, token, ...)")
    cmd.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args(argv)
    try:
        out = stage(args.app, args.out, args.repo, args.config)
    except (OSError, ValueError) as exc:
        print(f"stage: {exc}", file=sys.stderr)
        return 2
    print(f"staged {args.app} in {out}; now: cd {out} && buildozer android debug")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
