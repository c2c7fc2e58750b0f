"""Words and numbers as both apps show them. Kivy-free, so it is tested without a window."""

from __future__ import annotations

import time

from clients.common.store import ENDED_STATUSES, Job
from protocol.ids import StreamKind, parse_stream

ORDER_STATUS_TEXT = {
    "created": "Order placed",
    "confirmed": "Confirmed",
    "preparing": "Being prepared",
    "ready": "Ready for pickup",
    "picked_up": "Picked up",
    "in_transit": "On the way",
    "delivered": "Delivered",
    "cancelled": "Cancelled",
}

STEP_TEXT = {"accepted": "Accepted", "picked_up": "Picked up", "delivered": "Delivered"}

NEXT_STEP = {None: "accepted", "accepted": "picked_up", "picked_up": "delivered"}
"""A driver's next delivery step after the one taken (None: none taken yet)."""


def status_text(status: str | None) -> str:
    """A person's words for an order status (``None``: not known yet)."""
    if status is None:
        return "Waiting for order details"
    return ORDER_STATUS_TEXT.get(status, status.replace("_", " ").capitalize())


def stock_text(level: int | None) -> str:
    """``Out of stock``, ``Only 3 left`` (1-5), ``12 in stock``; None: never had stock."""
    if level is None:
        return "No stock information"
    if level <= 0:
        return "Out of stock"
    if level <= 5:
        return f"Only {level} left"
    return f"{level} in stock"


def eta_text(seconds: int | None) -> str:
    """``Arriving now`` (under a minute), ``8 min``, ``1 h 05 min``; None: no estimate."""
    if seconds is None:
        return "No estimate yet"
    if seconds < 60:
        return "Arriving now"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def distance_text(metres: float | None) -> str:
    """``850 m`` below a kilometre, else ``3.4 km``; None: empty."""
    if metres is None:
        return ""
    if metres < 1000:
        return f"{round(metres)} m"
    return f"{metres / 1000:.1f} km"


def clock_text(ts_ms: int, now_ms: int | None = None) -> str:
    """``14:05`` for today (local time), else ``12 Mar``."""
    now = time.localtime((now_ms if now_ms is not None else time.time() * 1000) / 1000)
    then = time.localtime(ts_ms / 1000)
    if (then.tm_year, then.tm_yday) == (now.tm_year, now.tm_yday):
        return time.strftime("%H:%M", then)
    return time.strftime("%d %b", then).lstrip("0")


def message_mark(status: str, seq: int | None, peer_read_seq: int) -> str:
    """The mark under one of our own messages.

    ``sending`` while in the outbox, ``not sent`` when the hub refused it, ``delivered`` once
    the hub stored it, ``read`` once the other side's read mark reached it.
    """
    if status == "pending":
        return "sending"
    if status == "failed":
        return "not sent"
    if seq is not None and seq <= peer_read_seq:
        return "read"
    return "delivered"


def chat_title(stream: str, me: str | None) -> str:
    """Who a chat stream is with, seen by ``me``: the boutique, the shopper or the order."""
    ref = parse_stream(stream)
    if ref.kind is StreamKind.BOUTIQUE_CHAT:
        if ref.shopper_id == me:
            return str(ref.boutique_id)
        return f"{ref.shopper_id} @ {ref.boutique_id}"
    if ref.kind is StreamKind.ORDER_CHAT:
        return f"Order {ref.order_id}"
    return stream


def boutique_of_chat(stream: str) -> str | None:
    """The boutique of a ``chat:b:`` stream, else None."""
    ref = parse_stream(stream)
    return ref.boutique_id if ref.kind is StreamKind.BOUTIQUE_CHAT else None


def job_line(job: Job) -> str:
    """The order's status, then the driver's own step when it says more, ``sending...`` while
    that step is in the outbox, and a step the hub refused for good with its reason:
    ``Ready for pickup \u00b7 Accepted \u00b7 sending...``."""
    parts = [status_text(job.status)]
    if job.step is None:
        if job.status not in ENDED_STATUSES:
            parts.append("New job")
    elif STEP_TEXT[job.step] != parts[0]:
        parts.append(STEP_TEXT[job.step])
    if job.step_pending:
        parts.append("sending\u2026")
    if job.failed_step is not None:
        parts.append(f"{STEP_TEXT[job.failed_step]} refused: {job.step_error or 'by the hub'}")
    return " \u00b7 ".join(parts)
