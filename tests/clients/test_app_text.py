"""What the apps write on screen (Kivy-free helpers)."""

from __future__ import annotations

import time

import pytest

from clients.common.store import Job
from clients.ui.text import (
    chat_title,
    clock_text,
    distance_text,
    eta_text,
    job_line,
    message_mark,
    stock_text,
)


@pytest.mark.parametrize(
    ("status", "seq", "peer_read", "mark"),
    [
        ("pending", None, 0, "sending"),
        ("failed", None, 5, "not sent"),
        ("sent", 4, 3, "delivered"),
        ("sent", 4, 4, "read"),
    ],
)
def test_message_marks(status: str, seq: int | None, peer_read: int, mark: str) -> None:
    assert message_mark(status, seq, peer_read) == mark


def test_numbers_in_words() -> None:
    assert [stock_text(n) for n in (None, 0, 1, 5, 6)] == [
        "No stock information",
        "Out of stock",
        "Only 1 left",
        "Only 5 left",
        "6 in stock",
    ]
    assert [eta_text(s) for s in (None, 59, 60, 29 * 60 + 31, 65 * 60)] == [
        "No estimate yet",
        "Arriving now",
        "1 min",
        "30 min",
        "1 h 05 min",
    ]
    assert [distance_text(m) for m in (None, 999.4, 1000, 6420)] == ["", "999 m", "1.0 km", "6.4 km"]


def test_clock_shows_the_time_today_and_the_date_before() -> None:
    now = time.mktime((2026, 3, 12, 15, 0, 0, 0, 0, -1)) * 1000
    assert clock_text(int(now - 3600_000), int(now)) == "14:00"
    assert clock_text(int(now - 2 * 86400_000), int(now)) == "10 Mar"


def test_chat_titles_name_the_other_side() -> None:
    assert chat_title("chat:b:zuri:s-1", "s-1") == "zuri"
    assert chat_title("chat:b:zuri:s-1", "amina") == "s-1 @ zuri"
    assert chat_title("chat:o:o-9", "d-1") == "Order o-9"


def job(**fields: object) -> Job:
    base: dict[str, object] = dict(
        order_id="o-1",
        assigned_ts=0,
        status="ready",
        boutique_id="b",
        shopper_id="s",
        step=None,
        step_pending=False,
    )
    return Job(**{**base, **fields})  # type: ignore[arg-type]


def test_job_lines() -> None:
    assert job_line(job()) == "Ready for pickup \u00b7 New job"
    assert (
        job_line(job(step="accepted", step_pending=True))
        == "Ready for pickup \u00b7 Accepted \u00b7 sending\u2026"
    )
    assert job_line(job(status="picked_up", step="picked_up")) == "Picked up"
    assert job_line(job(status="delivered")) == "Delivered"
    refused = job(
        status="cancelled", step="accepted", failed_step="picked_up", step_error="forbidden: not yours"
    )
    assert job_line(refused) == "Cancelled \u00b7 Accepted \u00b7 Picked up refused: forbidden: not yours"
