"""A real Mosquitto MQTT broker (Debian package) on a random port, which tests can kill and restart."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.support.hub import free_port
from tests.support.process import kill, terminate


def _find_binary() -> str:
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")


class MosquittoServer:
    """``mosquitto`` listening on ``127.0.0.1:<port>``, anonymous, with persistence in ``workdir``.

    Persistent sessions (``clean_session=False``) and their queued QoS 1 messages (up to 100000 per client)
    survive a client disconnect, and a graceful :meth:`stop` + :meth:`start` (the broker writes
    ``mosquitto.db`` on SIGTERM); :meth:`kill` is ``kill -9`` and loses what was not yet saved.
    The broker's log goes to ``workdir/mosquitto.log`` (:meth:`log`). :meth:`start` reuses the port.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = _find_binary()
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "max_queued_messages 100000",
            "log_dest stderr",
            # When started as root, mosquitto switches to this user; keep the one that owns workdir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def log(self) -> str:
        """Everything the broker logged so far (all its runs in this workdir)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 10.0) -> None:
        """Start the broker; return once it accepts a TCP connection. Raises if it exits or never listens."""
        self._write_conf()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                pass
            else:
                writer.close()
                await writer.wait_closed()
                if self.proc is not None and self.proc.poll() is None:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"mosquitto did not listen on {self.port}:\n{self.log()[-2000:]}")
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """``kill -9`` the broker and wait until it is gone."""
        await kill(self.proc)

    async def stop(self) -> None:
        """SIGTERM (the broker saves its persistence file) and wait; ``kill -9`` after 5 s."""
        await terminate(self.proc)
