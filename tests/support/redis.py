"""A real ``redis-server`` (Debian package) on a random port, which tests can kill and restart."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.hub import free_port
from tests.support.process import kill, terminate


class RedisServer:
    """``redis-server`` without persistence; :meth:`kill` is ``kill -9``, :meth:`start` reuses the port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    pass
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("redis-server did not answer PING")
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """``kill -9`` the server and wait until it is gone."""
        await kill(self.proc)

    async def stop(self) -> None:
        await terminate(self.proc)
