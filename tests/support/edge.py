"""Run edge gateways against real hubs and a real Mosquitto: configs, in-process and subprocess
gateways, and a staff's view of the hub's inventory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import socketio

from edge.config import GatewayConfig, load_config
from edge.gateway import Gateway
from edge.outbox import OutboxStatus, read_status
from tests.support.process import kill, terminate

BOUTIQUE = "b1"

SENSORS: list[dict[str, Any]] = [
    {
        "shelf": "a1",
        "sensor": "s1",
        "sku": "mug",
        "kind": "weight",
        "unit_weight": 350.0,
        "tare": 1200.0,
        "capacity": 12,
    },
    {
        "shelf": "a1",
        "sensor": "s2",
        "sku": "bowl",
        "kind": "weight",
        "unit_weight": 520.0,
        "tare": 900.0,
        "capacity": 8,
    },
    {"shelf": "b2", "sensor": "c1", "sku": "soap", "kind": "count", "capacity": 30},
    {"shelf": "b2", "sensor": "c2", "sku": "candle", "kind": "count", "capacity": 20},
]
"""A small store: two weight shelves and two counting shelves."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_config(
    directory: Path,
    *,
    hub_url: str,
    mqtt_port: int,
    sensors: list[dict[str, Any]] | None = None,
    settle_s: float = 0.3,
    silent_after_s: float = 30.0,
    tick_s: float = 0.05,
    batch: int = 100,
    max_events: int = 10_000,
    client_id: str = "gw-test",
) -> Path:
    """Write ``edge.toml`` (outbox ``outbox.db`` next to it) and return its path."""
    lines = [
        f"boutique = {_toml_value(BOUTIQUE)}",
        "",
        "[hub]",
        f"url = {_toml_value(hub_url)}",
        f"batch = {batch}",
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        f"client_id = {_toml_value(client_id)}",
        "",
        "[outbox]",
        'path = "outbox.db"',
        f"max_events = {max_events}",
        "",
        "[smoothing]",
        f"settle_s = {settle_s}",
        f"silent_after_s = {silent_after_s}",
        f"tick_s = {tick_s}",
    ]
    for sensor in sensors if sensors is not None else SENSORS:
        lines += ["", "[[sensors]]", *(f"{k} = {_toml_value(v)}" for k, v in sensor.items())]
    path = directory / "edge.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def load(config: Path) -> GatewayConfig:
    """``load_config`` off the event loop (it reads the file)."""
    return await asyncio.to_thread(load_config, config)


async def outbox_status(config: Path) -> OutboxStatus:
    """The status of the outbox next to ``config`` (``soko edge status``'s data), read off the loop."""
    return await asyncio.to_thread(read_status, config.parent / "outbox.db")


class GatewayTask:
    """A gateway running in this event loop; :meth:`stop` cancels it as a shutdown would."""

    def __init__(self, cfg: GatewayConfig, token: str) -> None:
        self.cfg = cfg
        self.token = token
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        token = self.token
        self.task = asyncio.create_task(Gateway(self.cfg, lambda: token).run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class GatewayProcess:
    """``soko edge run`` as a real subprocess, so a test can ``kill -9`` it."""

    def __init__(self, config: Path, token: str) -> None:
        self.config = config
        self.env = {**os.environ, "SOKO_EDGE_TOKEN": token, "SOKO_LOG_LEVEL": "INFO"}
        self.log = config.parent / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.soko", "edge", "run", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    async def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        await kill(self.proc)

    async def stop(self) -> None:
        await terminate(self.proc, grace=10)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


@dataclass
class HubInventory:
    """What the hub holds for a boutique: levels by SKU and every ``inv:`` entry in order."""

    levels: dict[str, int]
    entries: list[dict[str, Any]]


async def _call(sio: socketio.AsyncClient, event: str, data: dict[str, Any]) -> Any:
    """Call and return the ack's data, waiting out the hub's rate limit (tests may slow it down)."""
    while True:
        reply = await sio.call(event, data, timeout=30)
        if reply["ok"]:
            return reply["data"]
        assert reply["error"]["name"] == "rate_limited", reply
        await asyncio.sleep(0.3)


async def hub_inventory(url: str, staff_token: str, boutique: str = BOUTIQUE) -> HubInventory:
    """Read the boutique's levels (``stock.levels``) and its whole inventory stream (``catchup``)."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, auth={"token": staff_token}, transports=["websocket"], wait_timeout=10)
    try:
        levels: dict[str, int] = {}
        after: str | None = None
        while True:
            data = await _call(sio, "stock.levels", {"boutique_id": boutique, "after": after})
            for item in data["items"]:
                levels[item["sku"]] = item["level"]
            if not data["has_more"]:
                break
            after = data["next_after"]
        entries: list[dict[str, Any]] = []
        epoch: str | None = None
        while True:
            page = await _call(
                sio,
                "catchup",
                {"stream": f"inv:{boutique}", "epoch": epoch, "after": len(entries), "limit": 500},
            )
            epoch = page["epoch"] or None
            entries += page["entries"]
            if not page["has_more"]:
                return HubInventory(levels, entries)
    finally:
        await sio.disconnect()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it returns True; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.05)
