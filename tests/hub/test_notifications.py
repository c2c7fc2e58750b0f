"""Notifications over a real hub: the service endpoint, live delivery, redelivery until acked, badges,
muting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.hub import RunningHub
from tests.support.streamclient import StreamClient

INBOX = "inbox:u:u1"
URL = "/api/v1/notifications"


def err(payload: Any) -> dict[str, Any]:
    """The ErrorBody of a failed HTTP answer, checking the ack envelope around it."""
    assert isinstance(payload, dict) and set(payload) == {"ok", "error"} and payload["ok"] is False, payload
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"code", "name", "message", "temporary"}, error
    return error


async def connected(
    hub: RunningHub, sub: str, *, sync: bool = True, role: str = "shopper", boutique: str | None = None
) -> StreamClient:
    client = StreamClient(hub.url, hub.token(role, sub, boutique=boutique))
    await client.connect(sync=sync)
    await client.wait_for(lambda: any(ev == "welcome" for ev, _ in client.live), timeout=20)
    return client


def notes(client: StreamClient) -> list[dict[str, Any]]:
    return [d for ev, d in client.live if ev == "notification"]


def note_seqs(client: StreamClient, stream: str = INBOX) -> list[int]:
    return [d["seq"] for d in notes(client) if d["stream"] == stream]


async def notify(hub: RunningHub, user: str = "u1", **fields: Any) -> dict[str, Any]:
    body = {"user": user, "category": "order", "title": "Hello", **fields}
    result: dict[str, Any] = await hub.service("/api/v1/notifications", body)
    return result


async def disconnect(*clients: StreamClient) -> None:
    for c in clients:
        await c.disconnect()


# ---------------------------------------------------------------------------------------- the endpoint


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"category": "order", "title": "t"}, 1000),  # missing user
        ({"user": "u1", "category": "order"}, 1000),  # missing title
        ({"user": "u1", "category": "spam", "title": "t"}, 1000),
        ({"user": "../u1", "category": "order", "title": "t"}, 1003),
        ({"user": "u 1", "category": "order", "title": "t"}, 1003),
        ({"user": {"$ne": None}, "category": "order", "title": "t"}, 1000),
        ({"user": "u1", "category": "order", "title": "t", "id": "$where"}, 1003),
        ({"user": "u1", "category": "order", "title": ""}, 1000),
        ({"user": "u1", "category": "order", "title": "t" * 201}, 1000),
        ({"user": "u1", "category": "order", "title": "t", "body": "b" * 2001}, 1000),
        ({"user": "u1", "category": "order", "title": "t", "data": {f"k{i}": i for i in range(33)}}, 1000),
        ({"user": "u1", "category": "order", "title": "t", "extra": 1}, 1000),
        ([], 1000),
        ("{not json", 1000),
    ],
    ids=[
        "no-user",
        "no-title",
        "bad-category",
        "path-user",
        "space-user",
        "operator-user",
        "bad-id",
        "empty-title",
        "long-title",
        "long-body",
        "too-much-data",
        "unknown-field",
        "not-an-object",
        "not-json",
    ],
)
async def test_invalid_bodies_are_400_with_a_code(hub: RunningHub, body: Any, code: int) -> None:
    status, payload = await hub.post("/api/v1/notifications", body, token=hub.token("service", "svc"))
    assert status == 400
    assert err(payload)["code"] == code
    assert err(payload)["temporary"] is False
    assert err(payload)["name"] == {1000: "bad_request", 1003: "invalid_id"}[code]


@pytest.mark.asyncio
async def test_authentication_and_size_limits(hub: RunningHub) -> None:
    body = {"user": "u1", "category": "order", "title": "t"}
    status, payload = await hub.post("/api/v1/notifications", body)
    assert (status, err(payload)["code"], err(payload)["name"]) == (401, 2001, "unauthenticated")
    status, payload = await hub.post(URL, body, headers={"Authorization": "Bearer nonsense"})
    assert (status, err(payload)["code"]) == (401, 2001)
    status, payload = await hub.post(URL, body, headers={"Authorization": "Basic dTE6cA=="})
    assert (status, err(payload)["code"]) == (401, 2001)
    status, payload = await hub.post(URL, body, token=hub.token("service", "svc", ttl=-60))
    assert (status, err(payload)["code"], err(payload)["temporary"]) == (401, 2002, True)
    for role, boutique in (("shopper", None), ("staff", "b1"), ("driver", None), ("dispatcher", None)):
        status, payload = await hub.post("/api/v1/notifications", body, token=hub.token(role, "u1", boutique))
        assert (status, err(payload)["code"], err(payload)["name"]) == (403, 2003, "forbidden")

    big = {"user": "u1", "category": "order", "title": "t", "body": "b" * 100, "data": {"blob": "x" * 70_000}}
    status, payload = await hub.post("/api/v1/notifications", big, token=hub.token("service", "svc"))
    assert (status, err(payload)["code"], err(payload)["name"]) == (413, 1002, "frame_too_large")

    # A body within the limit arriving in pieces (chunked, no Content-Length) is read whole.
    async def in_pieces() -> AsyncIterator[bytes]:
        whole = json.dumps({"user": "u2", "category": "order", "title": "t", "body": "b" * 1000}).encode()
        padded = whole[:-1] + b" " * 50_000 + b"}"
        for start in range(0, len(padded), 8192):
            yield padded[start : start + 8192]
            await asyncio.sleep(0.01)

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            hub.url + URL,
            data=in_pieces(),
            headers={"Authorization": f"Bearer {hub.token('service', 'svc')}"},
        ) as resp,
    ):
        reply = await resp.json()
    assert resp.status == 200 and reply["ok"], reply

    # nothing above reached the inbox
    u1 = await connected(hub, "u1")
    [status_] = [s for s in await u1.sync() if s["stream"] == INBOX]
    assert status_["head"] == 0
    await u1.disconnect()


@pytest.mark.asyncio
async def test_success_answer_and_idempotent_id(hub: RunningHub) -> None:
    body = {
        "user": "u1",
        "category": "order",
        "title": "Order shipped",
        "body": "It is on its way",
        "data": {"order_id": "o1"},
        "id": "n-1",
    }
    status, payload = await hub.post(URL, body, token=hub.token("service", "svc"))
    assert status == 200
    assert set(payload) == {"ok", "data"} and payload["ok"] is True
    first = payload["data"]
    assert set(first) == {"id", "stream", "seq", "epoch", "duplicate"}
    assert (first["id"], first["stream"], first["seq"], first["duplicate"]) == ("n-1", INBOX, 1, False)
    assert isinstance(first["epoch"], str) and 1 <= len(first["epoch"]) <= 64

    again = await notify(hub, id="n-1", title="Changed title")
    assert again == {**first, "duplicate": True}
    generated = await notify(hub)
    assert (generated["seq"], generated["duplicate"], generated["epoch"]) == (2, False, first["epoch"])
    assert len(generated["id"]) == 26 and generated["id"] != "n-1"

    u1 = await connected(hub, "u1")
    assert [(e["seq"], e["id"], e["title"]) for e in u1.entries[INBOX]] == [
        (1, "n-1", "Order shipped"),
        (2, generated["id"], "Hello"),
    ]
    e = u1.entries[INBOX][0]
    assert (e["kind"], e["category"], e["body"], e["data"]) == (
        "notification",
        "order",
        "It is on its way",
        {"order_id": "o1"},
    )
    await u1.disconnect()


# ---------------------------------------------------------------------------------------- live delivery


@pytest.mark.asyncio
async def test_live_delivery_to_every_socket_of_the_user_and_nobody_else(hub: RunningHub) -> None:
    phone = await connected(hub, "u1")
    tablet = await connected(hub, "u1")
    u2 = await connected(hub, "u2")
    staff = await connected(hub, "u1staff", role="staff", boutique="b1")

    created = await notify(
        hub, id="n-1", category="delivery", title="Driver near", body="2 min", data={"eta": 2}
    )
    for c in (phone, tablet):
        await c.wait_for(lambda c=c: len(notes(c)) == 1, timeout=20)
        [frame] = [dict(d) for d in notes(c)]
        assert isinstance(frame.pop("ts"), int)
        assert frame == {
            "kind": "notification",
            "stream": INBOX,
            "seq": 1,
            "epoch": created["epoch"],
            "id": "n-1",
            "category": "delivery",
            "title": "Driver near",
            "body": "2 min",
            "data": {"eta": 2},
            "alert": True,
            "badge": 1,
        }

    # a duplicate is not delivered again; barrier: the next notification arrives after it would have
    await notify(hub, id="n-1")
    await notify(hub, id="n-2")
    for c in (phone, tablet):
        await c.wait_for(lambda c=c: len(notes(c)) >= 2, timeout=20)
        assert [(d["id"], d["seq"], d["badge"]) for d in notes(c)] == [("n-1", 1, 1), ("n-2", 2, 2)]

    # barrier for the others: each one's own notification comes after anything meant for u1
    await notify(hub, user="u2", id="n-u2")
    await notify(hub, user="u1staff", id="n-staff")
    await u2.wait_for(lambda: len(notes(u2)) >= 1, timeout=20)
    await staff.wait_for(lambda: len(notes(staff)) >= 1, timeout=20)
    assert [(d["stream"], d["id"]) for d in notes(u2)] == [("inbox:u:u2", "n-u2")]
    assert [(d["stream"], d["id"]) for d in notes(staff)] == [("inbox:u:u1staff", "n-staff")]

    # and the inbox holds exactly one copy of each
    page = await phone.ok("catchup", {"stream": INBOX, "after": 0})
    assert [(e["seq"], e["id"]) for e in page["entries"]] == [(1, "n-1"), (2, "n-2")]
    refused = await u2.call("catchup", {"stream": INBOX, "after": 0})
    assert (refused["ok"], refused["error"]["code"]) == (False, 2003)
    await disconnect(phone, tablet, u2, staff)


# ---------------------------------------------------------------------------------------- redelivery


async def reconnect_and_settle(hub: RunningHub, expected_last: int) -> StreamClient:
    """Connect u1 without catch-up and return once redelivery has been fully received.

    Redelivery pushes unacked entries in seq order in one batch; once the newest expected
    one is seen, a request round trip guarantees that nothing of that batch is still on the way.
    """
    c = await connected(hub, "u1", sync=False)
    await c.wait_for(lambda: expected_last in note_seqs(c), timeout=20)
    await c.ok("notify.prefs", {})
    return c


@pytest.mark.asyncio
async def test_unacked_notifications_are_redelivered_until_acked(hub: RunningHub) -> None:
    for nid in ("n-a", "n-b", "n-c"):
        await notify(hub, id=nid)  # u1 is offline

    c = await reconnect_and_settle(hub, expected_last=3)
    assert note_seqs(c) == [1, 2, 3]
    assert [(d["id"], d["alert"]) for d in notes(c)] == [("n-a", True), ("n-b", True), ("n-c", True)]
    assert await c.ok("notify.ack", {"stream": INBOX, "seqs": [1, 3]}) is None  # out of order: 2 is missing
    await c.disconnect()

    c = await reconnect_and_settle(hub, expected_last=2)
    assert note_seqs(c) == [2]  # NOT ACKED -> redelivered; acked ones are not
    await c.disconnect()

    await notify(hub, id="n-d")  # seq 4, while offline
    c = await reconnect_and_settle(hub, expected_last=4)
    assert note_seqs(c) == [2, 4]
    assert await c.ok("notify.ack", {"stream": INBOX, "seqs": [2, 4, 4]}) is None
    await c.disconnect()

    await notify(hub, id="n-e")  # seq 5: the only unacked one
    c = await reconnect_and_settle(hub, expected_last=5)
    assert note_seqs(c) == [5]  # ACKED -> not redelivered
    err = await c.call("notify.ack", {"stream": "inbox:u:u2", "seqs": [1]})
    assert (err["ok"], err["error"]["code"]) == (False, 2003)
    err = await c.call("notify.ack", {"stream": INBOX, "seqs": []})
    assert (err["ok"], err["error"]["code"]) == (False, 1000)
    await c.disconnect()

    # acks are per user: another user's inbox is untouched, and u2 gets its own redelivery
    await notify(hub, user="u2", id="n-u2")
    u2 = await connected(hub, "u2", sync=False)
    await u2.wait_for(lambda: note_seqs(u2, "inbox:u:u2") == [1], timeout=20)
    await u2.disconnect()


# ---------------------------------------------------------------------------------------- badges


@pytest.mark.asyncio
async def test_badge_counts_and_notify_read(hub: RunningHub) -> None:
    phone = await connected(hub, "u1")
    tablet = await connected(hub, "u1")
    for nid in ("n-1", "n-2", "n-3"):
        await notify(hub, id=nid)
    await phone.wait_for(lambda: len(notes(phone)) == 3, timeout=20)
    assert [d["badge"] for d in notes(phone)] == [1, 2, 3]
    [status] = [s for s in await phone.sync() if s["stream"] == INBOX]
    assert (status["unread"], status["head"]) == (3, 3)

    def badges(c: StreamClient) -> list[dict[str, Any]]:
        return [d for ev, d in c.live if ev == "notify.badge"]

    assert await phone.ok("notify.read", {"stream": INBOX, "seq": 2}) == {"stream": INBOX, "badge": 1}
    await tablet.wait_for(lambda: badges(tablet) == [{"stream": INBOX, "badge": 1}], timeout=20)
    assert await tablet.ok("notify.read", {"stream": INBOX, "seq": 1}) == {"stream": INBOX, "badge": 1}
    assert await tablet.ok("notify.read", {"stream": INBOX, "seq": 99}) == {"stream": INBOX, "badge": 0}
    await phone.wait_for(lambda: {"stream": INBOX, "badge": 0} in badges(phone), timeout=20)
    [status] = [s for s in await tablet.sync() if s["stream"] == INBOX]
    assert status["unread"] == 0

    await notify(hub, id="n-4")
    await phone.wait_for(lambda: len(notes(phone)) == 4, timeout=20)
    assert notes(phone)[-1]["badge"] == 1

    other = await phone.call("notify.read", {"stream": "inbox:u:u2", "seq": 1})
    assert (other["ok"], other["error"]["code"]) == (False, 2003)
    chat = await phone.call("notify.read", {"stream": "chat:b:b1:u1", "seq": 1})
    assert (chat["ok"], chat["error"]["code"]) == (False, 2003)
    await disconnect(phone, tablet)


# ---------------------------------------------------------------------------------------- muting


@pytest.mark.asyncio
async def test_muted_category_still_lands_but_does_not_alert(hub: RunningHub) -> None:
    u1 = await connected(hub, "u1")
    assert await u1.ok("notify.prefs", {}) == {"muted": []}
    assert await u1.ok("notify.prefs", {"muted": ["stock", "order"]}) == {"muted": ["order", "stock"]}
    assert await u1.ok("notify.prefs", {"muted": None}) == {"muted": ["order", "stock"]}
    bad = await u1.call("notify.prefs", {"muted": ["spam"]})
    assert (bad["ok"], bad["error"]["code"]) == (False, 1000)

    await notify(hub, id="n-order", category="order")
    await notify(hub, id="n-chat", category="chat")
    await u1.wait_for(lambda: len(notes(u1)) == 2, timeout=20)
    assert [(d["id"], d["alert"], d["badge"]) for d in notes(u1)] == [
        ("n-order", False, 1),
        ("n-chat", True, 2),
    ]
    page = await u1.ok("catchup", {"stream": INBOX, "after": 0})
    assert [(e["id"], e["category"]) for e in page["entries"]] == [("n-order", "order"), ("n-chat", "chat")]
    await u1.disconnect()

    # redelivered while still muted: still alert false
    again = await reconnect_and_settle(hub, expected_last=2)
    assert [(d["id"], d["alert"]) for d in notes(again)] == [("n-order", False), ("n-chat", True)]
    assert await again.ok("notify.prefs", {"muted": []}) == {"muted": []}
    await notify(hub, id="n-order-2", category="order")
    await again.wait_for(lambda: "n-order-2" in [d["id"] for d in notes(again)], timeout=20)
    assert notes(again)[-1]["alert"] is True
    await again.disconnect()

    # preferences are per user
    u2 = await connected(hub, "u2")
    assert await u2.ok("notify.prefs", {}) == {"muted": []}
    await u2.disconnect()
