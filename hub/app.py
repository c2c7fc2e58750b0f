"""Composition root: builds the aiohttp application and owns every resource's lifetime.

Resources (store, broker, node, services) are created in a ``cleanup_ctx`` and
closed in reverse order. On shutdown (SIGTERM) the hub stops accepting, tells every
client to reconnect, lets queued frames flush, then closes the broker and store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from hub.auth import TokenVerifier
from hub.broker.memory import open_broker
from hub.config import Settings
from hub.metrics import HubMetrics
from hub.node import Node
from hub.services import Services, build_services
from hub.transport.gateway import SocketGateway
from hub.transport.http import ServiceApi
from storage import Store, open_store

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", HubMetrics)
GATEWAY = web.AppKey("gateway", SocketGateway)
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", Store)
NODE = web.AppKey("node", Node)
API = web.AppKey("api", ServiceApi)


def create_app(settings: Settings) -> web.Application:
    """The hub application for ``settings``. Nothing is opened until the app starts."""
    app = web.Application(client_max_size=settings.max_frame_bytes)
    metrics = HubMetrics()
    verifier = TokenVerifier(settings)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    gateway = SocketGateway(settings, metrics, verifier, settings.node_id)
    app[GATEWAY] = gateway
    api = ServiceApi(verifier, metrics, lambda: _readiness(app), settings.max_frame_bytes)
    app[API] = api
    app.add_routes(api.routes())
    gateway.attach(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await open_store(settings.store_url)
    broker = open_broker(settings.broker)
    node = Node(settings.node_id, broker, app[METRICS])
    services = build_services(store, node, settings)
    app[GATEWAY].bind(services)
    app[API].bind(services)
    app[STORE] = store
    app[NODE] = node
    app[SERVICES] = services
    await node.start(app[GATEWAY])
    await app[GATEWAY].start()
    log.info(
        "hub node %s ready (store %s, broker %s)",
        settings.node_id,
        _redact(settings.store_url),
        _redact(settings.broker),
    )
    try:
        yield
    finally:
        await broker.close()
        await store.close()
        log.info("hub node %s stopped; store closed", settings.node_id)


async def _on_shutdown(app: web.Application) -> None:
    await app[GATEWAY].shutdown()


async def _readiness(app: web.Application) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        await app[STORE].ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"down: {type(exc).__name__}"
    checks["broker"] = "ok" if app[NODE].healthy() else "down"
    return checks


def _redact(url: str) -> str:
    """Hide credentials in a URL before logging it."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
