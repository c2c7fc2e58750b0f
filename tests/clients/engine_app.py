"""A headless "app" process for the kill tests: the sync engine over a local store, nothing else.

    python -m tests.clients.engine_app compose STORE URL TOKEN STREAM COUNT
        Queue COUNT chat messages ``m000``, ``m001``... to STREAM while the engine runs against
        URL (unreachable in the tests), print ``queued COUNT``, then keep running until killed.
    python -m tests.clients.engine_app run STORE URL TOKEN
        Run the engine; print ``acked <client_id>`` for each outbox ack and ``state <label>`` for
        each state change, until killed or SIGTERM.

Every line is flushed at once, so the test reads progress as it happens.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from clients.common.engine import SyncEngine
from clients.common.state import Change
from clients.common.store import LocalStore


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def report(change: Change) -> None:
    if change.kind == "outbox" and change.status == "acked":
        say(f"acked {change.client_id}")
    elif change.kind == "state" and change.state is not None:
        say(f"state {change.state.label}")


async def main(argv: list[str]) -> None:
    mode, path, url, token = argv[:4]
    store = await LocalStore.open(path)
    engine = SyncEngine(url, token, store, backoff_cap=0.3)
    engine.subscribe(report)
    task = asyncio.create_task(engine.run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if mode == "compose":
        stream, count = argv[4], int(argv[5])
        for i in range(count):
            await engine.send_chat(stream, f"m{i:03d}")
        say(f"queued {count}")
    await stop.wait()
    await engine.close()
    await task
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
