"""The Python ceiling: a raw ``websockets`` server on uvloop whose fan-out is ``websockets.broadcast``.

Rooms are named by the path, and every text message a socket sends is broadcast, unchanged, to
its room:

* ``/r/<room>``: a member of ``<room>``; what it sends reaches every member, itself included
  (chat pairs, GPS watchers, reconnect storm);
* ``/p/<room>``: publishes to ``<room>`` without being a member (a GPS driver);
* ``/`` is a member and ``/pub`` a publisher of the fan-out room.

No compression, as a tuned deployment would run it. Rooms are never deleted (the benchmark
makes at most a few thousand).
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve


def room_of(path: str) -> tuple[str, bool]:
    """``(room, member)`` named by a request path."""
    if path.startswith("/r/"):
        return path[3:], True
    if path.startswith("/p/"):
        return path[3:], False
    return "", path != "/pub"


async def serve_forever(port: int) -> None:
    rooms: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        room, member = room_of(ws.request.path if ws.request is not None else "/")
        members = rooms.setdefault(room, set())
        if member:
            members.add(ws)
        try:
            async for message in ws:
                broadcast(members, message)
        finally:
            members.discard(ws)

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve_forever(parser.parse_args().port))


if __name__ == "__main__":
    main()
