"""SecantusDB, a MongoDB-wire-compatible server, run in its own process for tests.

``SecantusServer(storage_dir).start()`` runs ``python -m tests.support.mongo <dir>``,
which starts ``secantus.SecantusDBServer(port=0)`` (a replica-set primary named
``secantus``, WiredTiger with its journal on), prints the port it bound and serves
until its standard input closes. So the server also goes away when the test run is
killed, and its pure-Python request handling never competes with the tests' event
loop for the GIL.

``url(database)`` is a ``mongodb://`` URL for one database on that server; tests use a
fresh database name each, so one server serves a whole session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 15.0


class SecantusServer:
    """One SecantusDB server process on a random loopback port."""

    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the server and wait until it listens.

        Raises:
            RuntimeError: when the process exits before reporting its port.
        """
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.mongo", str(self.storage_dir)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"SecantusDB did not start (said {line!r}, exit {self._proc.returncode})")
        self.port = int(line)

    def url(self, database: str) -> str:
        return f"mongodb://127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Close the server's stdin (it stops and checkpoints), killing it if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _serve(storage_dir: str) -> None:
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=storage_dir, cache_size="256M")
    server.start()
    try:
        print(server.port, flush=True)
        sys.stdin.read()  # until the parent closes our stdin or dies
    finally:
        server.stop()


if __name__ == "__main__":
    _serve(sys.argv[1])
