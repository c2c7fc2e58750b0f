"""Redis pub/sub between hub nodes (``redis://host:port/db``).

Delivery path: :meth:`RedisBroker.publish` hands the envelope to this node at once
(so local delivery never depends on Redis), then publishes it on one channel tagged
with this node's id. Every other node's listener hands it to its own node; a node
ignores what it published itself. So each node applies each envelope exactly once
while Redis is up, and this node keeps serving its own sockets while Redis is down.

Pub/sub is at-most-once (see :mod:`hub.broker.base`): envelopes published while
Redis is unreachable are dropped and counted in ``soko_broker_dropped_total``.
When the subscription comes back after a loss, ``on_recovered`` runs so the node
can tell its clients to catch up from the store.

Liveness: the listener reconnects with full-jitter backoff capped at
:data:`RECONNECT_CAP` seconds, so every node resubscribes within about that long
once Redis is back. A heartbeat is published every :data:`HEARTBEAT_INTERVAL`; if
this node does not hear its own heartbeat for :data:`HEARTBEAT_DEADLINE`, the
subscription is declared dead (half-open TCP, a Redis that stopped forwarding) and
rebuilt. :meth:`healthy` is False from then until the next echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Literal

import msgspec
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import RedisError
from redis.retry import Retry

from hub.broker.base import Envelope, OnEnvelope, OnRecovered
from hub.metrics import HubMetrics

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
"""Seconds each step of closing waits for Redis before giving up on it."""
HEARTBEAT_INTERVAL = 0.25
"""Seconds between self-echo heartbeats."""
HEARTBEAT_DEADLINE = 3.0
"""Seconds without hearing our own heartbeat, with nothing left unread, before the subscription is rebuilt."""
RECONNECT_BASE = 0.05
RECONNECT_CAP = 1.0
"""Ceiling of the jittered reconnect delay, in seconds (the resubscribe goal is 2 s)."""


class _Message(msgspec.Struct, array_like=True, frozen=True):
    """What goes on the channel: the publishing node, and an envelope or a heartbeat."""

    origin: str
    kind: Literal["envelope", "heartbeat"]
    envelope: Envelope | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Message)


def redis_client(url: str) -> aioredis.Redis:
    """A client that fails fast: no retries and short timeouts, because callers fall back locally."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        # Explicit, so connecting does not read package metadata from disk on the event loop.
        driver_info=DriverInfo(lib_version=redis.__version__),
    )


class RedisBroker:
    """Fan-out between nodes over one Redis pub/sub channel."""

    def __init__(self, url: str, node_id: str, metrics: HubMetrics, *, channel: str = "soko:fanout") -> None:
        self.client = redis_client(url)
        """Shared with the Redis-backed presence and rate limits (see :mod:`hub.broker.redis_state`)."""
        self._node_id = node_id
        self._metrics = metrics
        self._channel = channel
        self._on_envelope: OnEnvelope | None = None
        self._on_recovered: OnRecovered | None = None
        self._subscribed = asyncio.Event()
        self._last_echo = 0.0
        self._ever_lost = False
        self._failed_attempts = 0
        self._tasks: list[asyncio.Task[None]] = []
        metrics.broker_up.set(0)

    async def start(self, on_envelope: OnEnvelope, on_recovered: OnRecovered) -> None:
        """Start listening; returns once subscribed, or after 2 s with the listener still retrying."""
        self._on_envelope = on_envelope
        self._on_recovered = on_recovered
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="redis-broker-listen"),
            asyncio.create_task(self._heartbeat_forever(), name="redis-broker-heartbeat"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 2.0)
        if not self._subscribed.is_set():
            log.warning("redis broker: not subscribed yet; serving local sockets only until Redis answers")

    async def publish(self, envelope: Envelope) -> None:
        """Apply ``envelope`` on this node, then send it to the others.

        While Redis is down the send is skipped and counted; this never raises for it.
        """
        if self._on_envelope is None:
            raise RuntimeError("broker not started")
        await self._on_envelope(envelope)
        if not self.healthy():
            self._lost("heartbeat echo overdue")
            self._metrics.broker_dropped.inc()
            return
        try:
            await self.client.publish(
                self._channel, _encoder.encode(_Message(self._node_id, "envelope", envelope))
            )
        except (RedisError, OSError) as exc:
            self._metrics.broker_dropped.inc()
            self._lost(f"publish failed: {exc!r}")

    def healthy(self) -> bool:
        """True while subscribed and our own heartbeat came back within the deadline."""
        return self._subscribed.is_set() and time.monotonic() - self._last_echo <= HEARTBEAT_DEADLINE

    async def close(self) -> None:
        """Stop the listener and heartbeat and release the connections, within about
        2 x :data:`CLOSE_TIMEOUT` seconds even when Redis is half-gone (a node must be able to stop)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _done, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
            if stuck:
                log.warning("redis broker: %d task(s) still closing a connection; not waiting", len(stuck))
        self._tasks = []
        self._on_envelope = None
        try:
            await asyncio.wait_for(self.client.aclose(), CLOSE_TIMEOUT)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("redis broker: closing the connection pool failed (%r)", exc)

    # ------------------------------------------------------------------ internals

    def _lost(self, why: str) -> None:
        if self._subscribed.is_set():
            log.warning("redis broker: subscription lost (%s); local delivery continues", why)
            self._metrics.broker_up.set(0)
        self._subscribed.clear()
        self._ever_lost = True

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(repr(exc))
            except Exception:
                log.exception("redis broker: listener failed unexpectedly; restarting it")
                self._lost("listener error")
            self._failed_attempts += 1
            ceiling = min(RECONNECT_CAP, RECONNECT_BASE * 2 ** min(self._failed_attempts, 10))
            delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret
            self._metrics.broker_reconnects.inc()
            await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        """Subscribe on a fresh connection and dispatch until the connection or heartbeat fails."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            subscribed_at = time.monotonic()
            await self._send_heartbeat()
            while True:
                message = await pubsub.get_message(timeout=HEARTBEAT_INTERVAL)
                if message is not None and message.get("type") == "message":
                    await self._dispatch(message["data"])
                echo_age = time.monotonic() - max(self._last_echo, subscribed_at)
                if echo_age <= HEARTBEAT_DEADLINE:
                    continue
                if message is None:  # nothing left unread, and still no echo: the link is dead
                    raise TimeoutError(f"no heartbeat echo for {echo_age:.1f}s")
                # Still reading a backlog: the echo may be in it. Until it comes, this node
                # counts as cut off, so its return triggers the cluster-wide resync.
                self._lost(f"heartbeat echo {echo_age:.1f}s late")
        finally:
            with contextlib.suppress(Exception):  # a dead socket must not hold the listener here
                await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT)  # type: ignore[no-untyped-call]

    async def _dispatch(self, raw: Any) -> None:
        try:
            message = _decoder.decode(raw)
        except msgspec.DecodeError:
            log.warning("redis broker: ignored an undecodable message on %s", self._channel)
            return
        if message.origin != self._node_id:
            if message.envelope is not None and self._on_envelope is not None:
                try:
                    await self._on_envelope(message.envelope)
                except Exception:  # one bad envelope must not cost the subscription
                    log.exception("redis broker: applying an envelope from %s failed", message.origin)
            return
        if message.kind == "heartbeat":
            self._last_echo = time.monotonic()
            if not self._subscribed.is_set():
                self._subscribed.set()
                self._failed_attempts = 0
                self._metrics.broker_up.set(1)
                if self._ever_lost:
                    log.info("redis broker: subscription restored")
                    await self._recovered()

    async def _recovered(self) -> None:
        if self._on_recovered is None:
            return
        try:
            await self._on_recovered()
        except Exception:
            log.exception("redis broker: recovery hook failed")

    async def _send_heartbeat(self) -> None:
        await self.client.publish(self._channel, _encoder.encode(_Message(self._node_id, "heartbeat")))

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self._send_heartbeat()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("redis broker: heartbeat not sent: %r", exc)
