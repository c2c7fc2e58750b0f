"""The Python ceiling: a raw ``websockets`` server on uvloop whose fan-out is ``websockets.broadcast``.

Every connection on ``/`` is a subscriber; each text message received on ``/pub`` is broadcast,
unchanged, to every subscriber. No compression, as a tuned deployment would run it.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def serve_forever(port: int) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/pub":
            async for message in ws:
                broadcast(subscribers, message)
            return
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve_forever(parser.parse_args().port))


if __name__ == "__main__":
    main()
