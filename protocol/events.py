"""Socket.IO event names, and which request Struct each client event carries.

Every client -> server event expects an ack; the ack payload is always an
``AckOk`` or ``AckError`` envelope (see :mod:`protocol.messages`). A request sent
without an ack callback gets no answer, so its failure is only counted in metrics.
"""

from __future__ import annotations

from typing import Final

from protocol import messages as m

# client -> server
SYNC: Final = "sync"
CATCHUP: Final = "catchup"
CHAT_SEND: Final = "chat.send"
CHAT_HISTORY: Final = "chat.history"
CHAT_READ: Final = "chat.read"
CHAT_TYPING: Final = "chat.typing"
CHAT_LIST: Final = "chat.list"
PRESENCE_WATCH: Final = "presence.watch"
NOTIFY_ACK: Final = "notify.ack"
NOTIFY_READ: Final = "notify.read"
NOTIFY_PREFS: Final = "notify.prefs"
ORDER_WATCH: Final = "order.watch"
ORDER_UNWATCH: Final = "order.unwatch"
ORDER_LIST: Final = "order.list"
STOCK_UPDATE: Final = "stock.update"
STOCK_WATCH: Final = "stock.watch"
STOCK_UNWATCH: Final = "stock.unwatch"
STOCK_LEVELS: Final = "stock.levels"
STOCK_THRESHOLD: Final = "stock.threshold"
WISHLIST_ADD: Final = "wishlist.add"
WISHLIST_REMOVE: Final = "wishlist.remove"
WISHLIST_LIST: Final = "wishlist.list"
DRIVER_LOCATION: Final = "driver.location"
TRACK_WATCH: Final = "track.watch"
TRACK_UNWATCH: Final = "track.unwatch"
TRACK_HISTORY: Final = "track.history"
DISPATCH_NEARBY: Final = "dispatch.nearby"
DEVICE_HEALTH: Final = "device.health"
DELIVERY_UPDATE: Final = "delivery.update"

# server -> client
WELCOME: Final = "welcome"
CHAT_MESSAGE: Final = "chat.message"
CHAT_READ_FRAME: Final = "chat.read"
CHAT_TYPING_FRAME: Final = "chat.typing"
NOTIFICATION: Final = "notification"
NOTIFY_BADGE: Final = "notify.badge"
PRESENCE: Final = "presence"
ORDER_UPDATED: Final = "order.updated"
SESSION_CLOSING: Final = "session.closing"
RESYNC: Final = "resync"
STOCK: Final = "stock"
TRACK_POSITION: Final = "track.position"
TRACK_ENDED: Final = "track.ended"

CLIENT_EVENTS: Final[dict[str, type[m.Request]]] = {
    SYNC: m.SyncRequest,
    CATCHUP: m.CatchupRequest,
    CHAT_SEND: m.ChatSend,
    CHAT_HISTORY: m.HistoryRequest,
    CHAT_READ: m.ReadRequest,
    CHAT_TYPING: m.TypingRequest,
    CHAT_LIST: m.ConversationListRequest,
    PRESENCE_WATCH: m.PresenceRequest,
    NOTIFY_ACK: m.NotifyAckRequest,
    NOTIFY_READ: m.NotifyReadRequest,
    NOTIFY_PREFS: m.PrefsRequest,
    ORDER_WATCH: m.OrderWatchRequest,
    ORDER_UNWATCH: m.OrderWatchRequest,
    ORDER_LIST: m.OrderListRequest,
    STOCK_UPDATE: m.StockUpdateRequest,
    STOCK_WATCH: m.StockWatchRequest,
    STOCK_UNWATCH: m.StockWatchRequest,
    STOCK_LEVELS: m.StockLevelsRequest,
    STOCK_THRESHOLD: m.ThresholdRequest,
    WISHLIST_ADD: m.WishlistRequest,
    WISHLIST_REMOVE: m.WishlistRequest,
    WISHLIST_LIST: m.WishlistListRequest,
    DRIVER_LOCATION: m.LocationUpdate,
    TRACK_WATCH: m.TrackRequest,
    TRACK_UNWATCH: m.TrackRequest,
    TRACK_HISTORY: m.TrackHistoryRequest,
    DISPATCH_NEARBY: m.NearbyRequest,
    DEVICE_HEALTH: m.DeviceHealthReport,
    DELIVERY_UPDATE: m.DeliveryUpdate,
}
"""Client event -> the Struct its single argument must decode into."""

CLIENT_EVENT_REPLIES: Final[dict[str, type[m.Frame] | None]] = {
    SYNC: m.SyncReply,
    CATCHUP: m.CatchupPage,
    CHAT_SEND: m.ChatSent,
    CHAT_HISTORY: m.HistoryPage,
    CHAT_READ: None,
    CHAT_TYPING: None,
    CHAT_LIST: m.ConversationList,
    PRESENCE_WATCH: m.PresenceReply,
    NOTIFY_ACK: None,
    NOTIFY_READ: m.BadgeFrame,
    NOTIFY_PREFS: m.PrefsReply,
    ORDER_WATCH: m.OrderView,
    ORDER_UNWATCH: None,
    ORDER_LIST: m.OrderList,
    STOCK_UPDATE: m.StockUpdateReply,
    STOCK_WATCH: m.StockSnapshot,
    STOCK_UNWATCH: None,
    STOCK_LEVELS: m.StockSnapshot,
    STOCK_THRESHOLD: m.StockItem,
    WISHLIST_ADD: m.Wishlist,
    WISHLIST_REMOVE: m.Wishlist,
    WISHLIST_LIST: m.Wishlist,
    DRIVER_LOCATION: m.LocationAccepted,
    TRACK_WATCH: m.TrackSnapshot,
    TRACK_UNWATCH: None,
    TRACK_HISTORY: m.TrackHistory,
    DISPATCH_NEARBY: m.NearbyDrivers,
    DEVICE_HEALTH: m.DeviceHealthAccepted,
    DELIVERY_UPDATE: m.DeliveryUpdated,
}
"""Client event -> the Struct in ``AckOk.data`` (None: data is null)."""

SERVER_EVENTS: Final[dict[str, type[m.Frame]]] = {
    WELCOME: m.Welcome,
    CHAT_MESSAGE: m.ChatFrame,
    CHAT_READ_FRAME: m.ReadFrame,
    CHAT_TYPING_FRAME: m.TypingFrame,
    NOTIFICATION: m.NotificationFrame,
    NOTIFY_BADGE: m.BadgeFrame,
    PRESENCE: m.PresenceFrame,
    ORDER_UPDATED: m.OrderUpdatedFrame,
    SESSION_CLOSING: m.SessionClosing,
    RESYNC: m.ResyncFrame,
    STOCK: m.StockFrame,
    TRACK_POSITION: m.PositionFrame,
    TRACK_ENDED: m.TrackEndedFrame,
}
"""Server event -> the Struct it carries."""
