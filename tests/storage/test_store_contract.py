"""The storage contract suite: every guarantee of :mod:`storage.base`, run against every backend.

Each backend is one entry in ``BACKENDS``: an async context manager that, given the test's
fixture request and a per-test directory, provides whatever the backend needs (a file, a
server) and yields a store URL that :func:`storage.open_store` understands. Opening the
same URL again must reach the same data: that is how durability across close + reopen is
tested. ``mongo`` is a fresh database on the session's SecantusDB server (``mongo_url`` in
``tests/conftest.py``), a MongoDB-wire-compatible server in its own process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from storage import Store, open_store
from storage.base import (
    OrderRecord,
    StockCommit,
    StockRecord,
    StoredEntry,
    StreamHead,
    TrackPointRecord,
    WishRecord,
)


@asynccontextmanager
async def sqlite_backend(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[str]:
    yield f"sqlite:///{tmp}/x.db"


@asynccontextmanager
async def mongo_backend(request: pytest.FixtureRequest, tmp: Path) -> AsyncIterator[str]:
    url: str = request.getfixturevalue("mongo_url")
    yield url


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[str]]] = {
    "sqlite": sqlite_backend,
    "mongo": mongo_backend,
}

TS0 = 1_700_000_000_000


@pytest_asyncio.fixture(params=sorted(BACKENDS))
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with BACKENDS[request.param](request, tmp_path) as url:
        yield url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


async def put(
    store: Store,
    stream: str,
    n: int,
    *,
    author: str = "alice",
    start_ts: int = TS0,
    members: tuple[str, ...] = ("user:alice",),
    tag: str = "m",
) -> list[StoredEntry]:
    """Append ``n`` entries one after another; client ids are ``<tag>-<stream-ish>-<i>``."""
    out = []
    safe = stream.replace(":", "_")
    for i in range(n):
        r = await store.append(
            stream,
            author=author,
            client_id=f"{tag}-{safe}-{i}",
            payload=f"p{i}".encode(),
            ts=start_ts + i,
            members=members,
        )
        assert r.duplicate is False
        out.append(r.entry)
    return out


def seqs(entries: list[StoredEntry]) -> list[int]:
    return [e.seq for e in entries]


# ---------------------------------------------------------------------------------------- streams


@pytest.mark.asyncio
async def test_append_returns_the_stored_entry(store: Store) -> None:
    r = await store.append(
        "chat:b:b1:alice",
        author="alice",
        client_id="c1",
        payload=b'{"x":1}',
        ts=TS0,
        members=("user:alice", "boutique:b1"),
    )
    assert r.duplicate is False
    e = r.entry
    assert (e.stream, e.seq, e.ts, e.author, e.client_id, e.payload) == (
        "chat:b:b1:alice",
        1,
        TS0,
        "alice",
        "c1",
        b'{"x":1}',
    )
    assert isinstance(e.epoch, str) and 1 <= len(e.epoch) <= 64
    [read] = await store.read_after("chat:b:b1:alice", 0, 10)
    assert read == e


@pytest.mark.asyncio
async def test_seq_is_gap_free_and_increasing_per_stream(store: Store) -> None:
    a, b = "chat:b:b1:alice", "chat:b:b1:bob"
    got_a, got_b = [], []
    for i in range(10):  # interleaved: one stream's appends never consume another's seqs
        got_a.append(
            (
                await store.append(
                    a, author="alice", client_id=f"a{i}", payload=b"x", ts=TS0 + i, members=("user:alice",)
                )
            ).entry.seq
        )
        if i % 2 == 0:
            got_b.append(
                (
                    await store.append(
                        b, author="bob", client_id=f"b{i}", payload=b"y", ts=TS0 + i, members=("user:bob",)
                    )
                ).entry.seq
            )
    assert got_a == list(range(1, 11))
    assert got_b == [1, 2, 3, 4, 5]
    assert seqs(await store.read_after(a, 0, 100)) == list(range(1, 11))
    assert seqs(await store.read_after(b, 0, 100)) == [1, 2, 3, 4, 5]


@pytest.mark.asyncio
async def test_concurrent_appends_to_one_stream_get_seqs_1_to_n(store: Store) -> None:
    stream = "chat:b:b1:alice"

    async def one(i: int) -> StoredEntry:
        r = await store.append(
            stream,
            author="alice",
            client_id=f"c{i:03d}",
            payload=str(i).encode(),
            ts=TS0 + i,
            members=("user:alice", "boutique:b1"),
        )
        assert r.duplicate is False
        return r.entry

    entries = await asyncio.gather(*(one(i) for i in range(200)))
    assert sorted(e.seq for e in entries) == list(range(1, 201))
    assert len({e.epoch for e in entries}) == 1
    stored = await store.read_after(stream, 0, 500)
    assert seqs(stored) == list(range(1, 201))
    # every append's answer is exactly what is stored at its seq
    by_seq = {e.seq: e for e in stored}
    assert all(by_seq[e.seq] == e for e in entries)
    head = await store.head(stream)
    assert head is not None and head.head == 200


@pytest.mark.asyncio
async def test_concurrent_appends_to_several_streams_stay_independent(store: Store) -> None:
    streams = [f"chat:b:b1:s{i}" for i in range(4)]

    async def one(stream: str, i: int) -> tuple[str, int]:
        r = await store.append(
            stream, author=stream[-2:], client_id=f"c{i}", payload=b"x", ts=TS0 + i, members=("boutique:b1",)
        )
        return stream, r.entry.seq

    results = await asyncio.gather(*(one(s, i) for i in range(25) for s in streams))
    for s in streams:
        assert sorted(seq for st, seq in results if st == s) == list(range(1, 26))
        assert seqs(await store.read_after(s, 0, 100)) == list(range(1, 26))


@pytest.mark.asyncio
async def test_epoch_is_fixed_per_stream_and_distinct_between_streams(store: Store) -> None:
    a = await put(store, "chat:b:b1:alice", 5)
    b = await put(store, "chat:b:b1:bob", 3, author="bob", members=("user:bob",))
    assert len({e.epoch for e in a}) == 1
    assert len({e.epoch for e in b}) == 1
    assert a[0].epoch != b[0].epoch
    head_a = await store.head("chat:b:b1:alice")
    assert head_a is not None and head_a.epoch == a[0].epoch
    more = await put(store, "chat:b:b1:alice", 2, tag="more")
    assert {e.epoch for e in more} == {a[0].epoch}
    assert {e.epoch for e in await store.read_after("chat:b:b1:alice", 0, 100)} == {a[0].epoch}
    assert {e.epoch for e in await store.read_before("chat:b:b1:alice", None, 100)} == {a[0].epoch}


@pytest.mark.asyncio
async def test_idempotent_append_returns_the_original_and_stores_nothing(store: Store) -> None:
    stream = "chat:b:b1:alice"
    first = await store.append(
        stream, author="alice", client_id="c1", payload=b"original", ts=TS0, members=("user:alice",)
    )
    again = await store.append(
        stream,
        author="alice",
        client_id="c1",
        payload=b"changed",
        ts=TS0 + 999,
        members=("user:alice", "boutique:b1"),
    )
    assert again.duplicate is True
    assert again.entry == first.entry  # same seq, epoch, ts and payload: the original
    head = await store.head(stream)
    assert head is not None and (head.head, head.last_ts) == (1, TS0)
    assert await store.read_after(stream, 0, 10) == [first.entry]
    # a duplicate stores nothing: not even the new member
    assert await store.streams_of("boutique:b1", "chat:", 10) == []
    nxt = await store.append(
        stream, author="alice", client_id="c2", payload=b"next", ts=TS0 + 1, members=("user:alice",)
    )
    assert (nxt.duplicate, nxt.entry.seq) == (False, 2)


@pytest.mark.asyncio
async def test_idempotency_key_is_author_and_client_id(store: Store) -> None:
    stream = "chat:b:b1:alice"
    a = await store.append(stream, author="alice", client_id="same", payload=b"a", ts=TS0, members=())
    b = await store.append(stream, author="bob", client_id="same", payload=b"b", ts=TS0, members=())
    assert (a.duplicate, a.entry.seq) == (False, 1)
    assert (b.duplicate, b.entry.seq) == (False, 2)


@pytest.mark.asyncio
async def test_idempotency_is_store_wide_not_per_stream(store: Store) -> None:
    first = await store.append(
        "chat:b:b1:alice", author="alice", client_id="c1", payload=b"a", ts=TS0, members=("user:alice",)
    )
    other = await store.append(
        "chat:b:b2:alice", author="alice", client_id="c1", payload=b"b", ts=TS0 + 1, members=("user:alice",)
    )
    assert other.duplicate is True
    assert other.entry == first.entry
    assert other.entry.stream == "chat:b:b1:alice"
    assert await store.head("chat:b:b2:alice") is None


@pytest.mark.asyncio
async def test_concurrent_duplicates_store_exactly_one_entry(store: Store) -> None:
    stream = "chat:b:b1:alice"
    results = await asyncio.gather(
        *(
            store.append(stream, author="alice", client_id="dup", payload=b"x", ts=TS0 + i, members=())
            for i in range(20)
        )
    )
    assert sum(1 for r in results if not r.duplicate) == 1
    assert {r.entry.seq for r in results} == {1}
    assert len({r.entry for r in results}) == 1
    assert seqs(await store.read_after(stream, 0, 100)) == [1]


@pytest.mark.asyncio
async def test_read_after_pages_ascending(store: Store) -> None:
    stream = "chat:b:b1:alice"
    written = await put(store, stream, 10)
    assert await store.read_after(stream, 0, 3) == written[0:3]
    assert await store.read_after(stream, 3, 3) == written[3:6]
    assert await store.read_after(stream, 6, 3) == written[6:9]
    assert await store.read_after(stream, 9, 3) == written[9:10]
    assert await store.read_after(stream, 10, 3) == []
    assert await store.read_after(stream, 50, 3) == []
    assert await store.read_after(stream, 0, 100) == written
    assert await store.read_after("chat:b:b1:nobody", 0, 10) == []


@pytest.mark.asyncio
async def test_read_before_pages_backwards_each_page_ascending(store: Store) -> None:
    stream = "chat:b:b1:alice"
    written = await put(store, stream, 10)
    assert await store.read_before(stream, None, 3) == written[7:10]
    assert await store.read_before(stream, 8, 3) == written[4:7]
    assert await store.read_before(stream, 5, 3) == written[1:4]
    assert await store.read_before(stream, 2, 3) == written[0:1]
    assert await store.read_before(stream, 1, 3) == []
    assert await store.read_before(stream, 100, 2) == written[8:10]
    assert await store.read_before(stream, None, 100) == written
    assert await store.read_before("chat:b:b1:nobody", None, 10) == []


@pytest.mark.asyncio
async def test_head_is_none_for_unknown_and_tracks_newest(store: Store) -> None:
    assert await store.head("chat:b:b1:alice") is None
    written = await put(store, "chat:b:b1:alice", 4, start_ts=TS0 + 100)
    head = await store.head("chat:b:b1:alice")
    assert head is not None
    assert (head.stream, head.epoch, head.head, head.last_ts) == (
        "chat:b:b1:alice",
        written[0].epoch,
        4,
        TS0 + 103,
    )
    assert await store.head("chat:b:b1:bob") is None


@pytest.mark.asyncio
async def test_streams_of_filters_by_member_and_prefix_newest_first(store: Store) -> None:
    await put(store, "chat:b:b1:alice", 1, start_ts=TS0 + 10, members=("user:alice", "boutique:b1"), tag="x")
    await put(store, "chat:b:b2:alice", 1, start_ts=TS0 + 30, members=("user:alice", "boutique:b2"), tag="y")
    await put(store, "chat:o:o1", 1, start_ts=TS0 + 20, members=("user:alice", "user:d1"), tag="z")
    await put(store, "inbox:u:alice", 1, start_ts=TS0 + 40, author="soko", members=("user:alice",), tag="n")
    await put(store, "chat:b:b1:bob", 1, start_ts=TS0 + 50, author="bob", members=("user:bob", "boutique:b1"))

    def ids(heads: list[StreamHead]) -> list[str]:
        return [h.stream for h in heads]

    assert ids(await store.streams_of("user:alice", "chat:", 10)) == [
        "chat:b:b2:alice",
        "chat:o:o1",
        "chat:b:b1:alice",
    ]
    assert ids(await store.streams_of("user:alice", "chat:b:", 10)) == ["chat:b:b2:alice", "chat:b:b1:alice"]
    assert ids(await store.streams_of("user:alice", "chat:o:", 10)) == ["chat:o:o1"]
    assert ids(await store.streams_of("user:alice", "inbox:", 10)) == ["inbox:u:alice"]
    assert ids(await store.streams_of("user:alice", "", 10)) == [
        "inbox:u:alice",
        "chat:b:b2:alice",
        "chat:o:o1",
        "chat:b:b1:alice",
    ]
    assert ids(await store.streams_of("user:alice", "chat:", 2)) == ["chat:b:b2:alice", "chat:o:o1"]
    assert ids(await store.streams_of("boutique:b1", "chat:b:", 10)) == ["chat:b:b1:bob", "chat:b:b1:alice"]
    assert ids(await store.streams_of("user:d1", "chat:", 10)) == ["chat:o:o1"]
    assert await store.streams_of("user:carol", "chat:", 10) == []
    # the prefix is a string prefix: "chat:b:b1:" does not match boutique b10's conversations
    await put(store, "chat:b:b10:carol", 1, author="carol", members=("user:carol", "boutique:b10"))
    assert await store.streams_of("user:carol", "chat:b:b1:", 10) == []
    assert ids(await store.streams_of("user:carol", "chat:b:b1", 10)) == ["chat:b:b10:carol"]
    [head] = await store.streams_of("user:d1", "chat:", 10)
    assert (head.head, head.last_ts) == (1, TS0 + 20)


@pytest.mark.asyncio
async def test_streams_of_orders_by_latest_activity_and_merges_members(store: Store) -> None:
    await put(store, "chat:b:b1:alice", 1, start_ts=TS0 + 10, members=("user:alice",), tag="a")
    await put(store, "chat:b:b2:alice", 1, start_ts=TS0 + 20, members=("user:alice",), tag="b")
    # new activity moves b1 to the front, and a member named on a later append is merged in
    await store.append(
        "chat:b:b1:alice",
        author="alice",
        client_id="late",
        payload=b"x",
        ts=TS0 + 30,
        members=("user:alice", "boutique:b1"),
    )
    heads = await store.streams_of("user:alice", "chat:", 10)
    assert [(h.stream, h.head, h.last_ts) for h in heads] == [
        ("chat:b:b1:alice", 2, TS0 + 30),
        ("chat:b:b2:alice", 1, TS0 + 20),
    ]
    assert [h.stream for h in await store.streams_of("boutique:b1", "chat:", 10)] == ["chat:b:b1:alice"]


# ---------------------------------------------------------------------------------------- cursors


@pytest.mark.asyncio
async def test_advance_read_never_goes_backwards(store: Store) -> None:
    stream = "chat:b:b1:alice"
    assert await store.read_positions(stream) == {}
    assert await store.advance_read(stream, "user:alice", 3) == 3
    assert await store.advance_read(stream, "user:alice", 1) == 3
    assert await store.advance_read(stream, "user:alice", 3) == 3
    assert await store.advance_read(stream, "boutique:b1", 2) == 2
    assert await store.advance_read(stream, "user:alice", 7) == 7
    assert await store.advance_read(stream, "user:alice", 0) == 7
    assert await store.read_positions(stream) == {"user:alice": 7, "boutique:b1": 2}
    assert await store.read_positions("chat:b:b1:bob") == {}


@pytest.mark.asyncio
async def test_advance_read_concurrently_keeps_the_maximum(store: Store) -> None:
    stream = "chat:b:b1:alice"
    await asyncio.gather(*(store.advance_read(stream, "user:alice", s) for s in [5, 9, 2, 7, 9, 1, 8]))
    assert await store.read_positions(stream) == {"user:alice": 9}


@pytest.mark.asyncio
async def test_unacked_and_out_of_order_acks(store: Store) -> None:
    stream = "inbox:u:alice"
    written = await put(store, stream, 6, author="soko")
    assert await store.unacked(stream, "alice", 100) == written
    assert await store.unacked(stream, "alice", 2) == written[:2]
    await store.ack(stream, "alice", [2, 4])  # out of order: 1 still missing, so no floor yet
    assert seqs(await store.unacked(stream, "alice", 100)) == [1, 3, 5, 6]
    assert seqs(await store.unacked(stream, "alice", 2)) == [1, 3]
    await store.ack(stream, "alice", [1])  # the floor rises over 1, 2
    assert seqs(await store.unacked(stream, "alice", 100)) == [3, 5, 6]
    await store.ack(stream, "alice", [6, 5])
    assert seqs(await store.unacked(stream, "alice", 100)) == [3]
    await store.ack(stream, "alice", [3, 3])  # the floor rises over everything
    assert await store.unacked(stream, "alice", 100) == []
    # idempotent: acking again, below the floor, changes nothing
    await store.ack(stream, "alice", [1, 2, 3, 4, 5, 6])
    assert await store.unacked(stream, "alice", 100) == []
    # entries written after the floor are unacked
    more = await put(store, stream, 3, author="soko", tag="more")
    assert seqs(more) == [7, 8, 9]
    assert await store.unacked(stream, "alice", 100) == more
    await store.ack(stream, "alice", [8])
    assert seqs(await store.unacked(stream, "alice", 100)) == [7, 9]
    # acks are per user
    assert seqs(await store.unacked(stream, "bob", 100)) == list(range(1, 10))
    assert await store.unacked("inbox:u:nobody", "alice", 10) == []


@pytest.mark.asyncio
async def test_ack_floor_survives_later_gaps(store: Store) -> None:
    stream = "inbox:u:alice"
    await put(store, stream, 10, author="soko")
    await store.ack(stream, "alice", [1, 2, 3, 5, 7, 9])
    assert seqs(await store.unacked(stream, "alice", 100)) == [4, 6, 8, 10]
    await store.ack(stream, "alice", [4])
    assert seqs(await store.unacked(stream, "alice", 100)) == [6, 8, 10]
    await store.ack(stream, "alice", [6, 8])
    assert seqs(await store.unacked(stream, "alice", 100)) == [10]
    await store.ack(stream, "alice", [10])
    assert await store.unacked(stream, "alice", 100) == []


@pytest.mark.asyncio
async def test_count_after_by_and_not_by(store: Store) -> None:
    stream = "chat:b:b1:alice"
    for i, author in enumerate(["alice", "bob", "alice", "carol", "alice", "bob"]):
        await store.append(stream, author=author, client_id=f"c{i}", payload=b"x", ts=TS0 + i, members=())
    assert await store.count_after(stream, 0) == 6
    assert await store.count_after(stream, 2) == 4
    assert await store.count_after(stream, 6) == 0
    assert await store.count_after(stream, 0, by="alice") == 3
    assert await store.count_after(stream, 3, by="alice") == 1
    assert await store.count_after(stream, 0, not_by="alice") == 3
    assert await store.count_after(stream, 2, not_by="alice") == 2
    assert await store.count_after(stream, 0, by="nobody") == 0
    assert await store.count_after(stream, 0, not_by="nobody") == 6
    assert await store.count_after("chat:b:b1:unknown", 0) == 0


# ---------------------------------------------------------------------------------------- preferences


@pytest.mark.asyncio
async def test_muted_categories_are_replaced_per_user(store: Store) -> None:
    assert await store.muted("alice") == []
    await store.set_muted("alice", ["order", "chat"])
    assert sorted(await store.muted("alice")) == ["chat", "order"]
    assert await store.muted("bob") == []
    await store.set_muted("alice", ["stock"])
    assert await store.muted("alice") == ["stock"]
    await store.set_muted("alice", [])
    assert await store.muted("alice") == []


# ---------------------------------------------------------------------------------------- orders


def order(
    order_id: str,
    *,
    shopper: str = "alice",
    boutique: str = "b1",
    status: str = "created",
    driver: str | None = None,
    ts: int = TS0,
    pickup: tuple[float, float] | None = None,
    dropoff: tuple[float, float] | None = None,
) -> OrderRecord:
    return OrderRecord(
        order_id=order_id,
        shopper_id=shopper,
        boutique_id=boutique,
        status=status,
        driver_id=driver,
        updated_ts=ts,
        pickup=pickup,
        dropoff=dropoff,
    )


@pytest.mark.asyncio
async def test_orders_upsert_get_and_replace(store: Store) -> None:
    assert await store.get_order("o1") is None
    o1 = order("o1")
    assert await store.upsert_order(o1) == o1
    assert await store.get_order("o1") == o1
    o1b = order("o1", status="in_transit", driver="d1", ts=TS0 + 5)
    assert await store.upsert_order(o1b) == o1b
    assert await store.get_order("o1") == o1b
    assert await store.get_order("o2") is None


@pytest.mark.asyncio
async def test_orders_for_filters_and_sorts_newest_first(store: Store) -> None:
    await store.upsert_order(order("o1", shopper="alice", boutique="b1", ts=TS0 + 1))
    await store.upsert_order(order("o2", shopper="alice", boutique="b2", driver="d1", ts=TS0 + 3))
    await store.upsert_order(order("o3", shopper="bob", boutique="b1", driver="d1", ts=TS0 + 2))
    await store.upsert_order(order("o4", shopper="bob", boutique="b1", ts=TS0 + 4))

    async def ids(field: str, value: str, limit: int = 10) -> list[str]:
        return [o.order_id for o in await store.orders_for(field=field, value=value, limit=limit)]

    assert await ids("shopper_id", "alice") == ["o2", "o1"]
    assert await ids("shopper_id", "bob") == ["o4", "o3"]
    assert await ids("boutique_id", "b1") == ["o4", "o3", "o1"]
    assert await ids("boutique_id", "b1", limit=2) == ["o4", "o3"]
    assert await ids("driver_id", "d1") == ["o2", "o3"]
    assert await ids("driver_id", "d2") == []
    # a replaced order moves to the front
    await store.upsert_order(order("o1", shopper="alice", boutique="b1", driver="d1", ts=TS0 + 9))
    assert await ids("driver_id", "d1") == ["o1", "o2", "o3"]
    [o] = await store.orders_for(field="shopper_id", value="alice", limit=1)
    assert o == order("o1", shopper="alice", boutique="b1", driver="d1", ts=TS0 + 9)


@pytest.mark.asyncio
async def test_order_points_round_trip(store: Store) -> None:
    o1 = order("o1", pickup=(-1.2921, 36.8219), dropoff=(-1.3, 36.75))
    assert await store.upsert_order(o1) == o1
    assert await store.get_order("o1") == o1
    assert await store.orders_for(field="shopper_id", value="alice", limit=10) == [o1]
    o2 = order("o2", pickup=(0.0, 0.0), ts=TS0 + 1)  # the null island is a point, not a missing one
    await store.upsert_order(o2)
    assert await store.get_order("o2") == o2
    # replacing the order replaces its points too, down to none
    await store.upsert_order(order("o1", status="ready"))
    got = await store.get_order("o1")
    assert got is not None and (got.status, got.pickup, got.dropoff) == ("ready", None, None)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "field", ["status", "order_id", "updated_ts", "shopper_id = shopper_id OR 1=1 --", ""]
)
async def test_orders_for_rejects_an_unknown_field(store: Store, field: str) -> None:
    await store.upsert_order(order("o1"))
    with pytest.raises(ValueError):
        await store.orders_for(field=field, value="alice", limit=10)


# ---------------------------------------------------------------------------------------- inventory


def stock_record(
    sku: str = "s1",
    *,
    boutique: str = "b1",
    level: int = 5,
    version: int = 1,
    sources: dict[str, int] | None = None,
    low: bool = False,
    ts: int = TS0,
) -> StockRecord:
    return StockRecord(
        boutique_id=boutique,
        sku=sku,
        level=level,
        version=version,
        sources={"service": version} if sources is None else sources,
        low=low,
        threshold=None,
        clear=None,
        updated_ts=ts,
    )


async def bump(store: Store, boutique: str, sku: str, event_id: str, *, ts: int = TS0) -> StockCommit:
    """What the inventory domain does: read the SKU, commit level + 1 on that version, and
    start over on a conflict. Returns the first outcome that is not a conflict."""
    for _ in range(1000):
        current = await store.stock(boutique, sku)
        version, level = (0, 0) if current is None else (current.version, current.level)
        record = stock_record(sku, boutique=boutique, level=level + 1, version=version + 1, ts=ts)
        commit = await store.commit_stock(
            record,
            expected_version=version,
            event_id=event_id,
            payload=f"{event_id}>{level + 1}".encode(),
            ts=ts,
        )
        if commit.outcome != "conflict":
            return commit
    raise AssertionError(f"{event_id} lost 1000 compare-and-sets in a row")


@pytest.mark.asyncio
async def test_commit_stock_stores_the_state_and_appends_the_change(store: Store) -> None:
    assert await store.stock("b1", "s1") is None
    assert await store.stock_entry("b1", "e1") is None
    first = stock_record(level=7, sources={"device:d1": 3, "service": 9})
    c1 = await store.commit_stock(first, expected_version=0, event_id="e1", payload=b'{"l":7}', ts=TS0 + 1)
    assert (c1.outcome, c1.record) == ("committed", first)
    assert c1.entry is not None
    e = c1.entry
    assert (e.stream, e.seq, e.ts, e.author, e.client_id, e.payload) == (
        "inv:b1",
        1,
        TS0 + 1,
        "stock:b1",
        "e1",
        b'{"l":7}',
    )
    assert await store.stock("b1", "s1") == first
    assert await store.stock_entry("b1", "e1") == e
    assert await store.read_after("inv:b1", 0, 10) == [e]

    second = stock_record(level=4, version=2, sources={"device:d1": 4, "service": 9}, low=True, ts=TS0 + 2)
    c2 = await store.commit_stock(second, expected_version=1, event_id="e2", payload=b'{"l":4}', ts=TS0 + 2)
    assert (c2.outcome, c2.record) == ("committed", second)
    assert c2.entry is not None and (c2.entry.seq, c2.entry.epoch) == (2, e.epoch)
    assert await store.stock("b1", "s1") == second
    assert await store.read_after("inv:b1", 0, 10) == [e, c2.entry]
    head = await store.head("inv:b1")
    assert head is not None and (head.head, head.last_ts) == (2, TS0 + 2)


@pytest.mark.asyncio
async def test_commit_stock_on_a_wrong_version_is_a_conflict_and_writes_nothing(store: Store) -> None:
    missing = await store.commit_stock(
        stock_record(version=4), expected_version=3, event_id="e0", payload=b"x", ts=TS0
    )
    assert (missing.outcome, missing.record, missing.entry) == ("conflict", None, None)
    assert await store.stock("b1", "s1") is None
    assert await store.head("inv:b1") is None

    v1 = (await bump(store, "b1", "s1", "e1")).record
    assert v1 is not None and v1.version == 1
    for expected in (0, 2, 7):  # behind, ahead, far ahead
        c = await store.commit_stock(
            stock_record(level=99, version=expected + 1),
            expected_version=expected,
            event_id=f"lose-{expected}",
            payload=b"lost",
            ts=TS0 + 9,
        )
        assert (c.outcome, c.record, c.entry) == ("conflict", v1, None)
        assert await store.stock_entry("b1", f"lose-{expected}") is None
    assert await store.stock("b1", "s1") == v1
    assert [e.client_id for e in await store.read_after("inv:b1", 0, 10)] == ["e1"]
    # the losers' event ids are free: they commit once they name the right version
    c = await store.commit_stock(
        stock_record(level=1, version=2), expected_version=1, event_id="lose-0", payload=b"x", ts=TS0
    )
    assert c.outcome == "committed" and c.entry is not None and c.entry.seq == 2


@pytest.mark.asyncio
async def test_commit_stock_of_a_known_event_returns_the_original_and_writes_nothing(store: Store) -> None:
    original = await store.commit_stock(
        stock_record(level=3), expected_version=0, event_id="e1", payload=b"first", ts=TS0
    )
    later = await bump(store, "b1", "s1", "e2", ts=TS0 + 5)
    assert later.outcome == "committed"
    # the same event again, whether it names the old version or the current one
    for expected in (0, 2):
        again = await store.commit_stock(
            stock_record(level=50, version=expected + 1),
            expected_version=expected,
            event_id="e1",
            payload=b"again",
            ts=TS0 + 9,
        )
        assert (again.outcome, again.entry, again.record) == ("duplicate", original.entry, later.record)
    assert await store.stock("b1", "s1") == later.record
    assert [e.payload for e in await store.read_after("inv:b1", 0, 10)] == [b"first", b"e2>4"]
    # event ids are kept per boutique: the same id is a new event in another boutique
    other = await store.commit_stock(
        stock_record(boutique="b2"), expected_version=0, event_id="e1", payload=b"b2", ts=TS0
    )
    assert other.outcome == "committed" and other.entry is not None
    assert (other.entry.stream, other.entry.seq, other.entry.author) == ("inv:b2", 1, "stock:b2")


@pytest.mark.asyncio
async def test_inventory_stream_entries_are_gap_free_across_skus(store: Store) -> None:
    events = [("s2", "e1"), ("s1", "e2"), ("s2", "e3"), ("s3", "e4"), ("s1", "e5")]
    commits = [await bump(store, "b1", sku, event_id, ts=TS0 + i) for i, (sku, event_id) in enumerate(events)]
    entries = [c.entry for c in commits]
    assert seqs(await store.read_after("inv:b1", 0, 100)) == [1, 2, 3, 4, 5]
    assert await store.read_after("inv:b1", 0, 100) == entries
    assert await store.read_after("inv:b1", 2, 2) == entries[2:4]
    assert await store.read_before("inv:b1", None, 2) == entries[3:5]
    assert [e.client_id for e in await store.read_after("inv:b1", 0, 100)] == [e for _, e in events]
    assert [(r.sku, r.version) for r in await store.stock_page("b1", skus=None, after=None, limit=10)] == [
        ("s1", 2),
        ("s2", 2),
        ("s3", 1),
    ]


@pytest.mark.asyncio
async def test_concurrent_commits_to_one_sku_each_apply_once(store: Store) -> None:
    commits = await asyncio.gather(*(bump(store, "b1", "s1", f"e{i:02d}", ts=TS0 + i) for i in range(20)))
    assert [c.outcome for c in commits] == ["committed"] * 20
    now = await store.stock("b1", "s1")
    assert now is not None and (now.level, now.version) == (20, 20)
    stored = await store.read_after("inv:b1", 0, 100)
    assert seqs(stored) == list(range(1, 21))
    assert sorted(e.client_id for e in stored) == [f"e{i:02d}" for i in range(20)]
    assert sorted((c.entry for c in commits), key=lambda e: e.seq if e else 0) == stored
    # each commit's record is the version its entry carries: the levels 1..20 in seq order
    assert [e.payload.split(b">")[1] for e in stored] == [str(i).encode() for i in range(1, 21)]


@pytest.mark.asyncio
async def test_one_event_raced_by_several_committers_commits_once(store: Store) -> None:
    commits = await asyncio.gather(*(bump(store, "b1", "s1", "e1", ts=TS0 + i) for i in range(10)))
    assert sorted(c.outcome for c in commits) == ["committed"] + ["duplicate"] * 9
    assert len({c.entry for c in commits}) == 1
    now = await store.stock("b1", "s1")
    assert now is not None and (now.level, now.version) == (1, 1)
    assert await store.read_after("inv:b1", 0, 10) == [commits[0].entry]


@pytest.mark.asyncio
@pytest.mark.parametrize(("version", "expected"), [(1, 1), (3, 1), (0, 0), (1, -1)])
async def test_commit_stock_refuses_a_version_that_does_not_follow(
    store: Store, version: int, expected: int
) -> None:
    with pytest.raises(ValueError):
        await store.commit_stock(
            stock_record(version=version), expected_version=expected, event_id="e1", payload=b"x", ts=TS0
        )
    assert await store.stock("b1", "s1") is None
    assert await store.stock_entry("b1", "e1") is None
    assert await store.head("inv:b1") is None


@pytest.mark.asyncio
async def test_set_threshold_keeps_the_version_and_survives_commits(store: Store) -> None:
    declared = await store.set_threshold("b1", "s1", 5, 8)
    assert declared == StockRecord(
        boutique_id="b1",
        sku="s1",
        level=0,
        version=0,
        sources={},
        low=False,
        threshold=5,
        clear=8,
        updated_ts=declared.updated_ts,
    )
    assert await store.stock("b1", "s1") == declared
    assert await store.head("inv:b1") is None  # a threshold is not a stock change
    # the first change commits on version 0; threshold and clear are the stored ones, not the record's
    sent = msgspec.structs.replace(stock_record(level=4), threshold=99, clear=100)
    c = await store.commit_stock(sent, expected_version=0, event_id="e1", payload=b"x", ts=TS0)
    assert c.outcome == "committed"
    assert c.record == msgspec.structs.replace(sent, threshold=5, clear=8)
    assert await store.stock("b1", "s1") == c.record
    changed = await store.set_threshold("b1", "s1", 3, None)
    assert changed == msgspec.structs.replace(sent, threshold=3, clear=None)
    later = await bump(store, "b1", "s1", "e2")
    assert later.record is not None and (later.record.version, later.record.threshold) == (2, 3)
    removed = await store.set_threshold("b1", "s1", None, None)
    assert (removed.version, removed.level, removed.threshold, removed.clear) == (2, 5, None, None)
    assert seqs(await store.read_after("inv:b1", 0, 10)) == [1, 2]


@pytest.mark.asyncio
async def test_stock_page_orders_pages_and_filters_by_sku(store: Store) -> None:
    for i, sku in enumerate(["d", "a", "e", "c"]):
        await bump(store, "b1", sku, f"e{i}")
    await store.set_threshold("b1", "b", 2, None)  # a declared SKU without stock is listed too
    await bump(store, "b2", "a", "x1")

    async def page(skus: list[str] | None = None, after: str | None = None, limit: int = 10) -> list[str]:
        return [r.sku for r in await store.stock_page("b1", skus=skus, after=after, limit=limit)]

    assert await page() == ["a", "b", "c", "d", "e"]
    assert await page(limit=2) == ["a", "b"]
    assert await page(after="b", limit=2) == ["c", "d"]
    assert await page(after="d", limit=2) == ["e"]
    assert await page(after="e") == []
    assert await page(after="bb") == ["c", "d", "e"]
    assert await page(skus=["e", "a", "zz", "c"]) == ["a", "c", "e"]
    assert await page(skus=["e", "a", "zz", "c"], after="a", limit=1) == ["c"]
    assert await page(skus=[]) == []
    [b2] = await store.stock_page("b2", skus=None, after=None, limit=10)
    assert (b2.boutique_id, b2.sku, b2.level) == ("b2", "a", 1)
    assert await store.stock_page("b3", skus=None, after=None, limit=10) == []
    assert await store.stock_page("b1", skus=None, after=None, limit=10) == [
        await store.stock("b1", sku) for sku in "abcde"
    ]


@pytest.mark.asyncio
async def test_boutiques_keep_their_own_stock_and_streams(store: Store) -> None:
    await bump(store, "b1", "s1", "e1")
    await bump(store, "b1", "s1", "e2")
    await bump(store, "b2", "s1", "f1")
    await store.set_threshold("b2", "s1", 1, None)
    one, two = await store.stock("b1", "s1"), await store.stock("b2", "s1")
    assert one is not None and (one.version, one.level, one.threshold) == (2, 2, None)
    assert two is not None and (two.version, two.level, two.threshold) == (1, 1, 1)
    assert [e.client_id for e in await store.read_after("inv:b1", 0, 10)] == ["e1", "e2"]
    assert [e.client_id for e in await store.read_after("inv:b2", 0, 10)] == ["f1"]
    assert await store.stock_entry("b2", "e1") is None
    assert await store.stock_entry("b1", "f1") is None
    # a version in one boutique says nothing about the other's
    c = await store.commit_stock(
        stock_record(boutique="b2", version=3), expected_version=2, event_id="f2", payload=b"", ts=TS0
    )
    assert c.outcome == "conflict"


# ---------------------------------------------------------------------------------------- wishlists


@pytest.mark.asyncio
async def test_wishes_are_idempotent_and_listed_newest_first(store: Store) -> None:
    assert await store.wishes_of("alice", 10) == []
    await store.add_wish("alice", "b1", "s1", TS0)
    await store.add_wish("alice", "b1", "s2", TS0 + 10)
    await store.add_wish("alice", "b2", "s1", TS0 + 5)
    await store.add_wish("alice", "b1", "s1", TS0 + 50)  # again: keeps its first added_ts
    await store.add_wish("bob", "b1", "s1", TS0 + 1)
    assert await store.wishes_of("alice", 10) == [
        WishRecord(boutique_id="b1", sku="s2", added_ts=TS0 + 10),
        WishRecord(boutique_id="b2", sku="s1", added_ts=TS0 + 5),
        WishRecord(boutique_id="b1", sku="s1", added_ts=TS0),
    ]
    assert [w.sku for w in await store.wishes_of("alice", 2)] == ["s2", "s1"]
    await store.remove_wish("alice", "b2", "s1")
    await store.remove_wish("alice", "b2", "s1")  # again: nothing to remove, no error
    await store.remove_wish("carol", "b9", "s9")
    assert [(w.boutique_id, w.sku) for w in await store.wishes_of("alice", 10)] == [
        ("b1", "s2"),
        ("b1", "s1"),
    ]
    assert await store.wishes_of("bob", 10) == [WishRecord(boutique_id="b1", sku="s1", added_ts=TS0 + 1)]
    # removed, then added again: a new wish with a new added_ts
    await store.add_wish("alice", "b2", "s1", TS0 + 60)
    assert (await store.wishes_of("alice", 1))[0] == WishRecord(boutique_id="b2", sku="s1", added_ts=TS0 + 60)


@pytest.mark.asyncio
async def test_wishers_page_ascending_per_sku(store: Store) -> None:
    for i, user in enumerate(["dave", "alice", "carol", "bob"]):
        await store.add_wish(user, "b1", "s1", TS0 + i)
    await store.add_wish("erin", "b1", "s2", TS0)
    await store.add_wish("frank", "b2", "s1", TS0)
    assert await store.wishers("b1", "s1", after=None, limit=10) == ["alice", "bob", "carol", "dave"]
    assert await store.wishers("b1", "s1", after=None, limit=2) == ["alice", "bob"]
    assert await store.wishers("b1", "s1", after="bob", limit=2) == ["carol", "dave"]
    assert await store.wishers("b1", "s1", after="bobby", limit=10) == ["carol", "dave"]
    assert await store.wishers("b1", "s1", after="dave", limit=2) == []
    assert await store.wishers("b1", "s2", after=None, limit=10) == ["erin"]
    assert await store.wishers("b2", "s1", after=None, limit=10) == ["frank"]
    await store.remove_wish("bob", "b1", "s1")
    assert await store.wishers("b1", "s1", after="alice", limit=10) == ["carol", "dave"]


# ---------------------------------------------------------------------------------------- tracks and places


@pytest.mark.asyncio
async def test_track_points_dedupe_by_ts_oldest_first(store: Store) -> None:
    assert await store.track_points("o1", 10) == []
    p10, p20, p30 = (
        TrackPointRecord(ts=TS0 + t, lat=-1.0 - t / 1000, lon=36.5 + t / 1000) for t in (10, 20, 30)
    )
    for p in (p30, p10, p20):
        await store.add_track_point("o1", p)
    await store.add_track_point("o1", TrackPointRecord(ts=TS0 + 20, lat=9.0, lon=9.0))  # same ts: ignored
    await store.add_track_point("o2", TrackPointRecord(ts=TS0 + 20, lat=5.0, lon=5.0))  # other order: kept
    assert await store.track_points("o1", 10) == [p10, p20, p30]
    assert await store.track_points("o1", 2) == [p10, p20]
    assert await store.track_points("o2", 10) == [TrackPointRecord(ts=TS0 + 20, lat=5.0, lon=5.0)]


@pytest.mark.asyncio
async def test_boutique_location_is_created_and_replaced(store: Store) -> None:
    assert await store.boutique_location("b1") is None
    await store.set_boutique_location("b1", (-1.2864, 36.8172))
    assert await store.boutique_location("b1") == (-1.2864, 36.8172)
    await store.set_boutique_location("b1", (-4.0435, 39.6682))
    assert await store.boutique_location("b1") == (-4.0435, 39.6682)
    assert await store.boutique_location("b2") is None


# ---------------------------------------------------------------------------------------- event ledger


@pytest.mark.asyncio
async def test_mark_seen_records_once(store: Store) -> None:
    assert await store.seen("evt-1") is False
    assert await store.mark_seen("evt-1", TS0) is True
    assert await store.seen("evt-1") is True
    assert await store.mark_seen("evt-1", TS0 + 1) is False
    assert await store.seen("evt-2") is False
    results = await asyncio.gather(*(store.mark_seen("evt-3", TS0) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]


# ---------------------------------------------------------------------------------------- plain values


@pytest.mark.asyncio
async def test_results_are_plain_python_values(store: Store) -> None:
    """The hub hands these to its wire codec as they are: a driver's own integer type (BSON's
    Int64 for a millisecond ts) or byte type would fail to encode there."""
    stream = "inbox:u:alice"
    appended = [await put(store, stream, 3, author="soko", start_ts=TS0 * 1000)]
    await store.ack(stream, "alice", [2])
    await store.upsert_order(order("o1", driver="d1", ts=TS0 * 1000))
    structs: list[object] = [
        *appended,
        await store.read_after(stream, 0, 10),
        await store.read_before(stream, None, 10),
        await store.unacked(stream, "alice", 10),
        await store.head(stream),
        await store.streams_of("user:alice", "", 10),
        await store.get_order("o1"),
        await store.orders_for(field="driver_id", value="d1", limit=10),
    ]
    big = TS0 * 1000
    committed = await store.commit_stock(
        stock_record(level=2**40, sources={"device:d1": big}, ts=big),
        expected_version=0,
        event_id="e1",
        payload=b"x",
        ts=big,
    )
    await store.set_threshold("b1", "s1", 2**40, 2**41)
    await store.add_wish("alice", "b1", "s1", big)
    await store.add_track_point("o1", TrackPointRecord(ts=big, lat=1, lon=2))
    await store.set_boutique_location("b1", (1, 2))
    await store.upsert_order(order("o2", pickup=(1, 2), dropoff=(3, 4), ts=big))
    structs += [
        committed,
        await store.stock("b1", "s1"),
        await store.stock_page("b1", skus=None, after=None, limit=10),
        await store.stock_entry("b1", "e1"),
        await store.wishes_of("alice", 10),
        await store.track_points("o1", 10),
        await store.get_order("o2"),
    ]
    msgspec.to_builtins(structs)  # raises on anything but plain values
    stock = await store.stock("b1", "s1")
    assert stock is not None
    assert [
        type(n) for n in (stock.level, stock.version, stock.threshold, stock.clear, stock.updated_ts)
    ] == [int] * 5
    assert [type(n) for n in stock.sources.values()] == [int]
    [point] = await store.track_points("o1", 10)
    assert [type(n) for n in (point.ts, point.lat, point.lon)] == [int, float, float]
    located = await store.get_order("o2")
    assert located is not None and located.pickup is not None
    assert [type(n) for n in (*located.pickup, *(await store.boutique_location("b1") or ()))] == [float] * 4
    numbers = [
        await store.advance_read(stream, "user:alice", 2),
        *(await store.read_positions(stream)).values(),
        await store.count_after(stream, 0),
    ]
    assert [type(n) for n in numbers] == [int, int, int]
    assert [type(e.payload) for e in await store.read_after(stream, 0, 10)] == [bytes] * 3


# ---------------------------------------------------------------------------------------- lifecycle


@pytest.mark.asyncio
async def test_ping(store: Store) -> None:
    await store.ping()


@pytest.mark.asyncio
async def test_everything_survives_close_and_reopen(store_url: str) -> None:
    s = await open_store(store_url)
    written = await put(s, "chat:b:b1:alice", 5, members=("user:alice", "boutique:b1"))
    inbox = await put(s, "inbox:u:alice", 3, author="soko", start_ts=TS0 + 10)
    await s.advance_read("chat:b:b1:alice", "boutique:b1", 4)
    await s.ack("inbox:u:alice", "alice", [1, 3])
    await s.set_muted("alice", ["order"])
    o1 = order("o1", driver="d1", status="ready")
    await s.upsert_order(o1)
    await s.mark_seen("evt-1", TS0)
    stocked = await bump(s, "b1", "s1", "e1")
    await s.set_threshold("b1", "s1", 2, 4)
    await s.add_wish("alice", "b1", "s1", TS0)
    await s.add_track_point("o1", TrackPointRecord(ts=TS0, lat=1.5, lon=2.5))
    await s.set_boutique_location("b1", (3.5, 4.5))
    await s.close()

    s = await open_store(store_url)
    try:
        assert await s.read_after("chat:b:b1:alice", 0, 100) == written
        head = await s.head("chat:b:b1:alice")
        assert head is not None and (head.epoch, head.head, head.last_ts) == (written[0].epoch, 5, TS0 + 4)
        assert [h.stream for h in await s.streams_of("boutique:b1", "chat:", 10)] == ["chat:b:b1:alice"]
        assert await s.read_positions("chat:b:b1:alice") == {"boutique:b1": 4}
        assert await s.unacked("inbox:u:alice", "alice", 10) == [inbox[1]]
        assert await s.muted("alice") == ["order"]
        assert await s.get_order("o1") == o1
        assert await s.seen("evt-1") is True
        assert stocked.record is not None
        assert await s.stock("b1", "s1") == msgspec.structs.replace(stocked.record, threshold=2, clear=4)
        assert await s.stock_entry("b1", "e1") == stocked.entry
        assert (await bump(s, "b1", "s1", "e1")).outcome == "duplicate"
        assert await s.wishes_of("alice", 10) == [WishRecord(boutique_id="b1", sku="s1", added_ts=TS0)]
        assert await s.track_points("o1", 10) == [TrackPointRecord(ts=TS0, lat=1.5, lon=2.5)]
        assert await s.boutique_location("b1") == (3.5, 4.5)
        # idempotency and seq assignment continue in the same epoch
        dup = await s.append(
            "chat:b:b1:alice",
            author="alice",
            client_id=written[2].client_id,
            payload=b"z",
            ts=TS0 + 99,
            members=(),
        )
        assert (dup.duplicate, dup.entry) == (True, written[2])
        nxt = await s.append(
            "chat:b:b1:alice", author="alice", client_id="after-reopen", payload=b"z", ts=TS0 + 99, members=()
        )
        assert (nxt.duplicate, nxt.entry.seq, nxt.entry.epoch) == (False, 6, written[0].epoch)
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_a_closed_store_refuses_work(store_url: str) -> None:
    s = await open_store(store_url)
    await s.close()
    await s.close()  # closing twice is harmless
    with pytest.raises(Exception):  # noqa: B017 - the contract only says "unusable"
        await s.append("chat:b:b1:alice", author="a", client_id="c", payload=b"", ts=TS0, members=())
