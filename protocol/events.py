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
}
"""Server event -> the Struct it carries."""
