"""CPU per delivery of the hub's room fan-out alone, against a bare ``transport.write`` per recipient.

``python -m bench.fanout_cpu [--recipients 1000] [--emits 200] [--rounds 5]``

The full harness measures whole servers, with the load generator on the same cores. This
isolates the per-recipient work of :class:`hub.transport.fanout.FanoutManager`: a
``HubSocketServer`` on aiohttp + uvloop in this process, ``--recipients`` WebSocket clients
(aiohttp, in two child processes) joined to one room, and the server thread's CPU time
(``time.thread_time``, system time included) around each emit of one small event to the
room. Each round does ``--emits`` emits, 4 ms apart so that the clients keep up; a round's
figure is recipients * emits / CPU seconds. The same rounds are then run writing the same
prebuilt frame with ``transport.write`` to every recipient's socket: the floor, what the
``send`` system calls cost with no Python around them.

Prints one line per mode with each round's deliveries per CPU-second and their median.
Nothing else runs on the machine while it measures, or the figures mean little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from hub.transport.direct import text_frame
from hub.transport.fanout import FanoutManager, websocket_transport
from hub.transport.session import HubSocketServer

ROOM = "room"
EVENT = "stock"
PAYLOAD = {"boutique_id": "b1", "sku": "sku-0001", "available": 12, "seq": 1, "pad": "p" * 100}
CLIENT_PROCESSES = 2
EMIT_GAP_S = 0.004


async def _client(http: aiohttp.ClientSession, url: str) -> None:
    async with http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0) as ws:
        await ws.receive()  # Engine.IO OPEN
        await ws.send_str("40")
        async for msg in ws:
            if msg.data == "2":
                await ws.send_str("3")


async def _clients(url: str, count: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(_client(http, url) for _ in range(count)), return_exceptions=True)


async def _rounds(
    emit: Callable[[], Awaitable[None] | None], recipients: int, emits: int, rounds: int
) -> list[float]:
    figures = []
    for _ in range(rounds):
        cpu = 0.0
        for _ in range(emits):
            started = time.thread_time()
            pending = emit()
            if pending is not None:
                await pending
            cpu += time.thread_time() - started
            await asyncio.sleep(EMIT_GAP_S)
        figures.append(recipients * emits / cpu)
    return figures


async def measure(recipients: int, emits: int, rounds: int) -> dict[str, list[float]]:
    """Deliveries per CPU-second of each round, for ``fanout`` and for the ``floor``."""
    manager = FanoutManager()
    sio = HubSocketServer(client_manager=manager, async_mode="aiohttp")
    joined = 0

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        nonlocal joined
        await sio.enter_room(sid, ROOM)
        joined += 1

    sio.on("connect", connect)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    share = -(-recipients // CLIENT_PROCESSES)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.fanout_cpu", "--clients-for", url, "--recipients", str(n)]
        )
        for n in (share, recipients - share)
        if n
    ]
    try:
        async with asyncio.timeout(120):
            while joined < recipients or any(not manager.takes_direct_writes(e) for e in _eio_sids(manager)):
                await asyncio.sleep(0.1)
        transports: list[Any] = [websocket_transport(sio, eio_sid) for eio_sid in _eio_sids(manager)]
        frame = text_frame(f'42["{EVENT}",{json.dumps(PAYLOAD)}]')

        def floor() -> None:
            for transport in transports:
                transport.write(frame)

        return {
            "fanout": await _rounds(lambda: sio.emit(EVENT, PAYLOAD, room=ROOM), recipients, emits, rounds),
            "floor": await _rounds(floor, recipients, emits, rounds),
        }
    finally:
        for child in children:
            child.terminate()
            child.wait()
        await runner.cleanup()


def _eio_sids(manager: FanoutManager) -> list[str]:
    return [eio_sid for _, eio_sid in manager.get_participants("/", ROOM)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--emits", type=int, default=200, help="emits per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients-for", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_for:
        uvloop.run(_clients(args.clients_for, args.recipients))
        return
    results = uvloop.run(measure(args.recipients, args.emits, args.rounds))
    for mode, figures in results.items():
        rounded = ", ".join(f"{f:,.0f}" for f in figures)
        print(
            f"{mode}: deliveries per CPU-second by round: {rounded}; median {statistics.median(figures):,.0f}"
        )


if __name__ == "__main__":
    main()
