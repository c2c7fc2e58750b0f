"""Start, measure and stop the servers under test, each as its own OS process.

Every server listens on 127.0.0.1 on a free port. CPU time and RSS are read from
``/proc/<pid>`` (Linux only), so they count exactly the server process: the load
generator's own CPU is measured separately. Each server starts with RLIMIT_NOFILE raised
(soft and hard) to ``/proc/sys/fs/nr_open`` when the harness may (root); ``nofile()`` reads
the limit the process really got.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
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
RATE_UNLIMITED = 1_000_000
"""The hub's per-user rate limit (events/s and burst) unless ``SOKO_RATE_*`` is set."""


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


def nofile_limit(pid: int) -> int | None:
    """The soft ``Max open files`` limit of ``pid`` (None: unlimited or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except OSError:
        pass
    return None


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` has open now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def listen_overflows() -> int:
    """Connections this machine dropped so far because a listen queue was full (TcpExt
    ListenOverflows: the client's SYN goes unanswered and is retried after 1, 3, 7, 15 … s)."""
    head, values = Path("/proc/net/netstat").read_text().splitlines()[:2]
    return int(dict(zip(head.split(), values.split(), strict=True)).get("ListenOverflows", 0))


def nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE (``/proc/sys/fs/nr_open``)."""
    return int(Path("/proc/sys/fs/nr_open").read_text())


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

    def nofile(self) -> int | None:
        return nofile_limit(self.pid)

    def socket_capacity(self) -> int | None:
        """How many more sockets fit under the fd limit, keeping 32 spare (None: no limit)."""
        limit = self.nofile()
        return None if limit is None else limit - open_fds(self.pid) - 32

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


def _child_setup(nofile: int) -> None:
    """Runs in the child before exec: SIGTERM it when the orchestrator dies (even by SIGKILL), and
    raise its file descriptor limit to ``nofile`` if allowed (else it keeps the inherited one)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=functools.partial(_child_setup, nr_open()),  # noqa: PLW1509 (prctl, setrlimit only)
        )


def start_redis(workdir: Path) -> tuple[RunningServer, str]:
    """Start a ``redis-server`` without persistence on a free port; returns it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--loglevel", "warning"]
    log = workdir / "redis.log"
    kind = ServerKind("redis", "redis-server", "none")
    return RunningServer(kind, _popen(cmd, dict(os.environ), log), port, log), f"redis://127.0.0.1:{port}/0"


def start(name: str, workdir: Path, *, secret: str | None = None, broker: str | None = None) -> RunningServer:
    """Start server ``name`` (a key of ``SERVERS``) with its files under ``workdir``.

    For ``soko``: ``secret`` is the JWT secret (random when None) and ``broker`` the
    ``SOKO_BROKER`` URL (default: the in-process memory broker). Each hub gets its own SQLite
    file in ``workdir``: SQLite is single-node, so hubs on one Redis never share one.
    """
    kind = SERVERS[name]
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if name == "soko":
        secret = secret or secrets.token_hex(32)
        if broker:
            env["SOKO_BROKER"] = broker
        env.update(SOKO_JWT_SECRET=secret, SOKO_LOG_LEVEL="WARNING")
        # The bench measures delivery, not the per-user event rate limit; set these in the
        # environment to run the hub with its own limits instead.
        env.setdefault("SOKO_RATE_PER_SECOND", str(RATE_UNLIMITED))
        env.setdefault("SOKO_RATE_BURST", str(RATE_UNLIMITED))
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
    server = RunningServer(kind, _popen(cmd, env, log), port, log)
    server.secret = secret or ""
    return server
