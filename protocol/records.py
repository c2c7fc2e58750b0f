"""Kafka records: what the hub consumes and produces on the platform's Kafka, besides Socket.IO.

- **Order ingest topics** (default :data:`ORDER_TOPICS`): each record's value is one JSON
  :data:`~protocol.messages.OrderEvent`, exactly the body of ``POST /api/v1/events``.
  Producers should key records by ``order_id`` so one order's events stay in order
  within a partition.
- **Stock ingest topics** (default :data:`STOCK_TOPICS`): each record's value is one JSON
  :data:`~protocol.messages.StockEvent`, exactly the body of ``POST /api/v1/stock``.
  Producers should key records by ``<boutique_id>/<sku>``; reordering across partitions
  is harmless when events carry a source ``version`` (stale ones are ignored).
- **Dead-letter topic** (default :data:`DLQ_TOPIC`): a record the hub can never apply,
  copied with its original key and value byte for byte (so it can be replayed by
  producing it again), plus the :data:`DLQ_HEADERS` saying why and where it came from.
- **Analytics topic** (off unless configured): one :class:`AnalyticsRecord` per
  domain frame in :data:`ANALYTICS_EVENTS` published by a hub node.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final

import msgspec

from protocol import events

ORDER_TOPICS: Final[tuple[str, ...]] = ("orders", "deliveries", "payments")
"""Default order ingest topics (``SOKO_KAFKA_ORDER_TOPICS``)."""
STOCK_TOPICS: Final[tuple[str, ...]] = ("stock",)
"""Default stock ingest topics (``SOKO_KAFKA_STOCK_TOPICS``)."""
GROUP: Final = "soko-hub"
"""Default consumer group of the hub nodes (``SOKO_KAFKA_GROUP``)."""
DLQ_TOPIC: Final = "soko.dlq"
"""Default dead-letter topic (``SOKO_KAFKA_DLQ_TOPIC``)."""
ANALYTICS_TOPIC_EXAMPLE: Final = "soko.analytics"
"""Suggested analytics topic; the producer is off until ``SOKO_KAFKA_ANALYTICS_TOPIC`` names one."""

ANALYTICS_EVENTS: Final[frozenset[str]] = frozenset(
    {events.CHAT_MESSAGE, events.NOTIFICATION, events.STOCK, events.TRACK_POSITION}
)
"""Server events copied to the analytics topic: chat messages, notifications, applied stock
changes and driver positions (after the GPS filters, only for orders being delivered).

Excluded on purpose: typing indicators, read marks, presence, badges and session frames
(high volume, no business fact), ``order.updated`` (it restates order events the platform
already has on its own topics), and ``track.ended`` (it restates ``delivered``).
"""

DLQ_ERROR_CODE: Final = "soko.error.code"
DLQ_ERROR_NAME: Final = "soko.error.name"
DLQ_ERROR_MESSAGE: Final = "soko.error.message"
DLQ_SOURCE_TOPIC: Final = "soko.source.topic"
DLQ_SOURCE_PARTITION: Final = "soko.source.partition"
DLQ_SOURCE_OFFSET: Final = "soko.source.offset"
DLQ_NODE: Final = "soko.node"
DLQ_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        DLQ_ERROR_CODE: "The numeric error code (docs: x-error-codes), e.g. 1000.",
        DLQ_ERROR_NAME: "The error code's name, e.g. bad_request.",
        DLQ_ERROR_MESSAGE: "What was wrong, for a human.",
        DLQ_SOURCE_TOPIC: "The topic the record was read from.",
        DLQ_SOURCE_PARTITION: "Its partition, in decimal.",
        DLQ_SOURCE_OFFSET: "Its offset in that partition, in decimal.",
        DLQ_NODE: "The id of the hub node that gave up on it.",
    }
)
"""Every header of a dead-lettered record, in this order, with its meaning. Values are UTF-8 text."""


class AnalyticsRecord(msgspec.Struct, kw_only=True):
    """One analytics record: a domain frame as it left one hub node, once per publish.

    ``data`` is the frame exactly as sockets receive it (the Struct named for ``event``
    in :data:`protocol.events.SERVER_EVENTS`). ``rooms`` are the Socket.IO rooms it was
    published to (e.g. ``user:alice``, ``staff:b1``, a chat stream id). The record key
    is the first room, so one room's records keep their order within a partition.
    Delivery is best effort: records are dropped, and counted, when Kafka is slow or
    down, and a producer retry can write one twice (``data`` carries the frame's
    ``stream``/``seq`` or notification ``id`` to dedupe on).
    """

    event: Annotated[str, msgspec.Meta(description="The server event name, one of ANALYTICS_EVENTS.")]
    node: Annotated[str, msgspec.Meta(description="Id of the hub node that published the frame.")]
    ts: Annotated[int, msgspec.Meta(description="When it was published, milliseconds since the Unix epoch.")]
    rooms: Annotated[list[str], msgspec.Meta(description="The Socket.IO rooms it was published to.")]
    data: Annotated[Any, msgspec.Meta(description="The frame, as sockets receive it.")]
