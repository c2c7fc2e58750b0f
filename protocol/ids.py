"""Identifiers, roles and stream ids.

Every id that crosses the wire is a plain string matching :data:`ID_PATTERN`, so no
query operator, path separator or control character can ride in on one. Stream
ids are built only through the functions here; their parts are ids, joined by ``:``
(which ids cannot contain), so parsing is unambiguous.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

ID_CHARS = "[A-Za-z0-9_-]{1,64}"
ID_PATTERN = rf"^{ID_CHARS}(?!\n)$"
"""``(?!\n)$``: Python's ``$`` also matches before a final newline; this form means the true end
in both Python (msgspec) and JSON Schema regex dialects."""
ID_RE = re.compile(ID_PATTERN)
STREAM_PATTERN = (
    rf"^(chat:b:{ID_CHARS}:{ID_CHARS}|chat:o:{ID_CHARS}|inbox:[ub]:{ID_CHARS}|inv:{ID_CHARS})(?!\n)$"
)
STREAM_RE = re.compile(STREAM_PATTERN)


class Role(enum.StrEnum):
    """Who a token speaks for. Set by the issuer, never by the client."""

    SHOPPER = "shopper"
    DRIVER = "driver"
    STAFF = "staff"
    DISPATCHER = "dispatcher"
    DEVICE = "device"
    SERVICE = "service"


class StreamKind(enum.StrEnum):
    """The durable stream families."""

    BOUTIQUE_CHAT = "chat:b"
    """Shopper <-> boutique conversation: ``chat:b:<boutique>:<shopper>``."""
    ORDER_CHAT = "chat:o"
    """Shopper <-> driver conversation about one order: ``chat:o:<order>``."""
    USER_INBOX = "inbox:u"
    """One user's notification inbox: ``inbox:u:<user>``."""
    BOUTIQUE_INBOX = "inbox:b"
    """A boutique's shared staff inbox: ``inbox:b:<boutique>``."""
    INVENTORY = "inv"
    """A boutique's stock changes, one entry per applied change: ``inv:<boutique>``."""


def is_id(value: object) -> bool:
    """Return True when ``value`` is a string of the id pattern."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def _require_id(value: str) -> str:
    if not is_id(value):
        raise ValueError(f"not a valid id: {value!r}")
    return value


def boutique_chat(boutique_id: str, shopper_id: str) -> str:
    """Stream id of the conversation between a shopper and a boutique's staff."""
    return f"chat:b:{_require_id(boutique_id)}:{_require_id(shopper_id)}"


def order_chat(order_id: str) -> str:
    """Stream id of the conversation between an order's shopper and its driver."""
    return f"chat:o:{_require_id(order_id)}"


def user_inbox(user_id: str) -> str:
    """Stream id of one user's notification inbox."""
    return f"inbox:u:{_require_id(user_id)}"


def boutique_inbox(boutique_id: str) -> str:
    """Stream id of a boutique's shared staff inbox."""
    return f"inbox:b:{_require_id(boutique_id)}"


def inventory(boutique_id: str) -> str:
    """Stream id of a boutique's inventory log."""
    return f"inv:{_require_id(boutique_id)}"


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A parsed stream id. Exactly the fields its kind uses are set."""

    kind: StreamKind
    boutique_id: str | None = None
    shopper_id: str | None = None
    order_id: str | None = None
    user_id: str | None = None


def parse_stream(stream: str) -> StreamRef:
    """Parse a stream id.

    Raises:
        ValueError: when ``stream`` is not a well-formed stream id.
    """
    if not isinstance(stream, str) or STREAM_RE.fullmatch(stream) is None:
        raise ValueError(f"not a valid stream id: {stream!r}")
    parts = stream.split(":")
    if parts[0] == StreamKind.INVENTORY:
        return StreamRef(StreamKind.INVENTORY, boutique_id=parts[1])
    family = f"{parts[0]}:{parts[1]}"
    if family == StreamKind.BOUTIQUE_CHAT:
        return StreamRef(StreamKind.BOUTIQUE_CHAT, boutique_id=parts[2], shopper_id=parts[3])
    if family == StreamKind.ORDER_CHAT:
        return StreamRef(StreamKind.ORDER_CHAT, order_id=parts[2])
    if family == StreamKind.USER_INBOX:
        return StreamRef(StreamKind.USER_INBOX, user_id=parts[2])
    return StreamRef(StreamKind.BOUTIQUE_INBOX, boutique_id=parts[2])
