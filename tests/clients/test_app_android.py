"""The Android packaging: a staged buildozer directory holds a runnable main.py and the packages."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clients.ui.android import phone_argv, stage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("app", ["shopper", "driver"])
def test_stage_lays_out_what_buildozer_packages(app: str, tmp_path: Path) -> None:
    config = tmp_path / "soko.json"
    config.write_text(json.dumps({"hub": "https://hub.example"}), encoding="utf-8")
    out = stage(app, tmp_path / "build", REPO, config)
    spec = configparser.ConfigParser()
    spec.read(out / "buildozer.spec")
    assert spec["app"]["source.dir"] == "."
    requirements = {r.strip().split("==")[0] for r in spec["app"]["requirements"].split(",")}
    assert {
        "python3",
        "kivy",
        "plyer",
        "python-socketio",
        "aiohttp",
        "msgspec",
        "python-ulid",
    } <= requirements
    permissions = {p.strip() for p in spec["app"]["android.permissions"].split(",")}
    assert "INTERNET" in permissions
    assert ("ACCESS_FINE_LOCATION" in permissions) is (app == "driver")
    assert (out / "clients" / "ui" / "assets" / "driver.png").is_file()
    assert (out / "clients" / "driver" / "routes" / "westlands-kilimani.gpx").is_file()
    assert not list(out.rglob("__pycache__")) and not (out / "hub").exists() and not (out / "tests").exists()
    assert json.loads((out / "soko.json").read_text(encoding="utf-8"))["hub"] == "https://hub.example"
    assert f'phone_main("{app}")' in (out / "main.py").read_text(encoding="utf-8")
    # The staged packages import on their own, from the staged tree, down to the app's CLI.
    done = subprocess.run(
        [sys.executable, "-c", f"import clients.{app}.cli as m, protocol.messages; print(m.__file__)"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(done.stdout.strip()).is_relative_to(out), done.stdout


def test_stage_refuses_to_package_a_token(tmp_path: Path) -> None:
    config = tmp_path / "soko.json"
    config.write_text(json.dumps({"hub": "https://hub.example", "token": "secret"}), encoding="utf-8")
    with pytest.raises(ValueError, match="private directory"):
        stage("shopper", tmp_path / "build", REPO, config)
    assert not (tmp_path / "build").exists()


def test_stage_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="not empty"):
        stage("shopper", tmp_path, REPO)


def test_the_phone_config_becomes_flags(tmp_path: Path) -> None:
    argv = phone_argv("driver", {"hub": "https://h", "token": "t", "online": True, "speed": 40}, tmp_path)
    assert argv == [
        "--hub",
        "https://h",
        "--token",
        "t",
        "--online",
        "--speed",
        "40",
        "--store",
        str(tmp_path / "driver.sqlite3"),
    ]
    with pytest.raises(ValueError, match="must be a string"):
        phone_argv("shopper", {"boutiques": ["a"]}, tmp_path)
