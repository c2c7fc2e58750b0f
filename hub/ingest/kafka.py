"""Kafka in and out: the order-event consumer group and the analytics producer.

Kafka is off unless ``Settings.kafka_bootstrap`` is set; aiokafka is imported only
then. Record schemas: :mod:`protocol.records` and the Kafka channels of
``docs/asyncapi.yaml``.

Ingest
------
The hub nodes form one consumer group (``kafka_group``) over ``kafka_order_topics`` and
``kafka_stock_topics``. A record of an order topic is one JSON
:data:`~protocol.messages.OrderEvent`, applied with the same ``OrderService.apply`` as
``POST /api/v1/events``; a record of a stock topic is one JSON
:data:`~protocol.messages.StockEvent`, applied with the same
``InventoryService.apply_service`` as ``POST /api/v1/stock`` (a stale one is settled
and counted, not dead-lettered: ignoring it is the correct effect).

Delivery is at-least-once. A record's offset is committed only once it is *settled*:
applied, found to be a duplicate, or copied to the dead-letter topic. Commits happen
after every fetched batch, in the rebalance listener for the partitions being revoked,
and on shutdown. A node that dies mid-batch leaves its processed but uncommitted
records to be read again by the node that gets the partition; ``OrderService.apply``
is idempotent by ``event_id`` (event ledger, notification ids derived from the event
id), so reading a record twice has its effects once.

A record that fails:

- not JSON, wrong shape, bad id, larger than ``max_frame_bytes``: dead-lettered at once
  (``bad_request`` 1000, ``invalid_id`` 1003, ``frame_too_large`` 1002);
- a temporary ``SokoError`` (``ErrorCode.temporary``): retried, never skipped;
- ``not_found`` (4001, the order is unknown): retried for ``kafka_not_found_grace``
  seconds, because its ``order.created`` may simply be late (another topic, another
  partition, a producer that retried), then dead-lettered;
- any other ``SokoError``: dead-lettered at once, a retry cannot change the answer;
- any other exception while the store does not answer its ping: retried, never skipped;
- any other exception while the store answers: retried :data:`UNEXPECTED_ATTEMPTS`
  times, then dead-lettered as ``internal`` (5000), so a bug one record triggers
  cannot stall its partition forever.

A record waiting for a retry pauses only its own partition: the order's later events
(producers key records by ``order_id``) stay behind it, in order, and the other
partitions go on. Retries back off exponentially with jitter up to :data:`RETRY_CAP`
seconds. A dead-lettered record is produced to ``kafka_dlq_topic`` with its original
key and value, byte for byte, and the :data:`protocol.records.DLQ_HEADERS`; its offset
is committed only after Kafka acknowledged the copy, so no record is ever dropped.

Analytics
---------
:meth:`KafkaBridge.tap` sees every frame this node publishes
(:meth:`hub.node.Node.set_tap`) and keeps those named in
:data:`protocol.records.ANALYTICS_EVENTS` (chat messages, notifications, stock changes and
driver positions). It never
blocks and never raises: it puts the frame in a bounded queue
(``kafka_analytics_buffer``) or, when the queue is full because Kafka is down or slow,
drops it and counts ``soko_kafka_analytics_dropped_total{reason="buffer_full"}``. A
sender task moves the queue into an aiokafka producer; a record Kafka does not
acknowledge is counted as ``send_failed``. Best effort: a record can be lost while
Kafka is down, or duplicated when the producer retries.

Failure handling
----------------
Each side runs under a supervisor that logs every failure, lets ``CancelledError``
through, and reconnects with capped, jittered backoff (:data:`RECONNECT_CAP` s). While
connected, a probe asks Kafka for its metadata every :data:`PROBE_INTERVAL` s.
:meth:`KafkaBridge.health` is ``"ok"`` or ``"degraded: ..."`` naming the side that is
down; ``/readyz`` reports it as ``checks.kafka``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.config import Settings
from hub.domains.ports import now_ms
from hub.metrics import HubMetrics
from protocol import records
from protocol.codec import decode_json, encode_json
from protocol.errors import ErrorCode, SokoError
from protocol.messages import EventAccepted, OrderEvent, StockAdjust, StockEvent, StockOutcome, StockSet

log = logging.getLogger(__name__)

Apply = Callable[[OrderEvent], Awaitable[EventAccepted]]
"""The domain entry point for one order event (``OrderService.apply``)."""
ApplyStock = Callable[[StockEvent], Awaitable[StockOutcome]]
"""The domain entry point for one stock change (``InventoryService.apply_service``)."""
Ping = Callable[[], Awaitable[None]]
"""Raises when the store does not answer (``Store.ping``)."""

BATCH_MAX = 100
"""Most records taken per fetch; offsets are committed at least this often."""
RETRY_BASE = 0.1
RETRY_CAP = 2.0
"""Longest wait, in seconds, between two attempts at one record."""
RECONNECT_CAP = 5.0
"""Longest wait, in seconds, between two attempts to reconnect to Kafka."""
PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 5.0
UNEXPECTED_ATTEMPTS = 5
"""Attempts at a record whose apply raises an unexpected exception while the store is up."""
REQUEST_TIMEOUT_MS = 10_000
"""Producer request timeout: how long a send may wait for Kafka before it fails."""
CLOSE_TIMEOUT = 5.0
"""Bound, in seconds, on each step of :meth:`KafkaBridge.stop` (final commit, closing a client)."""
INGEST = "ingest"
ANALYTICS = "analytics"

_Frame = tuple[str, tuple[str, ...], Any, int]
"""An analytics frame waiting in the buffer: (event, rooms, data, ts)."""


def _load_aiokafka() -> Any:
    try:
        import aiokafka  # type: ignore[import-untyped]
        import aiokafka.errors  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ValueError(
            f"SOKO_KAFKA_BOOTSTRAP is set but aiokafka is missing: pip install 'soko-live[kafka]' ({exc})"
        ) from None
    return aiokafka


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: a delay in ``[d/2, d]``, ``d = min(cap, base * 2**attempt)``."""
    delay = min(cap, base * 2.0 ** min(attempt, 30))
    return delay / 2 + random.random() * delay / 2  # noqa: S311  (jitter, not secrecy)


@dataclass(slots=True)
class _Retry:
    """A record that failed and waits for its next attempt; its partition is paused."""

    record: Any
    since: float
    """Loop time of the first failure."""
    attempts: int
    due: float
    """Loop time of the next attempt."""


@dataclass(slots=True)
class _Again:
    """The attempt failed; try the record again later."""

    error: SokoError


@dataclass(slots=True)
class _Dead:
    """The record can never be applied; dead-letter it."""

    error: SokoError


class _Rebalance:
    """The consumer's rebalance listener (registered as an aiokafka ``ConsumerRebalanceListener``)."""

    def __init__(self, bridge: KafkaBridge) -> None:
        self._bridge = bridge

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        await self._bridge._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        self._bridge._on_assigned(assigned)


class KafkaBridge:
    """The Kafka consumer group and analytics producer of one hub node.

    Construct, then :meth:`start` once the services exist, and :meth:`stop` before the
    store closes. Raises ``ValueError`` on construction when aiokafka is not installed.
    """

    def __init__(self, settings: Settings, metrics: HubMetrics) -> None:
        self._ak = _load_aiokafka()
        self._ak.abc.ConsumerRebalanceListener.register(_Rebalance)
        self._settings = settings
        self._metrics = metrics
        self._apply: Apply | None = None
        self._apply_stock: ApplyStock | None = None
        self._ping: Ping | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: dict[str, int] = {}
        self._problems: dict[str, str] = {}
        """Side -> why it is down; empty when healthy."""
        self._closing = False
        # Ingest state of the current consumer session. The lock is held for one attempt
        # at one record, or one rebalance step, so the two never interleave.
        self._lock = asyncio.Lock()
        self._consumer: Any = None
        self._dlq: Any = None
        self._generation = 0
        """Bumped on each assignment: records fetched before it are not processed."""
        self._owned: set[Any] = set()
        self._processed: dict[Any, int] = {}
        """Per owned partition, the offset after the last settled record (what to commit)."""
        self._committed: dict[Any, int] = {}
        self._retries: dict[Any, _Retry] = {}
        # Analytics.
        self._queue: asyncio.Queue[_Frame] | None = (
            asyncio.Queue(maxsize=max(1, settings.kafka_analytics_buffer))
            if settings.kafka_analytics_topic
            else None
        )
        self._producer: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, apply: Apply, apply_stock: ApplyStock, ping: Ping) -> None:
        """Start the consumer (when there are ingest topics) and the analytics sender (when enabled).

        Returns at once: connecting happens in the background, and until it succeeds
        :meth:`health` reports the side as degraded.
        """
        self._apply, self._apply_stock, self._ping = apply, apply_stock, ping
        if self._topics():
            self._spawn(INGEST, self._ingest_session)
        if self._queue is not None:
            self._spawn(ANALYTICS, self._analytics_session)

    async def stop(self) -> None:
        """Stop both sides: no new attempt starts, the record in progress finishes, settled
        offsets are committed, the analytics buffer is flushed, and every client is closed.

        Each step that needs Kafka is bounded by :data:`CLOSE_TIMEOUT`; what cannot be
        committed is read again by the next owner of the partition.
        """
        self._closing = True
        try:
            await asyncio.wait_for(self._lock.acquire(), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("kafka: a record is still being applied at shutdown; it will be read again")
        else:
            self._lock.release()  # _closing keeps any new attempt from starting
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            offsets = self._uncommitted(self._owned)
            if offsets:
                try:
                    await asyncio.wait_for(consumer.commit(offsets), CLOSE_TIMEOUT)
                except Exception as exc:
                    log.warning("kafka: final commit failed (%r); those records will be read again", exc)
        await self._flush_analytics()
        await _close(consumer, self._dlq, self._producer)
        self._dlq = self._producer = None

    def health(self) -> str:
        """``"ok"``, or ``"degraded: <side> <why>"`` for each side (ingest, analytics) that is down."""
        if not self._problems:
            return "ok"
        return "degraded: " + "; ".join(f"{side} {why}" for side, why in sorted(self._problems.items()))

    def _topics(self) -> list[str]:
        """Every ingest topic, order topics first."""
        return list(dict.fromkeys((*self._settings.kafka_order_topics, *self._settings.kafka_stock_topics)))

    def _spawn(self, side: str, session: Callable[[], Awaitable[None]]) -> None:
        self._problems[side] = "connecting"
        self._tasks.append(asyncio.create_task(self._supervise(side, session), name=f"kafka-{side}"))

    async def _supervise(self, side: str, session: Callable[[], Awaitable[None]]) -> None:
        """Run ``session`` again and again: it only returns by raising."""
        while True:
            try:
                await session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures.get(side, 0) + 1
                self._failures[side] = failures
                self._problems[side] = f"down ({type(exc).__name__})"
                delay = _backoff(failures, 0.2, RECONNECT_CAP)
                if isinstance(exc, self._ak.errors.KafkaError):
                    log.warning("kafka %s: %r; reconnecting in %.1fs", side, exc, delay)
                else:
                    log.exception("kafka %s failed; reconnecting in %.1fs", side, delay)
                await asyncio.sleep(delay)

    def _up(self, side: str) -> None:
        self._failures[side] = 0
        if self._problems.pop(side, None) is not None:
            log.info("kafka %s connected", side)

    @contextlib.asynccontextmanager
    async def _probing(self, side: str, check: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
        """While the block runs, mark ``side`` down whenever Kafka stops answering ``check``."""

        async def probe() -> None:
            while True:
                await asyncio.sleep(PROBE_INTERVAL)
                try:
                    await asyncio.wait_for(check(), PROBE_TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if side not in self._problems:
                        log.warning("kafka %s: Kafka does not answer (%r)", side, exc)
                    self._problems[side] = "unreachable"
                else:
                    self._up(side)

        task = asyncio.create_task(probe(), name=f"kafka-{side}-probe")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ ingest

    async def _ingest_session(self) -> None:
        s = self._settings
        consumer = self._ak.AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.kafka_group,
            client_id=f"soko-{s.node_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.kafka_session_timeout * 1000),
            heartbeat_interval_ms=int(s.kafka_heartbeat_interval * 1000),
        )
        producer = self._ak.AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            client_id=f"soko-{s.node_id}-dlq",
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        self._consumer, self._dlq = consumer, producer
        try:
            await producer.start()
            consumer.subscribe(self._topics(), listener=_Rebalance(self))
            await consumer.start()
            self._up(INGEST)
            async with self._probing(INGEST, consumer.topics):
                await self._poll(consumer)
        except asyncio.CancelledError:
            raise  # stop() commits what is settled, then closes
        except Exception:
            self._consumer = self._dlq = None
            self._forget(set(self._owned))
            self._owned.clear()
            await _close(consumer, producer)
            raise

    async def _poll(self, consumer: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = min((r.due for r in self._retries.values()), default=loop.time() + 1.0)
            wait_ms = int(min(1.0, max(0.0, due - loop.time())) * 1000)
            generation = self._generation
            batch = await consumer.getmany(timeout_ms=wait_ms, max_records=BATCH_MAX)
            for tp, recs in batch.items():
                for record in recs:
                    if generation != self._generation:
                        # Fetched across a rebalance: read the partition again from here.
                        if tp in self._owned and tp not in self._retries:
                            consumer.seek(tp, record.offset)
                        break
                    if not await self._process(tp, record, None):
                        break
            for tp, retry in list(self._retries.items()):
                if retry.due <= loop.time():
                    await self._process(tp, retry.record, retry)
            await self._commit(consumer)

    async def _process(self, tp: Any, record: Any, retry: _Retry | None) -> bool:
        """One attempt at ``record`` of partition ``tp``; True when it is settled.

        On a retryable failure the record waits in ``_retries`` with its partition
        paused, and False tells the caller to skip the partition's later records.
        """
        async with self._lock:
            if self._closing or tp not in self._owned or self._retries.get(tp) is not retry:
                return False  # revoked or stopping: the partition's next owner reads it again
            verdict = await self._attempt(record, retry)
            if isinstance(verdict, _Dead):
                try:
                    await self._dead_letter(record, verdict.error)
                except self._ak.errors.KafkaError as exc:
                    log.warning("kafka: dead-letter topic unavailable (%r); will retry", exc)
                    verdict = _Again(SokoError(ErrorCode.UNAVAILABLE, "dead-letter topic unavailable"))
                else:
                    verdict = "dead_letter"
            if isinstance(verdict, _Again):
                self._park(tp, record, retry, verdict.error)
                return False
            self._processed[tp] = record.offset + 1
            self._metrics.kafka_records.labels(verdict).inc()
            if retry is not None:
                del self._retries[tp]
                self._metrics.kafka_blocked_partitions.set(len(self._retries))
                # Fetching went on past this record before the pause: read on right after it.
                self._consumer.seek(tp, record.offset + 1)
                self._consumer.resume(tp)
                log.info(
                    "kafka: %s[%d]@%d settled (%s) after %d failed attempts",
                    tp.topic,
                    tp.partition,
                    record.offset,
                    verdict,
                    retry.attempts,
                )
            return True

    async def _attempt(self, record: Any, retry: _Retry | None) -> str | _Again | _Dead:
        """Decode and apply ``record``: ``"applied"``/``"duplicate"``/``"stale"``, or what to do about
        the failure."""
        assert self._apply is not None and self._apply_stock is not None and self._ping is not None
        value = record.value
        if value is None:
            return _Dead(SokoError(ErrorCode.BAD_REQUEST, "record has no value"))
        if len(value) > self._settings.max_frame_bytes:
            return _Dead(
                SokoError(
                    ErrorCode.FRAME_TOO_LARGE, f"value larger than {self._settings.max_frame_bytes} bytes"
                )
            )
        try:
            event = self._decode(record.topic, value)
        except SokoError as exc:
            return _Dead(exc)
        try:
            if isinstance(event, StockSet | StockAdjust):
                outcome = await self._apply_stock(event)
                self._metrics.count_stock(outcome, "kafka")
                return "applied" if outcome.applied else "duplicate" if outcome.duplicate else "stale"
            accepted = await self._apply(event)
        except SokoError as exc:
            if exc.code.temporary:
                return _Again(exc)
            if exc.code is ErrorCode.NOT_FOUND:
                waited = 0.0 if retry is None else asyncio.get_running_loop().time() - retry.since
                if waited < self._settings.kafka_not_found_grace:
                    return _Again(exc)
                return _Dead(SokoError(exc.code, f"{exc.message} (still after {waited:.0f}s)"))
            return _Dead(exc)
        except Exception as exc:
            try:
                await self._ping()
            except Exception:
                return _Again(SokoError(ErrorCode.UNAVAILABLE, "the store does not answer"))
            attempts = 1 + (retry.attempts if retry is not None else 0)
            log.exception("kafka: applying %s failed (attempt %d)", event.event_id, attempts)
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if attempts < UNEXPECTED_ATTEMPTS:
                return _Again(SokoError(ErrorCode.INTERNAL, reason))
            return _Dead(SokoError(ErrorCode.INTERNAL, f"failed {attempts} times: {reason}"))
        return "duplicate" if accepted.duplicate else "applied"

    def _decode(self, topic: str, value: bytes) -> OrderEvent | StockEvent:
        """The record's event, by the kind of topic it was read from.

        Raises:
            SokoError: as :func:`protocol.codec.decode_json`.
        """
        if topic in self._settings.kafka_stock_topics:
            change: StockEvent = decode_json(value, StockEvent)  # type: ignore[arg-type]  # a union
            return change
        event: OrderEvent = decode_json(value, OrderEvent)  # type: ignore[arg-type]  # a union, not a class
        return event

    async def _dead_letter(self, record: Any, error: SokoError) -> None:
        """Copy ``record`` to the dead-letter topic; returns once Kafka acknowledged it."""
        headers = [
            (records.DLQ_ERROR_CODE, str(int(error.code))),
            (records.DLQ_ERROR_NAME, error.code.slug),
            (records.DLQ_ERROR_MESSAGE, error.message),
            (records.DLQ_SOURCE_TOPIC, record.topic),
            (records.DLQ_SOURCE_PARTITION, str(record.partition)),
            (records.DLQ_SOURCE_OFFSET, str(record.offset)),
            (records.DLQ_NODE, self._settings.node_id),
        ]
        await self._dlq.send_and_wait(
            self._settings.kafka_dlq_topic,
            value=record.value,
            key=record.key,
            headers=[(name, text.encode()) for name, text in headers],
        )
        log.warning(
            "kafka: dead-lettered %s[%d]@%d: %s %s",
            record.topic,
            record.partition,
            record.offset,
            error.code.slug,
            error.message,
        )

    def _park(self, tp: Any, record: Any, retry: _Retry | None, error: SokoError) -> None:
        now = asyncio.get_running_loop().time()
        attempts = 1 if retry is None else retry.attempts + 1
        since = now if retry is None else retry.since
        self._retries[tp] = _Retry(
            record, since, attempts, now + _backoff(attempts - 1, RETRY_BASE, RETRY_CAP)
        )
        self._consumer.pause(tp)
        self._metrics.kafka_retries.labels(error.code.slug).inc()
        self._metrics.kafka_blocked_partitions.set(len(self._retries))
        if retry is None:
            log.warning(
                "kafka: %s[%d]@%d failed (%s: %s); retrying, its partition waits",
                tp.topic,
                tp.partition,
                record.offset,
                error.code.slug,
                error.message,
            )

    def _uncommitted(self, partitions: Collection[Any]) -> dict[Any, int]:
        return {
            tp: offset
            for tp, offset in self._processed.items()
            if tp in partitions and self._committed.get(tp) != offset
        }

    async def _commit(self, consumer: Any) -> None:
        offsets = self._uncommitted(self._owned)
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (self._ak.errors.CommitFailedError, self._ak.errors.IllegalStateError) as exc:
            log.info("kafka: commit skipped, the group rebalanced (%r)", exc)
            return
        self._committed.update({tp: off for tp, off in offsets.items() if tp in self._owned})

    async def _on_revoked(self, revoked: Collection[Any]) -> None:
        """Commit what was settled in ``revoked`` before another node takes those partitions."""
        async with self._lock:
            gone = set(revoked)
            self._owned -= gone
            offsets = self._uncommitted(gone)
            consumer = self._consumer
            if offsets and consumer is not None:
                try:
                    await consumer.commit(offsets)
                except self._ak.errors.KafkaError as exc:
                    log.warning("kafka: commit on revoke failed (%r); those records will be read again", exc)
                else:
                    log.info("kafka: revoked; committed %s", _positions(offsets))
            self._forget(gone)

    def _on_assigned(self, assigned: Collection[Any]) -> None:
        self._generation += 1
        self._owned = set(assigned)
        log.info("kafka: assigned %s", _positions(dict.fromkeys(assigned)))

    def _forget(self, partitions: set[Any]) -> None:
        for tp in partitions:
            self._processed.pop(tp, None)
            self._committed.pop(tp, None)
            self._retries.pop(tp, None)
        self._metrics.kafka_blocked_partitions.set(len(self._retries))

    # ------------------------------------------------------------------ analytics

    def tap(self, rooms: Sequence[str], event: str, data: Any) -> None:
        """Buffer one published frame for the analytics topic, if it is an analytics event.

        Never blocks and never raises; when the buffer is full the frame is dropped and counted.
        """
        if self._queue is None or event not in records.ANALYTICS_EVENTS:
            return
        try:
            self._queue.put_nowait((event, tuple(rooms), data, now_ms()))
        except asyncio.QueueFull:
            self._metrics.kafka_analytics_dropped.labels("buffer_full").inc()

    async def _analytics_session(self) -> None:
        assert self._queue is not None
        producer = self._ak.AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=f"soko-{self._settings.node_id}-analytics",
            acks=1,
            enable_idempotence=False,
            linger_ms=20,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        self._producer = producer
        try:
            await producer.start()
            self._up(ANALYTICS)
            async with self._probing(ANALYTICS, producer.client.fetch_all_metadata):
                while True:
                    await self._send(producer, await self._queue.get())
        except asyncio.CancelledError:
            raise  # stop() flushes and closes
        except BaseException:
            self._producer = None
            await _close(producer)
            raise

    async def _send(self, producer: Any, frame: _Frame) -> None:
        event, rooms, data, ts = frame
        record = records.AnalyticsRecord(
            event=event, node=self._settings.node_id, ts=ts, rooms=list(rooms), data=data
        )
        try:
            delivery = await producer.send(
                self._settings.kafka_analytics_topic,
                value=encode_json(record),
                key=rooms[0].encode() if rooms else None,
            )
        except self._ak.errors.KafkaError as exc:
            self._send_failed(exc)
            return
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            self._send_failed(None)
        elif (exc := delivery.exception()) is not None:
            self._send_failed(exc)
        else:
            self._metrics.kafka_analytics_sent.inc()

    def _send_failed(self, exc: BaseException | None) -> None:
        self._metrics.kafka_analytics_dropped.labels("send_failed").inc()
        if ANALYTICS not in self._problems:
            log.warning("kafka analytics: a record was not delivered (%r)", exc)
        self._problems[ANALYTICS] = "send failed"

    async def _flush_analytics(self) -> None:
        """Hand what is still buffered to the producer, if it is connected; count the rest as dropped."""
        queue, producer = self._queue, self._producer
        if queue is None:
            return
        if producer is not None and ANALYTICS not in self._problems:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    while not queue.empty():
                        await self._send(producer, queue.get_nowait())
                    await producer.flush()
            except TimeoutError:
                log.warning("kafka analytics: flush timed out at shutdown")
        if queue.qsize():
            self._metrics.kafka_analytics_dropped.labels("shutdown").inc(queue.qsize())
            log.warning("kafka analytics: %d buffered records dropped at shutdown", queue.qsize())


def _positions(offsets: Mapping[Any, int | None]) -> str:
    """``topic[partition]@offset, ...`` for logs."""
    return ", ".join(
        f"{tp.topic}[{tp.partition}]" + ("" if off is None else f"@{off}")
        for tp, off in sorted(offsets.items(), key=lambda item: (item[0].topic, item[0].partition))
    )


async def _close(*clients: Any) -> None:
    """Stop aiokafka clients, each within :data:`CLOSE_TIMEOUT`, logging (not raising) failures."""
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("kafka: closing %s failed (%r)", type(client).__name__, exc)
