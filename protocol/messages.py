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
Level = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
"""Units of one SKU on hand; never negative."""
SourceVersion = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
MAX_STOCK_BATCH = 100
"""Most stock updates in one ``stock.update`` request."""
MAX_WATCHED_SKUS = 100
"""Most SKUs one ``stock.watch`` request may name."""
MAX_TRACK_POINTS = 2000
"""Largest track page ``track.history`` may ask for."""
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


class StockFrame(Frame, tag="stock", tag_field="kind"):
    """One applied stock change of a boutique's inventory stream (``inv:<boutique>``).

    ``version`` is the SKU's version after the change; it rises by one per applied
    change of that SKU. A client keeps, per SKU, the frame with the highest version and
    ignores any other: frames can arrive out of order (live vs. catch-up, two nodes).
    """

    stream: str
    seq: int
    epoch: str
    ts: int
    boutique_id: str
    sku: str
    level: int
    version: int
    event_id: str
    delta: int
    """Change in level this entry made (may differ from a requested adjust when clamped at 0)."""


DurableFrame = ChatFrame | NotificationFrame | StockFrame


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


class GeoPoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A WGS84 point in decimal degrees."""

    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class OrderCreated(Request, tag="order.created", tag_field="type"):
    """A new order. ``pickup`` defaults to the boutique's location (``POST /api/v1/boutiques``);
    ``dropoff`` is the shopper's door. Both feed ETA and geofences; without them the order
    is still tracked, with no ETA and no geofence notifications."""

    event_id: Id
    order_id: Id
    shopper_id: Id
    boutique_id: Id
    total_cents: Annotated[int, msgspec.Meta(ge=0)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    pickup: GeoPoint | None = None
    dropoff: GeoPoint | None = None


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


DeliveryStep = Literal["accepted", "picked_up", "delivered"]


class DeliveryUpdate(Request):
    """``delivery.update`` (the driver assigned to the order only): progress on a delivery job.

    ``accepted`` leaves the status alone and tells the shopper once per order and driver;
    ``picked_up`` and ``delivered`` act as an ``order.status_updated`` with that status.
    Applied at most once per ``(driver, event_id)``, so a driver's outbox may resend it
    until acked.
    """

    event_id: Id
    order_id: Id
    step: DeliveryStep


class DeliveryUpdated(Frame):
    """Ack data of ``delivery.update``: ``status`` is the order's status after the call.

    ``applied``: this call changed something (moved the status, or recorded the acceptance).
    ``duplicate``: this driver sent this ``event_id`` before; nothing changed now. A step the
    order already passed (or a repeated acceptance) is not an error: ``applied`` is False.
    """

    order_id: str
    status: str
    applied: bool
    duplicate: bool


class BoutiqueLocation(Request):
    """Body of ``POST /api/v1/boutiques`` (service token): where a boutique is."""

    boutique_id: Id
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


# ---------------------------------------------------------------- inventory


class StockSet(Request, tag="stock.set", tag_field="type"):
    """Set a SKU's level. With ``version`` (a source that counts its own changes, such as a
    shelf sensor or the platform's inventory service), it applies only when ``version`` is
    higher than the last one applied from the same source; otherwise it is stale."""

    event_id: Id
    boutique_id: Id
    sku: Id
    level: Level
    version: SourceVersion | None = None


class StockAdjust(Request, tag="stock.adjust", tag_field="type"):
    """Add ``delta`` (negative: remove) to a SKU's level; the level stops at 0.
    ``version`` as in :class:`StockSet`."""

    event_id: Id
    boutique_id: Id
    sku: Id
    delta: Annotated[int, msgspec.Meta(ge=-1_000_000_000, le=1_000_000_000)]
    version: SourceVersion | None = None


StockEvent = StockSet | StockAdjust
"""A stock change: the body of ``POST /api/v1/stock``, a record on the stock topic, an item of
``stock.update``. Applied at most once per ``(boutique_id, event_id)``."""


class StockUpdateRequest(Request):
    """``stock.update``: staff of the boutique or its devices (edge gateway) change stock."""

    updates: Annotated[list[StockEvent], msgspec.Meta(min_length=1, max_length=MAX_STOCK_BATCH)]


class StockOutcome(Frame):
    """What became of one stock event. ``level``/``version`` are the SKU's state afterwards.

    ``applied``: this call changed the stock. ``duplicate``: the event id was applied
    before (nothing changed now). ``stale``: its source ``version`` was not newer than the
    last applied from that source, so it was ignored.
    """

    event_id: str
    boutique_id: str
    sku: str
    applied: bool
    duplicate: bool
    stale: bool
    level: int
    version: int


class StockUpdateReply(Frame):
    results: list[StockOutcome]


class StockItem(Frame):
    """A SKU's current state. ``low`` is True while a low-stock alert is raised (hysteresis)."""

    sku: str
    level: int
    version: int
    low: bool
    threshold: int | None
    updated_ts: int


class StockWatchRequest(Request):
    """``stock.watch`` / ``stock.unwatch``: a whole boutique (no ``skus``) or some of its products."""

    boutique_id: Id
    skus: Annotated[list[Id], msgspec.Meta(max_length=MAX_WATCHED_SKUS)] = []


class StockLevelsRequest(Request):
    """``stock.levels``: a page of current states, by SKU ascending after ``after``."""

    boutique_id: Id
    skus: Annotated[list[Id], msgspec.Meta(max_length=MAX_WATCHED_SKUS)] = []
    after: Id | None = None
    limit: PageSize = MAX_PAGE


class StockSnapshot(Frame):
    """Current states (the reply to ``stock.watch`` and ``stock.levels``).

    ``stream``/``epoch``/``head`` locate the boutique's inventory stream at the time of
    the read: ``catchup`` from ``head`` gets every later change. When ``has_more``, ask
    ``stock.levels`` with ``after: next_after`` for the next page.
    """

    boutique_id: str
    stream: str
    epoch: str
    head: int
    items: list[StockItem]
    has_more: bool
    next_after: str | None


class ThresholdRequest(Request):
    """``stock.threshold`` (staff): alert when the level falls to ``low`` or below, and re-arm
    only once it is back at ``clear`` or above (default ``low + max(1, low // 5)``).
    ``low: null`` removes the alert."""

    boutique_id: Id
    sku: Id
    low: Level | None
    clear: Level | None = None


class WishlistRequest(Request):
    """``wishlist.add`` / ``wishlist.remove`` (shoppers)."""

    boutique_id: Id
    sku: Id


class WishlistListRequest(Request):
    """``wishlist.list``: the caller's wishlist, newest first."""

    limit: PageSize = DEFAULT_PAGE


class WishlistItem(Frame):
    boutique_id: str
    sku: str
    added_ts: int
    level: int | None
    """The SKU's current level; None when the hub has no state for it (no change, no threshold)."""


class Wishlist(Frame):
    items: list[WishlistItem]


# ---------------------------------------------------------------- devices

MAX_HEALTH_DETAIL_CHARS = 200
SensorState = Literal["ok", "silent", "invalid"]
SENSOR_STATES: tuple[str, ...] = ("ok", "silent", "invalid")


class DeviceHealthReport(Request, kw_only=True):
    """``device.health`` (devices, own boutique): a shelf sensor changed health.

    ``silent``: it stopped reporting; ``invalid``: it reports nonsense (negative, NaN,
    beyond the shelf's capacity), which is never turned into stock changes; ``ok``: it
    recovered. The boutique's staff inbox gets one ``device`` notification per
    ``event_id``, so redelivering a report is harmless. ``ts``: when the gateway saw
    the change (ms since the Unix epoch).
    """

    event_id: Id
    boutique_id: Id
    shelf: Id
    sensor: Id
    sku: Id
    state: SensorState
    detail: Annotated[str, msgspec.Meta(max_length=MAX_HEALTH_DETAIL_CHARS)] = ""
    ts: Annotated[int, msgspec.Meta(ge=0)]


class DeviceHealthAccepted(Frame):
    """Ack data of ``device.health``: the staff notification it became."""

    notification_id: str
    duplicate: bool


# ---------------------------------------------------------------- location


class LocationUpdate(Request, kw_only=True):
    """``driver.location``: one GPS fix of the sending driver (drivers only, up to 1 Hz).

    Checked, not trusted: coordinates must be finite and in range, ``accuracy`` (metres),
    ``speed`` (m/s) and ``heading`` (degrees, [0, 360)) too; ``ts`` (device time, ms since
    the Unix epoch) may not be ahead of the hub's clock by more than the allowed skew.
    """

    lat: float
    lon: float
    accuracy: float
    speed: float | None = None
    heading: float | None = None
    ts: int


class LocationAccepted(Frame):
    """Ack data of ``driver.location``. A fix the filters drop is not an error: ``kept`` is
    False and ``reason`` says which filter (``accuracy``, ``outdated``, ``speed``,
    ``period``, ``distance``)."""

    kept: bool
    reason: str | None = None


class Eta(Frame):
    """Estimated arrival at the shopper's door.

    ``seconds`` = remaining route distance / speed, where the route is the straight-line
    (great-circle) distance via the pickup while the order is not picked up yet, times a
    detour factor, and the speed is the driver's recent average, never below the floor.
    """

    seconds: int
    distance_m: int
    speed_mps: float


class PositionFrame(Frame, kw_only=True):
    """``track.position``: the latest kept fix of an order's driver, to that order's watchers."""

    order_id: str
    driver_id: str
    lat: float
    lon: float
    accuracy: float
    speed: float | None
    heading: float | None
    ts: int
    eta: Eta | None = None


class TrackRequest(Request):
    """``track.watch`` / ``track.unwatch``: follow an order's driver (its shopper and dispatchers)."""

    order_id: Id


class TrackSnapshot(Frame):
    """Reply to ``track.watch``: the order's status and the driver's latest position, if any.

    ``active`` is True from ``delivery.assigned`` until ``delivered``/``cancelled``; only then
    do ``track.position`` frames flow.
    """

    order_id: str
    status: str
    active: bool
    position: PositionFrame | None


class TrackEndedFrame(Frame):
    """``track.ended``: no more positions for this order (delivered or cancelled)."""

    order_id: str
    status: str


class TrackHistoryRequest(Request):
    """``track.history``: the order's sampled, persisted track, oldest first."""

    order_id: Id
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRACK_POINTS)] = MAX_TRACK_POINTS


class TrackPoint(Frame):
    ts: int
    lat: float
    lon: float


class TrackHistory(Frame):
    order_id: str
    points: list[TrackPoint]


class NearbyRequest(Request):
    """``dispatch.nearby`` (dispatchers): drivers whose last-known position is within
    ``radius_km`` of a boutique, nearest first."""

    boutique_id: Id
    radius_km: Annotated[float, msgspec.Meta(gt=0, le=100)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50


class NearbyDriver(Frame):
    driver_id: str
    lat: float
    lon: float
    distance_m: int
    ts: int


class NearbyDrivers(Frame):
    boutique_id: str
    drivers: list[NearbyDriver]


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
