"""The local store on its own: cursor rules, resets, latest-value stock, the outbox, owners,
driver jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from clients.common.store import STATUS_ORDER, LocalStore, StoreOwnerError
from hub.domains.orders import STATUS_RANK
from protocol.messages import (
    ChatFrame,
    ChatSent,
    DeliveryUpdated,
    NotificationFrame,
    OrderView,
    ReadFrame,
    StockFrame,
    StockItem,
    StockSnapshot,
)

S = "chat:b:boutique-a:shopper-1"
ME = "shopper-1"
INBOX = "inbox:u:shopper-1"


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


def note(seq: int, epoch: str) -> NotificationFrame:
    return NotificationFrame(
        stream=INBOX, seq=seq, epoch=epoch, ts=seq, id=f"n{epoch}{seq}", category="system", title="t", body=""
    )


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    opened = await LocalStore.open(tmp_path / "s.db")
    await opened.bind(ME, "shopper")
    yield opened
    await opened.close()


DRIVER = "driver-1"


def order(order_id: str, status: str = "ready", driver: str | None = DRIVER, ts: int = 1) -> OrderView:
    return OrderView(
        order_id=order_id,
        shopper_id=ME,
        boutique_id="boutique-a",
        status=status,
        driver_id=driver,
        updated_ts=ts,
    )


@pytest_asyncio.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LocalStore]:
    opened = await LocalStore.open(tmp_path / "driver.db")
    await opened.bind(DRIVER, "driver")
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


@pytest.mark.asyncio
async def test_a_new_epoch_resets_read_marks_so_new_entries_are_unread(store: LocalStore) -> None:
    for seq in range(1, 6):
        assert await store.apply_frame(note(seq, "N1")) == "applied"
        assert await store.apply_frame(chat(seq)) == "applied"
    assert await store.queue_read(INBOX, 5) is not None
    assert await store.queue_read(S, 5) is not None
    await store.set_read(ReadFrame(stream=S, party="boutique:boutique-a", seq=5), mine=False)
    [conversation] = await store.conversations()
    assert (conversation.unread, conversation.read_seq, conversation.peer_read_seq) == (0, 5, 5)

    await store.apply_page(INBOX, "N2", False, [note(1, "N2"), note(2, "N2")], head=2)
    await store.apply_page(S, "E2", False, [chat(1, epoch="E2"), chat(2, epoch="E2")], head=2)
    assert await store.pending(10) == [], "unsent marks of the old epoch are not sent"
    assert [n.read for n in await store.notifications(INBOX)] == [False, False]
    [conversation] = await store.conversations()
    assert (conversation.unread, conversation.read_seq, conversation.peer_read_seq) == (2, 0, 0)
    assert await store.queue_read(INBOX, 2) is not None, "a mark of the new epoch is sent"
    assert await store.queue_read(S, 1) is not None


@pytest.mark.asyncio
async def test_a_complete_order_list_drops_jobs_of_orders_not_ours_any_more(driver: LocalStore) -> None:
    await driver.set_orders([order("o1"), order("o2"), order("o3")], complete=True)
    assert sorted(j.order_id for j in await driver.jobs()) == ["o1", "o2", "o3"]
    await driver.queue_delivery("o2", "picked_up")

    await driver.set_orders([order("o3")], complete=True)  # o1 and o2 were reassigned meanwhile
    assert sorted(j.order_id for j in await driver.jobs()) == ["o2", "o3"], "o2's step is still pending"
    [item] = await driver.pending(10)
    await driver.fail(item.id, "delivery.update: forbidden")
    await driver.set_orders([order("o3")], complete=True)
    assert [j.order_id for j in await driver.jobs()] == ["o3"]


@pytest.mark.asyncio
async def test_a_refused_step_goes_back_to_the_last_accepted_one_and_shows_why(driver: LocalStore) -> None:
    await driver.set_orders([order("o1")], complete=True)
    await driver.queue_delivery("o1", "accepted")
    [accepted] = await driver.pending(10)
    assert await driver.settle_delivery(accepted.id, DeliveryUpdated("o1", "ready", True, False))
    await driver.queue_delivery("o1", "picked_up")
    await driver.queue_delivery("o1", "delivered")
    picked_up, delivered = await driver.pending(10)

    await driver.fail(picked_up.id, "delivery.update: forbidden (3001): not yours")
    [job] = await driver.jobs()
    assert (job.step, job.step_pending, job.failed_step) == ("delivered", True, "picked_up"), "one pending"
    await driver.fail(delivered.id, "delivery.update: forbidden (3001): not yours")
    [job] = await driver.jobs()
    assert (job.step, job.step_pending, job.failed_step) == ("accepted", False, "delivered")
    assert job.step_error is not None and "forbidden" in job.step_error
    assert await driver.pending_count() == 0

    await driver.queue_delivery("o1", "picked_up")
    [job] = await driver.jobs()
    assert (job.step, job.step_pending, job.failed_step, job.step_error) == ("picked_up", True, None, None)


@pytest.mark.asyncio
async def test_a_delivery_ack_never_moves_the_order_status_back(driver: LocalStore) -> None:
    await driver.set_orders([order("o1", "ready")], complete=True)
    await driver.queue_delivery("o1", "picked_up")
    [item] = await driver.pending(10)
    await driver.set_order(order("o1", "delivered", ts=2))  # a newer order.updated came first
    assert await driver.settle_delivery(item.id, DeliveryUpdated("o1", "picked_up", True, False))
    [job] = await driver.jobs()
    assert (job.status, job.step, job.step_pending) == ("delivered", "picked_up", False)

    await driver.set_orders([order("o2", "ready")])
    await driver.queue_delivery("o2", "picked_up")
    [item] = await driver.pending(10)
    assert await driver.settle_delivery(item.id, DeliveryUpdated("o2", "picked_up", True, False))
    assert [o.status for o in await driver.orders() if o.order_id == "o2"] == ["picked_up"], "forward"


def test_the_client_status_order_is_the_hubs_rank() -> None:
    assert list(STATUS_ORDER) == sorted(STATUS_RANK, key=STATUS_RANK.__getitem__)
