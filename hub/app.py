"""Composition root: builds the aiohttp application and owns every resource's lifetime.

Resources (store, broker, node, services) are created in a ``cleanup_ctx`` and
closed in reverse order. On shutdown (SIGTERM) the hub stops accepting, tells every
client to reconnect, lets queued frames flush, then closes the broker and store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from hub.auth import TokenVerifier
from hub.broker.factory import open_cluster
from hub.config import Settings
from hub.ingest.kafka import KafkaBridge
from hub.ingest.stripe import StripeWebhook
from hub.metrics import HubMetrics
from hub.node import Node
from hub.services import Services, build_services
from hub.transport.console import ConsoleSite
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
STRIPE = web.AppKey("stripe", StripeWebhook)
KAFKA = web.AppKey("kafka", KafkaBridge)


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
    app[STRIPE] = StripeWebhook(settings.stripe_webhook_secret, metrics)
    app.add_routes(app[STRIPE].routes())
    console = ConsoleSite()
    app.add_routes(console.routes())
    app.on_startup.append(console.load)
    gateway.attach(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cluster = open_cluster(settings, app[METRICS])
    # Off unless SOKO_KAFKA_BOOTSTRAP is set; raises naming the extra when aiokafka is missing.
    kafka = KafkaBridge(settings, app[METRICS]) if settings.kafka_bootstrap else None
    async with contextlib.AsyncExitStack() as resources:
        # Each resource is closed in reverse order, also when a later one fails to start.
        store = await open_store(settings.store_url)
        resources.push_async_callback(store.close)
        resources.push_async_callback(cluster.broker.close)
        node = Node(settings.node_id, cluster.broker, app[METRICS])
        if kafka is not None:
            node.set_tap(kafka.tap)
        services = build_services(store, node, cluster.presence, cluster.positions, settings, app[METRICS])
        app[GATEWAY].bind(services, cluster.rate_limiter)
        app[API].bind(services)
        app[STORE] = store
        app[NODE] = node
        app[SERVICES] = services
        await node.start(app[GATEWAY])
        resources.push_async_callback(cluster.presence.close)
        resources.push_async_callback(cluster.positions.close)
        await services.presence.start()
        await app[GATEWAY].start()
        resources.push_async_callback(app[STRIPE].close)
        app[STRIPE].start(services.payments)
        if kafka is not None:
            app[KAFKA] = kafka
            resources.push_async_callback(kafka.stop)
            await kafka.start(services.orders.apply, services.inventory.apply_service, store.ping)
        log.info(
            "hub node %s ready (store %s, broker %s)",
            settings.node_id,
            _redact(settings.store_url),
            _redact(settings.broker),
        )
        yield
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
    if (kafka := app.get(KAFKA)) is not None:
        checks["kafka"] = kafka.health()
    return checks


def _redact(url: str) -> str:
    """Hide credentials in a URL before logging it."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
