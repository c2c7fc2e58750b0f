"""How domain entries are stored in stream logs and turned back into wire frames.

The store keeps ``payload`` as opaque JSON; this module owns its shape.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import ChatFrame, DurableFrame, NotificationFrame, StockFrame
from storage.base import StoredEntry

_encoder = msgspec.json.Encoder()


class ChatPayload(msgspec.Struct, frozen=True):
    author_role: str
    text: str


class NotificationPayload(msgspec.Struct, frozen=True):
    category: str
    title: str
    body: str
    data: dict[str, Any] = {}


class StockPayload(msgspec.Struct, frozen=True, kw_only=True):
    """One applied stock change. ``alerts`` are the effects it triggered (``low_stock``,
    ``back_in_stock``), kept so a retry can redo them idempotently."""

    boutique_id: str
    sku: str
    level: int
    version: int
    delta: int
    source: str
    alerts: list[str] = []


_chat_decoder = msgspec.json.Decoder(ChatPayload)
_notification_decoder = msgspec.json.Decoder(NotificationPayload)
_stock_decoder = msgspec.json.Decoder(StockPayload)


def encode_payload(payload: ChatPayload | NotificationPayload | StockPayload) -> bytes:
    """JSON bytes for :meth:`storage.base.StreamStore.append`."""
    return _encoder.encode(payload)


def chat_frame(entry: StoredEntry) -> ChatFrame:
    """The wire frame of a stored chat message."""
    p = _chat_decoder.decode(entry.payload)
    return ChatFrame(
        stream=entry.stream,
        seq=entry.seq,
        epoch=entry.epoch,
        ts=entry.ts,
        author=entry.author,
        author_role=p.author_role,
        client_id=entry.client_id,
        text=p.text,
    )


def notification_frame(entry: StoredEntry, *, alert: bool = True, badge: int = 0) -> NotificationFrame:
    """The wire frame of a stored notification."""
    p = _notification_decoder.decode(entry.payload)
    return NotificationFrame(
        stream=entry.stream,
        seq=entry.seq,
        epoch=entry.epoch,
        ts=entry.ts,
        id=entry.client_id,
        category=p.category,
        title=p.title,
        body=p.body,
        data=p.data,
        alert=alert,
        badge=badge,
    )


def stock_payload(entry: StoredEntry) -> StockPayload:
    """The change a stored inventory entry records."""
    return _stock_decoder.decode(entry.payload)


def stock_frame(entry: StoredEntry) -> StockFrame:
    """The wire frame of a stored stock change."""
    p = stock_payload(entry)
    return StockFrame(
        stream=entry.stream,
        seq=entry.seq,
        epoch=entry.epoch,
        ts=entry.ts,
        boutique_id=p.boutique_id,
        sku=p.sku,
        level=p.level,
        version=p.version,
        event_id=entry.client_id,
        delta=p.delta,
    )


def frame_of(entry: StoredEntry) -> DurableFrame:
    """The wire frame of any stored entry, chosen by its stream family."""
    if entry.stream.startswith("chat:"):
        return chat_frame(entry)
    if entry.stream.startswith("inv:"):
        return stock_frame(entry)
    return notification_frame(entry)
