"""Origin allow-list for every browser-reachable route (OWASP: cross-site WebSocket hijacking).

A request whose ``Origin`` header is neither the hub's own origin nor on the
configured allow-list is refused with 403 and ``origin_not_allowed`` before any
Engine.IO session exists. Requests without ``Origin`` (native apps, services) pass:
the header is a browser protection, and browsers always send it cross-origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from protocol.codec import encode_json, to_wire
from protocol.errors import ErrorCode, SokoError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OriginPolicy:
    """Decides whether a browser Origin may talk to this hub."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = frozenset(o.rstrip("/") for o in allowed)

    def allows(self, origin: str | None, *, scheme: str, host: str | None) -> bool:
        """True for no Origin, the hub's own origin (``scheme://host``), or an allow-listed one."""
        if origin is None:
            return True
        origin = origin.rstrip("/")
        return origin in self._allowed or (host is not None and origin == f"{scheme}://{host}")

    def for_engineio(self, origin: str | None, environ: dict[str, Any]) -> bool:
        """The same decision, in the form python-engineio's ``cors_allowed_origins`` callable takes."""
        scheme = environ.get("wsgi.url_scheme", "http")
        return self.allows(origin, scheme=scheme, host=environ.get("HTTP_HOST"))

    def middleware(self) -> Middleware:
        """An aiohttp middleware refusing disallowed Origins with 403 ``origin_not_allowed``."""

        @web.middleware
        async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            if not self.allows(origin, scheme=request.scheme, host=request.host):
                error = SokoError(ErrorCode.ORIGIN_NOT_ALLOWED, f"origin {origin!r} is not allowed")
                return web.Response(
                    status=403,
                    body=encode_json({"ok": False, "error": to_wire(error.body())}),
                    content_type="application/json",
                )
            return await handler(request)

        return check_origin
