"""Every payload on the wire, as msgspec Structs.

Client -> server requests are decoded strictly (unknown fields are rejected, ids
and streams must match their patterns, sizes are bounded). Server -> client frames
are encoded from the same Structs. Durable frames (``ChatFrame``,
``NotificationFrame``) always carry ``stream``, ``seq`` and ``epoch``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol.errors import ErrorBody
from protocol.ids import ID_PATTERN, STREAM_PATTERN

MAX_TEXT_CHARS = 4000
"""Longest chat message text, in characters."""
MAX_PAGE = 500
"""Largest page a catch-up or history request may ask for."""
DEFAULT_PAGE = 100
MAX_CURSORS = 1000
"""Most streams one ``sync`` request may name."""
MAX_TITLE_CHARS = 200
MAX_BODY_CHARS = 2000
MAX_DATA_KEYS = 32

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
StreamId = Annotated[str, msgspec.Meta(pattern=STREAM_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
PageSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]
Epoch = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ChatText = Annotated[str, msgspec.Meta(min_length=1)]
"""Length beyond MAX_TEXT_CHARS is reported as TEXT_TOO_LONG by the domain, not as a decode error."""
Category = Literal["order", "delivery", "payment", "chat", "stock", "device", "system"]
CATEGORIES: tuple[str, ...] = ("order", "delivery", "payment", "chat", "stock", "device", "system")
OrderStatus = Literal[
    "created", "confirmed", "preparing", "ready", "picked_up", "in_transit", "delivered", "cancelled"
]


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every client -> server payload."""


class Frame(msgspec.Struct, kw_only=True):
    """Base of every server -> client payload."""


# ---------------------------------------------------------------- acks


class AckOk(Frame):
    """Successful ack envelope: ``{"ok": true, "data": ...}``."""

    ok: Literal[True] = True
    data: Any = None


class AckError(Frame, kw_only=True):
    """Failed ack envelope: ``{"ok": false, "error": {...}}``."""

    ok: Literal[False] = False
    error: ErrorBody


# ---------------------------------------------------------------- durable frames


class ChatFrame(Frame, tag="chat", tag_field="kind"):
    """One chat message, live or from catch-up/history. Text is inert: never markup."""

    stream: str
    seq: int
    epoch: str
    ts: int
    """Server time of the durable write, milliseconds since the Unix epoch."""
    author: str
    author_role: str
    client_id: str
    text: str


class NotificationFrame(Frame, tag="notification", tag_field="kind"):
    """One notification from an inbox stream.

    ``alert`` is False when the category is muted by the recipient; the entry still
    belongs to the inbox. ``badge`` is the recipient's unread count after this entry
    (only meaningful on live frames; 0 in pages).
    """

    stream: str
    seq: int
    epoch: str
    ts: int
    id: str
    category: str
    title: str
    body: str
    data: dict[str, Any] = {}
    alert: bool = True
    badge: int = 0


DurableFrame = ChatFrame | NotificationFrame


# ---------------------------------------------------------------- catch-up


class Cursor(Request):
    """Where a client's copy of one stream ends."""

    stream: StreamId
    epoch: Epoch | None = None
    seq: Seq = 0


class SyncRequest(Request):
    """``sync``: sent on connect and after a gap. Names the cursors the client holds."""

    cursors: Annotated[list[Cursor], msgspec.Meta(max_length=MAX_CURSORS)] = []


class StreamStatus(Frame):
    """A visible stream's head, as answered to ``sync``.

    ``behind`` is True when the client must page with ``catchup``. ``recovered`` is
    False when the client's epoch or cursor is unknown to the server: the client must
    drop its copy and catch up from seq 0 of ``epoch``.
    """

    stream: str
    epoch: str
    head: int
    behind: bool
    recovered: bool
    unread: int = 0


class SyncReply(Frame):
    streams: list[StreamStatus]


class CatchupRequest(Request):
    """``catchup``: the next page of entries after ``after`` in ``stream``."""

    stream: StreamId
    epoch: Epoch | None = None
    after: Seq = 0
    limit: PageSize = DEFAULT_PAGE


class CatchupPage(Frame):
    """Entries with ``seq > after``, ascending, at most ``limit``.

    When ``recovered`` is False the client's epoch or cursor was not valid; the page
    then starts from the beginning of the current epoch and the client must reset.
    ``has_more`` tells whether another page follows ``next_after``.
    """

    stream: str
    epoch: str
    recovered: bool
    entries: list[DurableFrame]
    next_after: int
    head: int
    has_more: bool


# ---------------------------------------------------------------- chat


class ChatSend(Request):
    """``chat.send``: append a message. ``client_id`` is a client-generated ULID."""

    stream: StreamId
    client_id: Id
    text: ChatText


class ChatSent(Frame):
    """Ack data of ``chat.send``, sent only after the durable write."""

    stream: str
    seq: int
    epoch: str
    ts: int
    client_id: str
    duplicate: bool


class HistoryRequest(Request):
    """``chat.history``: up to ``limit`` entries before ``before`` (or the newest)."""

    stream: StreamId
    before: Seq | None = None
    limit: PageSize = DEFAULT_PAGE


class HistoryPage(Frame):
    """Entries ascending by seq. ``has_more`` tells whether older entries exist."""

    stream: str
    epoch: str
    entries: list[DurableFrame]
    has_more: bool


class ReadRequest(Request):
    """``chat.read``: the reader has seen everything up to ``seq``."""

    stream: StreamId
    seq: Seq


class ReadFrame(Frame):
    """``chat.read`` to participants: ``party`` has read up to ``seq``."""

    stream: str
    party: str
    seq: int


class TypingRequest(Request):
    """``chat.typing``: ephemeral; dropped silently when over the typing rate."""

    stream: StreamId


class TypingFrame(Frame):
    stream: str
    user: str
    role: str


class ConversationListRequest(Request):
    """``chat.list``: the caller's conversations, newest activity first."""

    limit: PageSize = DEFAULT_PAGE


class Conversation(Frame):
    stream: str
    epoch: str
    head: int
    last_ts: int
    unread: int
    read_seq: int
    peer_read_seq: int


class ConversationList(Frame):
    conversations: list[Conversation]


class PresenceRequest(Request):
    """``presence.watch``: current presence of boutiques, then ``presence`` frames on change."""

    boutiques: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=100)]


class PresenceFrame(Frame):
    boutique: str
    online: bool


class PresenceReply(Frame):
    boutiques: list[PresenceFrame]


# ---------------------------------------------------------------- notifications


class NotifyAckRequest(Request):
    """``notify.ack``: the device has these notifications; stop redelivering them."""

    stream: StreamId
    seqs: Annotated[list[Seq], msgspec.Meta(min_length=1, max_length=MAX_PAGE)]


class NotifyReadRequest(Request):
    """``notify.read``: the user has seen the inbox up to ``seq``; lowers the badge."""

    stream: StreamId
    seq: Seq


class BadgeFrame(Frame):
    """``notify.badge``: the unread count of an inbox."""

    stream: str
    badge: int


class PrefsRequest(Request):
    """``notify.prefs``: read, or replace when ``muted`` is given, the muted categories."""

    muted: list[Category] | None = None


class PrefsReply(Frame):
    muted: list[str]


class NotificationCreate(Request):
    """Body of ``POST /api/v1/notifications`` (service token)."""

    user: Id
    category: Category
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_CHARS)]
    body: Annotated[str, msgspec.Meta(max_length=MAX_BODY_CHARS)] = ""
    data: Annotated[dict[str, Any], msgspec.Meta(max_length=MAX_DATA_KEYS)] = {}
    id: Id | None = None
    """Optional idempotency key chosen by the caller; a retry with the same id has no new effect."""


class NotificationCreated(Frame):
    id: str
    stream: str
    seq: int
    epoch: str
    duplicate: bool


# ---------------------------------------------------------------- orders


class OrderCreated(Request, tag="order.created", tag_field="type"):
    event_id: Id
    order_id: Id
    shopper_id: Id
    boutique_id: Id
    total_cents: Annotated[int, msgspec.Meta(ge=0)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None


class OrderStatusUpdated(Request, tag="order.status_updated", tag_field="type"):
    event_id: Id
    order_id: Id
    status: OrderStatus


class DeliveryAssigned(Request, tag="delivery.assigned", tag_field="type"):
    event_id: Id
    order_id: Id
    driver_id: Id


class PaymentCompleted(Request, tag="payment.completed", tag_field="type"):
    """The order's payment succeeded: a receipt to its shopper, a "new paid order" to its boutique."""

    event_id: Id
    order_id: Id
    amount_cents: Annotated[int, msgspec.Meta(ge=0)]
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]


OrderEvent = OrderCreated | OrderStatusUpdated | DeliveryAssigned | PaymentCompleted
"""Body of ``POST /api/v1/events`` (service token), discriminated by ``type``."""


class EventAccepted(Frame):
    event_id: str
    duplicate: bool


class OrderView(Frame):
    """An order as the hub knows it."""

    order_id: str
    shopper_id: str
    boutique_id: str
    status: str
    driver_id: str | None
    updated_ts: int


class OrderWatchRequest(Request):
    """``order.watch`` / ``order.unwatch``."""

    order_id: Id


class OrderListRequest(Request):
    """``order.list``: the caller's orders, newest first."""

    limit: PageSize = DEFAULT_PAGE


class OrderList(Frame):
    orders: list[OrderView]


class OrderUpdatedFrame(Frame):
    """``order.updated``: to everyone watching the order."""

    order: OrderView


# ---------------------------------------------------------------- session


class SessionClosing(Frame):
    """``session.closing``: sent just before the server disconnects a socket.

    ``reconnect`` tells the client whether reconnecting (with a fresh token if the
    code is TOKEN_EXPIRED) is expected to work.
    """

    error: ErrorBody
    reconnect: bool


class ResyncFrame(Frame):
    """``resync``: live frames may have been lost; the client should run ``sync`` now.

    Sent when a hub node's link to the other nodes comes back after an outage.
    Durable entries are never lost (they are in the store); this makes the client
    fetch them now instead of at its next gap or reconnect.
    """

    reason: str


class Welcome(Frame):
    """``welcome``: first frame after connect."""

    protocol: int
    user: str
    role: str
    boutique: str | None
    node: str
    token_expires_at: int
