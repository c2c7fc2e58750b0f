"""``soko shopper`` and ``soko driver``: flag and token errors are reported before any window opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.driver.cli import driver_main
from clients.shopper.cli import shopper_main
from clients.ui import cli
from tests.support.hub import mint

HUB = "http://127.0.0.1:8080"


@pytest.fixture(autouse=True)
def no_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cli.HUB_ENV, raising=False)


def run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no hub: pass --hub URL or set SOKO_HUB_URL"),
        (["--hub", "ftp://hub.example"], "is not an http:// or https:// URL"),
        (["--hub", "http://:8080"], "is not an http:// or https:// URL with a host"),
        (["--hub", "http://h:99999"], "invalid port"),
        (["--hub", HUB], "no token: pass --token or set SOKO_TOKEN"),
        (["--hub", HUB, "--token", "abc"], "the token is not a JWT"),
        (["--hub", HUB, "--token", "a.!!!.c"], "the token is not a JWT"),
        (
            ["--hub", HUB, "--token", mint("driver", "d-1")],
            "this is a 'driver' token; soko shopper needs a 'shopper'",
        ),
        (["--hub", HUB, "--token", mint("shopper", "s-1", ttl=-60)], "the token expired at"),
        (["--hub", HUB, "--token", mint("shopper", "s-1"), "--tiles", "https://t/{z}/{x}.png"], "lacks {y}"),
        (
            ["--hub", HUB, "--token", mint("shopper", "s-1"), "--tiles", "https://t/{z}/{x}/{y}{r}.png"],
            "unknown",
        ),
        (["--hub", HUB, "--token", mint("shopper", "s-1"), "--boutiques", "ok,b a d"], "'b a d'"),
    ],
)
def test_shopper_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(shopper_main, argv, capsys)
    assert code == 2
    assert err.startswith("soko shopper: ") and message in err, err


def test_the_token_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.TOKEN_ENV, mint("driver", "d-1"))
    code, err = run(shopper_main, ["--hub", HUB], capsys)
    assert code == 2 and "this is a 'driver' token" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gps", "plyer"], "--gps plyer needs a phone; on a desktop use --gps route"),
        (["--gps", "none", "--route", "r.gpx"], "--route needs --gps route"),
        (["--speed", "0"], "--speed 0.0: give a speed between 1 and 250 km/h"),
        (["--interval", "0.1"], "--interval 0.1: give 0.8 to 60 seconds"),
        (["--route", "missing.gpx"], "missing.gpx: cannot read the route file"),
    ],
)
def test_driver_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(driver_main, ["--hub", HUB, "--token", mint("driver", "d-1"), *argv], capsys)
    assert code == 2
    assert err.startswith("soko driver: ") and message in err, err


def test_a_bad_route_file_names_the_file_and_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    route = tmp_path / "drive.geojson"
    route.write_text('{"type": "LineString", "coordinates": [[36.8, -1.3], [36.8, -95]]}', encoding="utf-8")
    code, err = run(
        driver_main, ["--hub", HUB, "--token", mint("driver", "d-1"), "--route", str(route)], capsys
    )
    assert code == 2
    assert err == f"soko driver: {route}: coordinate #2: latitude -95 is outside [-90, 90]\n"


def test_the_default_store_is_per_app_and_user_under_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOKO_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/data/home")
    if sys.platform.startswith("linux"):
        assert cli.store_path(None, "shopper", "s-1") == Path("/data/home/soko/shopper-s-1.sqlite3")
    monkeypatch.setenv("SOKO_DATA_DIR", "/srv/soko")
    assert cli.store_path(None, "driver", "d-1") == Path("/srv/soko/driver-d-1.sqlite3")
    assert cli.store_path(Path("x.db"), "driver", "d-1") == Path("x.db")


def test_an_unusable_store_fails_with_exit_1_before_a_window_opens(tmp_path: Path) -> None:
    junk = tmp_path / "store.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "KIVY_HOME": str(tmp_path / "kivy")}
    argv = ["shopper", "--hub", HUB, "--token", mint("shopper", "s-1"), "--store", str(junk)]
    done = subprocess.run(
        [sys.executable, "-m", "hub.soko", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"soko shopper: {junk} is not a usable store" in done.stderr
