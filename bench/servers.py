"""Start, measure and stop the servers under test, each as its own OS process.

Every server listens on 127.0.0.1 on a free port. CPU time and RSS are read from
``/proc/<pid>`` (Linux only), so they count exactly the server process: the load
generator's own CPU is measured separately.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
_TICK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerKind:
    name: str
    label: str
    dialect: str


SERVERS: dict[str, ServerKind] = {
    k.name: k
    for k in (
        ServerKind("soko", "Soko hub (1 process, SQLite)", "soko"),
        ServerKind("pysio", "stock python-socketio (aiohttp + uvloop)", "sio"),
        ServerKind("node", "Node socket.io 4", "sio"),
        ServerKind("ws", "raw Python websockets.broadcast (uvloop)", "raw"),
    )
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RunningServer:
    """One started server; ``stop()`` terminates it (then kills it after 5 s)."""

    def __init__(self, kind: ServerKind, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.kind = kind
        self.proc = proc
        self.port = port
        self.log = log
        self.secret = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the port accepts connections; raises with the server's log if it died."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind.name} exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    time.sleep(0.3)
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.kind.name} did not listen on {self.port}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the orchestrator dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(name: str, workdir: Path) -> RunningServer:
    """Start server ``name`` (a key of ``SERVERS``) with its files under ``workdir``."""
    kind = SERVERS[name]
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    secret = ""
    if name == "soko":
        secret = secrets.token_hex(32)
        env.update(
            SOKO_JWT_SECRET=secret,
            SOKO_LOG_LEVEL="WARNING",
            # The bench measures fan-out, not the per-user event rate limit.
            SOKO_RATE_PER_SECOND="1000000",
            SOKO_RATE_BURST="1000000",
        )
        data = workdir / "soko-data"
        data.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "hub.soko", "hub", "--port", str(port), "--data", str(data)]
    elif name == "pysio":
        cmd = [sys.executable, "-m", "bench.peers.pysio_server", "--port", str(port)]
    elif name == "ws":
        cmd = [sys.executable, "-m", "bench.peers.ws_server", "--port", str(port)]
    elif name == "node":
        node = shutil.which("node")
        if node is None or not (BENCH / "node" / "node_modules" / "socket.io").is_dir():
            raise RuntimeError("Node socket.io is missing: run `npm ci` in bench/node")
        cmd = [node, str(BENCH / "node" / "server.mjs"), str(port)]
    else:
        raise KeyError(name)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (prctl only, no locks)
        )
    server = RunningServer(kind, proc, port, log)
    server.secret = secret
    return server
