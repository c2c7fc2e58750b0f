"""HTTP routes: health, readiness, metrics, and the service API.

Service endpoints take ``Authorization: Bearer <JWT>`` with role ``service``, a
JSON body of at most the frame cap, and answer with the ack envelope: ``200`` with
``{"ok": true, "data": ...}``, or ``4xx/5xx`` with ``{"ok": false, "error": ErrorBody}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.auth import Principal, TokenVerifier
from hub.metrics import HubMetrics
from hub.services import Services
from protocol import messages as m
from protocol.codec import decode_json, encode_json, to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role

log = logging.getLogger(__name__)

_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_ID: 400,
    ErrorCode.TEXT_TOO_LONG: 400,
    ErrorCode.INVALID_POSITION: 400,
    ErrorCode.FUTURE_TIMESTAMP: 400,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
}

ReadyCheck = Callable[[], Awaitable[dict[str, str]]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode_json(data), status=status, content_type="application/json")


async def read_capped(request: web.Request, cap: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds ``cap`` bytes.

    (``StreamReader.read(n)`` returns whatever is buffered, which may be part of the body.)
    """
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def error_response(exc: SokoError) -> web.Response:
    """The JSON error for a domain failure, with the HTTP status that fits its code."""
    return _json({"ok": False, "error": to_wire(exc.body())}, status=_STATUS.get(exc.code, 500))


class ServiceApi:
    """Routes for other services, monitoring and probes."""

    def __init__(
        self, verifier: TokenVerifier, metrics: HubMetrics, ready: ReadyCheck, max_body: int
    ) -> None:
        self._bound: Services | None = None
        self._verifier = verifier
        self._metrics = metrics
        self._ready = ready
        self._max_body = max_body

    def bind(self, services: Services) -> None:
        """Give the API its services; done once at startup, before the first request."""
        self._bound = services

    @property
    def _services(self) -> Services:
        if self._bound is None:
            raise SokoError(ErrorCode.UNAVAILABLE, "the hub is starting")
        return self._bound

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.post("/api/v1/events", self.post_event),
            web.post("/api/v1/notifications", self.post_notification),
            web.post("/api/v1/stock", self.post_stock),
            web.post("/api/v1/boutiques", self.post_boutique),
        ]

    async def healthz(self, _request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return _json({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """Readiness, with one entry per dependency in ``checks``.

        200 ``ok``: everything answers. 200 ``degraded``: an optional dependency (the
        broker, Kafka) is down; this node still serves its own sockets, so a load
        balancer should keep it. 503 ``unavailable``: the store is down; nothing
        durable can be written here.
        """
        checks = await self._ready()
        if checks.get("store") != "ok":
            return _json({"status": "unavailable", "checks": checks}, status=503)
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return _json({"status": status, "checks": checks})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def post_event(self, request: web.Request) -> web.Response:
        """``POST /api/v1/events``: an order or delivery event, applied once per ``event_id``."""

        async def run(body: bytes) -> Any:
            event: m.OrderEvent = decode_json(body, m.OrderEvent)  # type: ignore[arg-type]  # a union, not a class
            return await self._services.orders.apply(event)

        return await self._service_call(request, "events", run)

    async def post_notification(self, request: web.Request) -> web.Response:
        """``POST /api/v1/notifications``: store and deliver one notification."""

        async def run(body: bytes) -> Any:
            return await self._services.notifications.create(decode_json(body, m.NotificationCreate))

        return await self._service_call(request, "notifications", run)

    async def post_stock(self, request: web.Request) -> web.Response:
        """``POST /api/v1/stock``: one stock change, applied once per ``(boutique_id, event_id)``."""

        async def run(body: bytes) -> Any:
            event: m.StockEvent = decode_json(body, m.StockEvent)  # type: ignore[arg-type]  # a union, not a class
            outcome = await self._services.inventory.apply_service(event)
            self._metrics.count_stock(outcome, "http")
            return outcome

        return await self._service_call(request, "stock", run)

    async def post_boutique(self, request: web.Request) -> web.Response:
        """``POST /api/v1/boutiques``: where a boutique is (pickup point, dispatch searches)."""

        async def run(body: bytes) -> Any:
            return await self._services.location.locate_boutique(decode_json(body, m.BoutiqueLocation))

        return await self._service_call(request, "boutiques", run)

    async def _service_call(
        self, request: web.Request, route: str, run: Callable[[bytes], Awaitable[Any]]
    ) -> web.Response:
        try:
            self._authenticate_service(request)
            if request.content_length is not None and request.content_length > self._max_body:
                raise SokoError(ErrorCode.FRAME_TOO_LARGE, f"body larger than {self._max_body} bytes")
            body = await read_capped(request, self._max_body)
            if body is None:
                raise SokoError(ErrorCode.FRAME_TOO_LARGE, f"body larger than {self._max_body} bytes")
            response = _json({"ok": True, "data": to_wire(await run(body))})
        except SokoError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("service route %s failed", route)
            response = error_response(SokoError(ErrorCode.INTERNAL, "internal error; retry later"))
        self._metrics.http_requests.labels(route, str(response.status)).inc()
        return response

    def _authenticate_service(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise SokoError(ErrorCode.UNAUTHENTICATED, "Authorization: Bearer <service JWT> is required")
        principal = self._verifier.verify(token.strip())
        if principal.role is not Role.SERVICE:
            raise SokoError(ErrorCode.FORBIDDEN, "not allowed: a service token is required")
        return principal
