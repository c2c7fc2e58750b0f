"""The local store on its own: cursor rules, resets, latest-value stock, the outbox, owners."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from clients.common.store import LocalStore, StoreOwnerError
from protocol.messages import ChatFrame, ChatSent, NotificationFrame, StockFrame, StockItem, StockSnapshot

S = "chat:b:boutique-a:shopper-1"
ME = "shopper-1"


def chat(seq: int, text: str | None = None, epoch: str = "E1", author: str = "staff-1") -> ChatFrame:
    return ChatFrame(
        stream=S,
        seq=seq,
        epoch=epoch,
        ts=1000 + seq,
        author=author,
        author_role="staff",
        client_id=f"c{seq}",
        text=text or f"t{seq}",
    )


def stock(seq: int, version: int, level: int) -> StockFrame:
    return StockFrame(
        stream="inv:boutique-a",
        seq=seq,
        epoch="I1",
        ts=seq,
        boutique_id="boutique-a",
        sku="mug",
        level=level,
        version=version,
        event_id=f"e{seq}",
        delta=0,
    )


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    opened = await LocalStore.open(tmp_path / "s.db")
    await opened.bind(ME, "shopper")
    yield opened
    await opened.close()


@pytest.mark.asyncio
async def test_live_frames_follow_the_cursor_rules(store: LocalStore) -> None:
    assert await store.apply_frame(chat(1)) == "applied"
    assert await store.apply_frame(chat(1)) == "ignored"
    assert await store.apply_frame(chat(3)) == "gap"
    assert await store.apply_frame(chat(2, epoch="E2")) == "epoch"
    assert await store.apply_frame(chat(2)) == "applied"
    assert [(m.seq, m.text) for m in await store.messages(S)] == [(1, "t1"), (2, "t2")]
    cursor = await store.cursor(S)
    assert (cursor.epoch, cursor.seq) == ("E1", 2)


@pytest.mark.asyncio
async def test_a_page_applies_in_order_and_recovered_false_drops_the_old_copy(store: LocalStore) -> None:
    cursor = await store.apply_page(S, "E1", True, [chat(2), chat(1), chat(3)], head=5)
    assert (cursor.epoch, cursor.seq, cursor.head) == ("E1", 3, 5)
    cursor = await store.apply_page(S, "E1", True, [chat(3), chat(4)], head=5)
    assert cursor.seq == 4
    cursor = await store.apply_page(S, "E9", False, [chat(1, "new", epoch="E9")], head=1)
    assert (cursor.epoch, cursor.seq) == ("E9", 1)
    assert [(m.seq, m.text) for m in await store.messages(S)] == [(1, "new")]


@pytest.mark.asyncio
async def test_stock_keeps_the_highest_version_whatever_the_arrival_order(store: LocalStore) -> None:
    assert await store.apply_stock_frame(stock(2, version=2, level=5))
    assert not await store.apply_stock_frame(stock(1, version=1, level=9))
    item = StockItem(sku="mug", level=1, version=1, low=False, threshold=None, updated_ts=0)
    snapshot = StockSnapshot(
        boutique_id="boutique-a",
        stream="inv:boutique-a",
        epoch="I1",
        head=1,
        items=[item],
        has_more=False,
        next_after=None,
    )
    await store.apply_stock_snapshot(snapshot)
    row = await store.stock_item("boutique-a", "mug")
    assert row is not None and (row.level, row.version) == (5, 2)
    assert await store.apply_stock_frame(stock(3, version=3, level=4))
    assert [(r.sku, r.level) for r in await store.stock("boutique-a")] == [("mug", 4)]


@pytest.mark.asyncio
async def test_the_outbox_keeps_order_and_shows_pending_sent_and_failed(store: LocalStore) -> None:
    ids = [await store.queue_chat(S, f"q{i}") for i in range(3)]
    assert [i.client_id for i in await store.pending(10)] == ids
    head = (await store.pending(1))[0]
    sent = ChatSent(stream=S, seq=1, epoch="E1", ts=5, client_id=ids[0], duplicate=False)
    assert await store.settle_chat(head.id, sent)
    assert not await store.settle_chat(head.id, sent), "settled once"
    second = (await store.pending(1))[0]
    await store.fail(second.id, "forbidden")
    assert [(m.text, m.status, m.seq) for m in await store.messages(S)] == [
        ("q0", "sent", 1),
        ("q1", "failed", None),
        ("q2", "pending", None),
    ]
    assert [i.client_id for i in await store.pending(10)] == [ids[2]]
    assert (await store.cursor(S)).seq == 0, "an ack holds the entry but moves no cursor"
    assert await store.apply_frame(chat(1, "q0", author=ME)) == "applied"
    assert [m.text for m in await store.messages(S)] == ["q0", "q1", "q2"]


@pytest.mark.asyncio
async def test_read_marks_coalesce_and_lower_the_badge(store: LocalStore) -> None:
    inbox = "inbox:u:shopper-1"
    for seq in (1, 2, 3):
        frame = NotificationFrame(
            stream=inbox,
            seq=seq,
            epoch="N1",
            ts=seq,
            id=f"n{seq}",
            category="system",
            title="t",
            body="",
            badge=seq,
        )
        assert await store.apply_frame(frame) == "applied"
    assert await store.badge() == 3
    assert await store.queue_read(inbox, 2) is not None
    assert await store.badge() == 1
    assert await store.queue_read(inbox, 1) is None, "a mark never moves back"
    assert await store.queue_read(inbox, 3) is not None
    assert await store.badge() == 0
    assert [i.payload for i in await store.pending(10)] == [b'{"stream":"inbox:u:shopper-1","seq":3}']


@pytest.mark.asyncio
async def test_a_store_belongs_to_one_user(store: LocalStore) -> None:
    await store.bind(ME, "shopper")
    with pytest.raises(StoreOwnerError):
        await store.bind("someone-else", "shopper")
    with pytest.raises(ValueError):
        await store.queue_chat("inbox:u:shopper-1", "not a chat")
