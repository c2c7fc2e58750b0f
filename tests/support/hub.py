"""Start and stop real hubs for tests, in-process or as a ``soko hub`` subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hub.app import create_app
from hub.auth import issue_token
from hub.config import Settings
from protocol.ids import Role

TEST_SECRET = "test-secret-0123456789-0123456789-0123456789"


def mint(
    role: str | Role, sub: str, boutique: str | None = None, ttl: float = 3600.0, secret: str = TEST_SECRET
) -> str:
    """A token the test hubs accept."""
    return issue_token(secret, role=Role(role), sub=sub, boutique=boutique, ttl=ttl)


@dataclass
class RunningHub:
    """A hub serving on ``url``; ``stop()`` shuts it down gracefully (as SIGTERM would)."""

    settings: Settings
    runner: web.AppRunner
    url: str
    port: int
    app: web.Application
    stopped: bool = field(default=False)

    def token(self, role: str | Role, sub: str, boutique: str | None = None, ttl: float = 3600.0) -> str:
        return mint(role, sub, boutique, ttl, secret=self.settings.jwt_secret)

    async def post(
        self, path: str, body: Any, token: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """POST JSON to the service API; returns (status, parsed JSON body)."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as http:
            data = body if isinstance(body, (bytes, str)) else None
            kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
            async with http.post(self.url + path, headers=hdrs, **kwargs) as resp:
                return resp.status, await resp.json(content_type=None)

    async def service(self, path: str, body: Any) -> Any:
        """POST with a service token, assert 200 and ``ok``, and return the envelope's ``data``."""
        status, payload = await self.post(path, body, token=self.token("service", "svc-test"))
        assert status == 200 and payload["ok"] is True, payload
        return payload["data"]

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


async def start_hub(port: int = 0, **overrides: Any) -> RunningHub:
    """Start a hub in this event loop on 127.0.0.1 (a random port unless ``port`` is given)."""
    overrides.setdefault("jwt_secret", TEST_SECRET)
    overrides.setdefault("shutdown_grace", 0.5)
    settings = Settings.from_env(env={}, overrides=overrides)
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=2.0, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningHub(settings=settings, runner=runner, url=f"http://127.0.0.1:{bound}", port=bound, app=app)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """``soko hub`` as a subprocess (real uvloop entry point, real signals)."""

    def __init__(self, data: Path, port: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SOKO_JWT_SECRET": TEST_SECRET,
            "SOKO_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub.soko", "hub", "--port", str(self.port), "--data", str(self.data)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"soko hub exited with {self.proc.returncode}: {err}")
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("soko hub did not become ready")
                await asyncio.sleep(0.1)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        proc = self.proc
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)

    def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await self.wait(10)
            except TimeoutError:
                self.proc.kill()
                await self.wait(5)
