"""Chat over a real hub: history, unread counts, read receipts, typing, presence, text rules, order chat."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from ulid import ULID

from tests.support.hub import RunningHub
from tests.support.rawclient import RawClient
from tests.support.streamclient import StreamClient

HubFactory = Callable[..., Awaitable[RunningHub]]

B1 = "chat:b:b1:alice"
B2 = "chat:b:b2:alice"
O1 = "chat:o:o1"


async def connected(hub: RunningHub, role: str, sub: str, boutique: str | None = None) -> StreamClient:
    client = StreamClient(hub.url, hub.token(role, sub, boutique=boutique))
    await client.connect()
    await client.wait_for(lambda: any(ev == "welcome" for ev, _ in client.live), timeout=20)
    return client


def frames(client: StreamClient, event: str) -> list[Any]:
    return [d for ev, d in client.live if ev == event]


async def error_of(client: StreamClient, event: str, data: Any) -> dict[str, Any]:
    reply = await client.call(event, data)
    assert reply["ok"] is False, reply
    error: dict[str, Any] = reply["error"]
    return error


async def disconnect(*clients: StreamClient) -> None:
    for c in clients:
        await c.disconnect()


async def tick() -> None:
    """Let the millisecond clock move on, so activity timestamps differ."""
    await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------- history


@pytest.mark.asyncio
async def test_history_pages_backwards(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    empty = await alice.ok("chat.history", {"stream": B1})
    assert empty == {"stream": B1, "epoch": "", "entries": [], "has_more": False}
    texts = [f"h{i}" for i in range(1, 8)]
    for t in texts:
        await alice.send(B1, t)
    epoch = alice.epochs[B1]

    async def page(**req: Any) -> tuple[list[int], bool]:
        p = await alice.ok("chat.history", {"stream": B1, **req})
        assert (p["stream"], p["epoch"]) == (B1, epoch)
        return [e["seq"] for e in p["entries"]], p["has_more"]

    assert await page(limit=3) == ([5, 6, 7], True)
    assert await page(before=5, limit=3) == ([2, 3, 4], True)
    assert await page(before=2, limit=3) == ([1], False)
    assert await page(before=1, limit=3) == ([], False)
    assert await page() == ([1, 2, 3, 4, 5, 6, 7], False)
    assert await page(before=100, limit=2) == ([6, 7], True)
    full = await alice.ok("chat.history", {"stream": B1, "limit": 500})
    assert [e["text"] for e in full["entries"]] == texts
    assert {e["kind"] for e in full["entries"]} == {"chat"}

    for bad in ({"limit": 501}, {"limit": 0}, {"before": -1}, {"nope": 1}):
        err = await error_of(alice, "chat.history", {"stream": B1, **bad})
        assert (err["code"], err["name"], err["temporary"]) == (1000, "bad_request", False)

    # history does not move the reader's position
    bob = await connected(hub, "staff", "bob", "b1")
    await bob.ok("chat.history", {"stream": B1})
    [conv] = (await bob.ok("chat.list", {}))["conversations"]
    assert (conv["unread"], conv["read_seq"]) == (7, 0)

    mallory = await connected(hub, "shopper", "mallory")
    assert (await error_of(mallory, "chat.history", {"stream": B1}))["code"] == 2003
    dave = await connected(hub, "staff", "dave", "b2")
    assert (await error_of(dave, "chat.history", {"stream": B1}))["code"] == 2003
    assert (await error_of(dave, "chat.history", {"stream": "chat:b:b1:al$ce"}))["code"] == 1003
    await disconnect(alice, bob, mallory, dave)


# ---------------------------------------------------------------------------------------- unread


def summary(conversations: list[dict[str, Any]]) -> list[tuple[str, int, int, int, int]]:
    return [(c["stream"], c["head"], c["unread"], c["read_seq"], c["peer_read_seq"]) for c in conversations]


@pytest.mark.asyncio
async def test_unread_counts_for_shopper_and_shared_boutique_position(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    carol = await connected(hub, "staff", "carol", "b1")
    dave = await connected(hub, "staff", "dave", "b2")

    async def listing(c: StreamClient) -> list[tuple[str, int, int, int, int]]:
        return summary((await c.ok("chat.list", {}))["conversations"])

    for t in ("a1", "a2", "a3"):
        await alice.send(B1, t)
    await bob.send(B1, "b1")
    await carol.send(B1, "c1")
    await tick()
    await alice.send(B2, "to b2")

    # newest activity first; a shopper's unread counts the other side's messages
    assert await listing(alice) == [(B2, 1, 0, 0, 0), (B1, 5, 2, 0, 0)]
    # staff: the shopper's messages after the boutique's read position
    assert await listing(bob) == [(B1, 5, 3, 0, 0)]
    assert await listing(carol) == [(B1, 5, 3, 0, 0)]
    assert await listing(dave) == [(B2, 1, 1, 0, 0)]

    # one staff member reads: the position belongs to the boutique, shared by its staff
    assert await bob.ok("chat.read", {"stream": B1, "seq": 5}) is None
    assert await listing(carol) == [(B1, 5, 0, 5, 0)]
    assert await listing(bob) == [(B1, 5, 0, 5, 0)]
    assert await listing(alice) == [(B2, 1, 0, 0, 0), (B1, 5, 2, 0, 5)]

    await tick()
    await alice.send(B1, "a4")
    await bob.send(B1, "b2")  # staff's own messages are not unread for staff
    assert await listing(carol) == [(B1, 7, 1, 5, 0)]
    assert await listing(alice) == [(B1, 7, 3, 0, 5), (B2, 1, 0, 0, 0)]

    assert await alice.ok("chat.read", {"stream": B1, "seq": 7}) is None
    assert await listing(alice) == [(B1, 7, 0, 7, 5), (B2, 1, 0, 0, 0)]
    assert await listing(bob) == [(B1, 7, 1, 5, 7)]
    assert await listing(dave) == [(B2, 1, 1, 0, 0)]
    await disconnect(alice, bob, carol, dave)


# ---------------------------------------------------------------------------------------- read receipts


@pytest.mark.asyncio
async def test_read_receipts_reach_both_parties_and_never_go_back(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    carol = await connected(hub, "staff", "carol", "b1")
    for t in ("one", "two", "three"):
        await alice.send(B1, t)

    assert await bob.ok("chat.read", {"stream": B1, "seq": 2}) is None
    expected = {"stream": B1, "party": "boutique:b1", "seq": 2}
    for c in (alice, carol):
        await c.wait_for(lambda c=c: expected in frames(c, "chat.read"), timeout=20)

    assert await carol.ok("chat.read", {"stream": B1, "seq": 1}) is None  # lower: the position stays 2
    assert await bob.ok("chat.read", {"stream": B1, "seq": 99}) is None  # past the head: clamped to 3
    last = {"stream": B1, "party": "boutique:b1", "seq": 3}
    await alice.wait_for(lambda: last in frames(alice, "chat.read"), timeout=20)
    seen = [f["seq"] for f in frames(alice, "chat.read")]
    assert seen[0] == 2 and seen[-1] == 3
    assert seen == sorted(seen) and set(seen) == {2, 3}

    assert await alice.ok("chat.read", {"stream": B1, "seq": 3}) is None
    mine = {"stream": B1, "party": "user:alice", "seq": 3}
    for c in (bob, carol):
        await c.wait_for(lambda c=c: mine in frames(c, "chat.read"), timeout=20)

    [conv] = (await carol.ok("chat.list", {}))["conversations"]
    assert (conv["read_seq"], conv["peer_read_seq"]) == (3, 3)

    dave = await connected(hub, "staff", "dave", "b2")
    assert (await error_of(dave, "chat.read", {"stream": B1, "seq": 3}))["code"] == 2003
    assert (await error_of(dave, "chat.read", {"stream": B1, "seq": -1}))["code"] == 1000
    await disconnect(alice, bob, carol, dave)


# ---------------------------------------------------------------------------------------- typing


@pytest.mark.asyncio
async def test_typing_is_relayed_not_echoed_and_rate_limited(hub_factory: HubFactory) -> None:
    hub = await hub_factory(typing_interval=3600.0)  # a second indicator from one socket is always "too soon"
    alice = await connected(hub, "shopper", "alice")
    alice_phone = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    dave = await connected(hub, "staff", "dave", "b2")

    assert await alice.ok("chat.typing", {"stream": B1}) is None
    assert await alice.ok("chat.typing", {"stream": B1}) is None  # too soon: dropped silently

    # barrier: frames to one socket keep their order, so any typing frame precedes this message
    await alice.send(B1, "barrier 1")
    for c in (alice, alice_phone, bob):
        await c.wait_for(lambda c=c: len(c.entries[B1]) == 1, timeout=20)
    indicator = {"stream": B1, "user": "alice", "role": "shopper"}
    assert frames(bob, "chat.typing") == [indicator]
    assert frames(alice_phone, "chat.typing") == [indicator]  # the sender's other device is told
    assert frames(alice, "chat.typing") == []  # never echoed to the sending socket
    assert frames(dave, "chat.typing") == []

    # the limit is per socket: the phone's first indicator goes through
    assert await alice_phone.ok("chat.typing", {"stream": B1}) is None
    assert await bob.ok("chat.typing", {"stream": B1}) is None
    await bob.send(B1, "barrier 2")
    for c in (alice, alice_phone, bob):
        await c.wait_for(lambda c=c: len(c.entries[B1]) == 2, timeout=20)
    staff_indicator = {"stream": B1, "user": "bob", "role": "staff"}
    assert frames(bob, "chat.typing") == [indicator, indicator]
    assert frames(alice, "chat.typing") == [indicator, staff_indicator]
    assert frames(alice_phone, "chat.typing") == [indicator, staff_indicator]
    assert frames(dave, "chat.typing") == []

    assert (await error_of(dave, "chat.typing", {"stream": B1}))["code"] == 2003
    await disconnect(alice, alice_phone, bob, dave)


# ---------------------------------------------------------------------------------------- presence


@pytest.mark.asyncio
async def test_presence_follows_the_boutiques_staff(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    reply = await alice.ok("presence.watch", {"boutiques": ["b1", "b2"]})
    assert reply == {"boutiques": [{"boutique": "b1", "online": False}, {"boutique": "b2", "online": False}]}

    bob = await connected(hub, "staff", "bob", "b1")
    online = {"boutique": "b1", "online": True}
    await alice.wait_for(lambda: frames(alice, "presence") == [online], timeout=20)
    carol = await connected(hub, "staff", "carol", "b1")  # already online: no new frame
    assert (await alice.ok("presence.watch", {"boutiques": ["b1"]})) == {
        "boutiques": [{"boutique": "b1", "online": True}]
    }

    await bob.disconnect()  # carol is still there
    assert (await alice.ok("presence.watch", {"boutiques": ["b1"]})) == {
        "boutiques": [{"boutique": "b1", "online": True}]
    }
    await carol.disconnect()
    await alice.wait_for(lambda: len(frames(alice, "presence")) >= 2, timeout=20)
    assert frames(alice, "presence") == [online, {"boutique": "b1", "online": False}]
    assert (await alice.ok("presence.watch", {"boutiques": ["b1"]})) == {
        "boutiques": [{"boutique": "b1", "online": False}]
    }

    assert (await error_of(alice, "presence.watch", {"boutiques": []}))["code"] == 1000
    assert (await error_of(alice, "presence.watch", {"boutiques": ["b 1"]}))["code"] == 1003
    assert (await error_of(alice, "presence.watch", {"boutiques": [{"$ne": None}]}))["code"] == 1000
    await alice.disconnect()


# ---------------------------------------------------------------------------------------- text rules


@pytest.mark.asyncio
async def test_text_length_cap_counts_characters(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    for text in ("x" * 4001, "\U0001f642" * 4001):
        err = await error_of(alice, "chat.send", {"stream": B1, "client_id": "too-long", "text": text})
        assert (err["code"], err["name"], err["temporary"]) == (1004, "text_too_long", False)
    ok1 = await alice.send(B1, "x" * 4000)
    ok2 = await alice.send(B1, "\U0001f642" * 4000)
    assert (ok1["seq"], ok2["seq"]) == (1, 2)
    history = await alice.ok("chat.history", {"stream": B1})
    assert [e["text"] for e in history["entries"]] == ["x" * 4000, "\U0001f642" * 4000]
    err = await error_of(alice, "chat.send", {"stream": B1, "client_id": "empty", "text": ""})
    assert err["code"] == 1000
    await alice.disconnect()


@pytest.mark.asyncio
async def test_control_characters_are_stripped(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    await alice.send(B1, "a\x00b\x07c\td\ne\rf\x1b[31mg\x08h")
    await bob.wait_for(lambda: len(bob.entries[B1]) == 1, timeout=20)
    cleaned = "abc\td\ne\rf[31mgh"
    assert bob.texts(B1) == [cleaned]
    history = await alice.ok("chat.history", {"stream": B1})
    assert [e["text"] for e in history["entries"]] == [cleaned]
    err = await error_of(alice, "chat.send", {"stream": B1, "client_id": "ctl", "text": "\x00\x01\x1f"})
    assert (err["code"], err["name"]) == (1000, "bad_request")
    await disconnect(alice, bob)


@pytest.mark.asyncio
async def test_del_and_c1_control_characters_are_stripped(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    await alice.send(B1, "a\x7fb\x9b31mc\x85d")
    history = await alice.ok("chat.history", {"stream": B1})
    await alice.disconnect()
    assert [e["text"] for e in history["entries"]] == ["ab31mcd"]


INERT = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "&lt;b&gt; &amp; \"q\" 'a' \\ {{7*7}} ${x} %s %(x)s",
    "' OR 1=1 --",
    '{"$ne": null}',
    "[b]bold[/b] **md** \u202eevil",
]


@pytest.mark.asyncio
async def test_text_is_returned_as_inert_text(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    bob = await connected(hub, "staff", "bob", "b1")
    for text in INERT:
        await alice.send(B1, text)
    await bob.wait_for(lambda: len(bob.entries[B1]) == len(INERT), timeout=20)
    assert [d["text"] for d in frames(bob, "chat.message")] == INERT
    history = await bob.ok("chat.history", {"stream": B1})
    assert [e["text"] for e in history["entries"]] == INERT
    page = await bob.ok("catchup", {"stream": B1, "after": 0})
    assert [e["text"] for e in page["entries"]] == INERT
    await disconnect(alice, bob)


@pytest.mark.asyncio
async def test_request_without_ack_gets_no_answer_and_the_socket_keeps_serving(hub: RunningHub) -> None:
    """docs/protocol.md: a request without an ack callback gets no answer at all."""
    async with aiohttp.ClientSession() as http:
        raw = await RawClient.connect(http, hub.url, auth={"token": hub.token("shopper", "alice")})
        try:
            assert (await raw.next_event(timeout=20))[0] == "welcome"
            await raw.emit("chat.send", {"stream": B1, "client_id": "c1", "text": "x" * 4001})
            # barrier: the ack of a later request comes after any frame for the first one
            history = await raw.emit("chat.history", {"stream": B1}, ack=True, timeout=20)
            got = []
            while not raw.events.empty():
                got.append(raw.events.get_nowait())
        finally:
            await raw.close()
    assert got == []
    assert history[0]["ok"] is True and history[0]["data"]["entries"] == []


# ---------------------------------------------------------------------------------------- order chat


async def event(hub: RunningHub, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = await hub.service("/api/v1/events", body)
    return result


@pytest.mark.asyncio
async def test_order_chat_only_after_assignment_and_only_for_that_driver(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    d1 = await connected(hub, "driver", "d1")
    d2 = await connected(hub, "driver", "d2")
    bob = await connected(hub, "staff", "bob", "b1")
    mallory = await connected(hub, "shopper", "mallory")

    def send_req(text: str) -> dict[str, Any]:
        return {"stream": O1, "client_id": str(ULID()), "text": text}

    assert (await error_of(alice, "chat.send", send_req("no order yet")))["code"] == 2003
    await event(hub, type="order.created", event_id="e1", order_id="o1", shopper_id="alice", boutique_id="b1")
    assert (await error_of(alice, "chat.send", send_req("no driver yet")))["code"] == 2003
    assert (await error_of(d1, "chat.send", send_req("not assigned yet")))["code"] == 2003

    await event(hub, type="delivery.assigned", event_id="e2", order_id="o1", driver_id="d1")
    await alice.send(O1, "where are you?")
    await d1.wait_for(lambda: d1.texts(O1) == ["where are you?"], timeout=20)
    await d1.send(O1, "two minutes away")
    await alice.wait_for(lambda: alice.texts(O1) == ["where are you?", "two minutes away"], timeout=20)
    assert [d["author_role"] for d in frames(alice, "chat.message")] == ["shopper", "driver"]

    for outsider in (d2, bob, mallory):
        assert (await error_of(outsider, "chat.send", send_req("let me in")))["code"] == 2003
        assert (await error_of(outsider, "chat.history", {"stream": O1}))["code"] == 2003
        assert (await error_of(outsider, "catchup", {"stream": O1}))["code"] == 2003
        assert (await error_of(outsider, "chat.read", {"stream": O1, "seq": 1}))["code"] == 2003
        assert O1 not in outsider.entries
        assert frames(outsider, "chat.message") == []
    assert O1 in [s["stream"] for s in await d1.sync()]
    assert O1 not in [s["stream"] for s in await d2.sync()]
    assert [c["stream"] for c in (await d1.ok("chat.list", {}))["conversations"]] == [O1]
    assert [c["stream"] for c in (await bob.ok("chat.list", {}))["conversations"]] == []

    # reassigned: the old driver loses the conversation, the new one gets its history
    await event(hub, type="delivery.assigned", event_id="e3", order_id="o1", driver_id="d2")
    assert (await error_of(d1, "chat.send", send_req("still me?")))["code"] == 2003
    assert (await error_of(d1, "chat.history", {"stream": O1}))["code"] == 2003
    assert (await d1.ok("chat.list", {}))["conversations"] == []
    history = await d2.ok("chat.history", {"stream": O1})
    assert [e["text"] for e in history["entries"]] == ["where are you?", "two minutes away"]
    await d2.send(O1, "I'm taking over")
    await alice.wait_for(lambda: len(alice.texts(O1)) == 3, timeout=20)
    assert alice.texts(O1)[-1] == "I'm taking over"
    await disconnect(alice, d1, d2, bob, mallory)


@pytest.mark.asyncio
async def test_newly_assigned_driver_sees_existing_order_chat_in_sync(hub: RunningHub) -> None:
    alice = await connected(hub, "shopper", "alice")
    await event(hub, type="order.created", event_id="e1", order_id="o1", shopper_id="alice", boutique_id="b1")
    await event(hub, type="delivery.assigned", event_id="e2", order_id="o1", driver_id="d1")
    await alice.send(O1, "hello driver")
    await event(hub, type="delivery.assigned", event_id="e3", order_id="o1", driver_id="d2")
    d2 = await connected(hub, "driver", "d2")
    try:
        assert d2.texts(O1) == ["hello driver"]
    finally:
        await disconnect(alice, d2)
