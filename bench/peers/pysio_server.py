"""Stock python-socketio ``AsyncServer`` on aiohttp + uvloop, defaults everywhere.

``join(room)`` enters the room and acks ``True``; ``pub({"room", ...})`` emits ``msg`` with the
same object to the room and acks ``True``.
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvloop
from aiohttp import web


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp")

    @sio.on("join")
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.on("pub")
    async def pub(sid: str, data: dict[str, Any]) -> bool:
        await sio.emit("msg", data, room=data["room"])
        return True

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
