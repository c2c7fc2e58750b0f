"""The boutique staff console: a static page under ``/console``, served from the installed package.

Only the files named in :data:`FILES` are served (no directory listing, no path from the
request ever reaches the file system). They are read once when the app starts and kept
in memory. Every response under ``/console``, errors included, carries
:data:`SECURITY_HEADERS`: a Content-Security-Policy that allows scripts, styles and
connections from the hub's own origin only (no inline script, no framing), and no
referrer, so the token a sign-in link carries in its fragment cannot leak. The page talks
to the hub over Socket.IO on the same origin, which the Origin check always admits.
"""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources

from aiohttp import web

PACKAGE = "hub"
DIRECTORY = "console"
FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
    "socket.io.min.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
"""Every file the console consists of, with its media type. ``socket.io.min.js`` is the official
socket.io-client browser bundle, vendored byte for byte at the version tests/node pins."""
INDEX = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        # 'self' covers ws:/wss: to the same host (CSP Level 3), which Socket.IO uses after polling.
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class _Asset:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def read_files() -> dict[str, bytes]:
    """The console's files from the installed ``hub`` package (blocking file reads).

    Raises:
        FileNotFoundError: when the installation lacks one of them.
    """
    folder = resources.files(PACKAGE).joinpath(DIRECTORY)
    return {name: folder.joinpath(name).read_bytes() for name in FILES}


class ConsoleSite:
    """Serves ``GET /console`` (the page) and ``GET /console/<file>`` (its assets)."""

    def __init__(self) -> None:
        self._assets: dict[str, _Asset] = {}

    async def load(self, _app: web.Application) -> None:
        """Read the files off the event loop; an ``on_startup`` hook, so a broken install fails at start."""
        files = await asyncio.to_thread(read_files)
        self._assets = {name: _Asset(body, FILES[name]) for name, body in files.items()}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.page),
            web.get("/console/", self.page),
            web.get("/console/{name}", self.asset),
        ]

    async def page(self, request: web.Request) -> web.Response:
        return self._serve(request, INDEX)

    async def asset(self, request: web.Request) -> web.Response:
        return self._serve(request, request.match_info["name"])

    def _serve(self, request: web.Request, name: str) -> web.Response:
        asset = self._assets.get(name)
        if asset is None:
            return web.Response(status=404, text="not found", headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
        )
