"""Stopping the real server subprocesses tests start (redis-server, mosquitto, soko edge)."""

from __future__ import annotations

import asyncio
import signal
import subprocess


async def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """``kill -9`` ``proc`` if it is running, and wait until it is gone."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)


async def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM ``proc`` if it is running and wait; ``kill -9`` it after ``grace`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), grace)
        except TimeoutError:
            await kill(proc)
