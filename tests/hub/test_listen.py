"""How ``soko hub`` listens: a real process, its listening socket read back from the kernel."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.support.hub import HubProcess


@pytest.mark.asyncio
async def test_soko_hub_listens_with_a_deep_backlog_for_reconnect_storms(tmp_path: Path) -> None:
    """aiohttp's default backlog of 128 dropped SYNs when 5k clients reconnected at once (bench storm)."""
    proc = HubProcess(tmp_path / "hubdata")
    await proc.start()
    try:
        listing = await asyncio.to_thread(
            subprocess.run,
            ["ss", "-ltnH", f"sport = :{proc.port}"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        await proc.stop()
    with open("/proc/sys/net/core/somaxconn") as somaxconn:
        expected = min(4096, int(somaxconn.read()))
    backlogs = {int(line.split()[2]) for line in listing.stdout.splitlines()}  # a listener's Send-Q
    assert backlogs == {expected}, listing.stdout
