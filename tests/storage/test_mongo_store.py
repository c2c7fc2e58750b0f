"""What only the MongoDB store has to show: several hub nodes on one database.

The contract suite (``test_store_contract.py``) already runs every guarantee on MongoDB
through one store. Here each "node" is its own :class:`storage.mongo.MongoStore`, with its
own ``AsyncMongoClient`` and connection pool, all on one fresh SecantusDB database, as
several hub processes would be.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from storage import Store, open_store
from storage.base import StockCommit, StoredEntry
from storage.mongo import MongoStore
from tests.storage.test_store_contract import bump, stock_record
from tests.support.mongo import SecantusServer

TS0 = 1_700_000_000_000
STREAM = "chat:b:b1:alice"
NODES = 3


@pytest_asyncio.fixture
async def nodes(mongo_url: str) -> AsyncIterator[list[Store]]:
    """Three stores on one database, each with its own client: three hub nodes."""
    stores = list(await asyncio.gather(*(open_store(mongo_url) for _ in range(NODES))))
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


@pytest_asyncio.fixture
async def admin(mongo_url: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A plain client on the same server, for what the tests inspect or arrange below the store."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_three_nodes_appending_to_one_conversation_get_seqs_1_to_300(nodes: list[Store]) -> None:
    per_node = 100

    async def one(node: int, i: int) -> StoredEntry:
        r = await nodes[node].append(
            STREAM,
            author=f"user{node}",
            client_id=f"n{node}-{i:03d}",
            payload=f"{node}:{i}".encode(),
            ts=TS0 + i,
            members=("user:alice", "boutique:b1"),
        )
        assert r.duplicate is False
        return r.entry

    entries = await asyncio.gather(*(one(n, i) for i in range(per_node) for n in range(NODES)))
    total = NODES * per_node
    assert sorted(e.seq for e in entries) == list(range(1, total + 1))
    assert len({e.epoch for e in entries}) == 1
    for n in range(NODES):
        stored = await nodes[n].read_after(STREAM, 0, total + 10)
        assert [e.seq for e in stored] == list(range(1, total + 1))
        by_seq = {e.seq: e for e in stored}
        assert all(by_seq[e.seq] == e for e in entries)  # each node's answer is what is stored
        head = await nodes[n].head(STREAM)
        assert head is not None and (head.head, head.epoch) == (total, entries[0].epoch)
        assert head.last_ts == stored[-1].ts
        [listed] = await nodes[n].streams_of("boutique:b1", "chat:", 10)
        assert (listed.stream, listed.head) == (STREAM, total)


@pytest.mark.asyncio
async def test_the_same_client_id_raced_from_three_nodes_is_stored_once(nodes: list[Store]) -> None:
    # every node sends the same write 4 times, to this conversation and to 2 others
    streams = [STREAM, "chat:b:b2:alice", "chat:b:b3:alice"]
    results = await asyncio.gather(
        *(
            node.append(
                stream, author="alice", client_id="dup", payload=b"x", ts=TS0, members=("user:alice",)
            )
            for node in nodes
            for stream in streams
            for _ in range(4)
        )
    )
    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 1
    [winner] = originals
    assert {r.entry for r in results} == {winner.entry}
    assert winner.entry.seq == 1
    for stream in streams:
        stored = await nodes[0].read_after(stream, 0, 10)
        assert stored == ([winner.entry] if stream == winner.entry.stream else [])
        head = await nodes[1].head(stream)
        assert (head is not None) == (stream == winner.entry.stream)
    assert [h.stream for h in await nodes[2].streams_of("user:alice", "chat:", 10)] == [winner.entry.stream]


@pytest.mark.asyncio
async def test_opening_a_database_again_keeps_its_indexes_and_data(
    mongo_url: str, admin: AsyncMongoClient[dict[str, Any]]
) -> None:
    first, second = await asyncio.gather(open_store(mongo_url), open_store(mongo_url))  # racing creators
    entries = admin.get_default_database().get_collection("entries")
    before = {i["name"]: i async for i in await entries.list_indexes()}
    assert before["stream_seq"]["unique"] is True
    assert before["author_client_id"]["unique"] is True
    written = await first.append(STREAM, author="alice", client_id="c1", payload=b"x", ts=TS0, members=())
    await first.close()
    await second.close()

    third = await open_store(mongo_url)
    try:
        after = {i["name"]: i async for i in await entries.list_indexes()}
        assert after == before
        assert await third.read_after(STREAM, 0, 10) == [written.entry]
        again = await third.append(STREAM, author="alice", client_id="c1", payload=b"y", ts=TS0, members=())
        assert (again.duplicate, again.entry) == (True, written.entry)
    finally:
        await third.close()


@pytest.mark.asyncio
async def test_an_append_interrupted_after_its_insert_leaves_no_gap(
    mongo_url: str, admin: AsyncMongoClient[dict[str, Any]]
) -> None:
    """A node stores entry 3 and dies before recording it in the stream's head: the next
    append still gets 4, readers see 3, and the client's retry of 3 repairs the rest."""
    app_name = "doomed-node"  # names the doomed node's client, so the failpoint hits only it
    healthy = await open_store(mongo_url)
    doomed = await open_store(f"{mongo_url}?appname={app_name}")
    try:
        for i in (1, 2):
            await healthy.append(
                STREAM, author="alice", client_id=f"c{i}", payload=b"x", ts=TS0 + i, members=("user:alice",)
            )
        # the doomed node's next ``update`` (the head hint, after the insert) fails
        await admin.admin.command(
            "configureFailPoint",
            "failCommand",
            mode={"times": 1},
            data={"failCommands": ["update"], "errorCode": 2, "appName": app_name},
        )
        with pytest.raises(OperationFailure):
            await doomed.append(
                STREAM,
                author="alice",
                client_id="c3",
                payload=b"three",
                ts=TS0 + 3,
                members=("user:alice", "boutique:b9"),
            )
        head = await healthy.head(STREAM)
        assert head is not None and (head.head, head.last_ts) == (3, TS0 + 3)
        assert [e.seq for e in await healthy.read_after(STREAM, 0, 10)] == [1, 2, 3]
        assert [e.seq for e in await healthy.read_before(STREAM, None, 2)] == [2, 3]
        assert await healthy.unacked(STREAM, "bob", 10) == await healthy.read_after(STREAM, 0, 10)

        nxt = await healthy.append(
            STREAM, author="alice", client_id="c4", payload=b"x", ts=TS0 + 4, members=("user:alice",)
        )
        assert (nxt.duplicate, nxt.entry.seq) == (False, 4)
        assert await healthy.streams_of("boutique:b9", "chat:", 10) == []  # entry 3's members: not yet

        retry = await doomed.append(
            STREAM, author="alice", client_id="c3", payload=b"three", ts=TS0 + 99, members=("user:alice",)
        )
        assert (retry.duplicate, retry.entry.seq, retry.entry.ts, retry.entry.payload) == (
            True,
            3,
            TS0 + 3,
            b"three",
        )
        [listed] = await healthy.streams_of("boutique:b9", "chat:", 10)
        assert (listed.stream, listed.head, listed.last_ts) == (STREAM, 4, TS0 + 4)
        assert [e.seq for e in await doomed.read_after(STREAM, 0, 10)] == [1, 2, 3, 4]
    finally:
        await healthy.close()
        await doomed.close()


# ---------------------------------------------------------------------------------------- stock commits


@pytest.mark.asyncio
async def test_three_nodes_committing_to_one_sku_apply_each_change_once(nodes: list[Store]) -> None:
    commits = await asyncio.gather(
        *(bump(nodes[i % NODES], "b1", "s1", f"e{i:02d}", ts=TS0 + i) for i in range(20))
    )
    assert [c.outcome for c in commits] == ["committed"] * 20
    for node in nodes:
        now = await node.stock("b1", "s1")
        assert now is not None and (now.level, now.version) == (20, 20)
        stored = await node.read_after("inv:b1", 0, 100)
        assert [e.seq for e in stored] == list(range(1, 21))
        assert sorted(e.client_id for e in stored) == [f"e{i:02d}" for i in range(20)]
        assert [e.payload.split(b">")[1] for e in stored] == [str(i).encode() for i in range(1, 21)]
        assert {c.entry for c in commits} == set(stored)


@pytest.mark.asyncio
async def test_one_event_raced_from_three_nodes_commits_once(nodes: list[Store]) -> None:
    commits = await asyncio.gather(*(bump(node, "b1", "s1", "e1") for node in nodes for _ in range(4)))
    assert sorted(c.outcome for c in commits) == ["committed"] + ["duplicate"] * 11
    assert len({c.entry for c in commits}) == 1
    now = await nodes[0].stock("b1", "s1")
    assert now is not None and (now.level, now.version) == (1, 1)
    assert [e.client_id for e in await nodes[1].read_after("inv:b1", 0, 10)] == ["e1"]


async def _pending(admin: AsyncMongoClient[dict[str, Any]]) -> object:
    doc = (
        await admin.get_default_database()
        .get_collection("stock")
        .find_one({"boutique_id": "b1", "sku": "s1"})
    )
    assert doc is not None
    return doc["pending"]


@pytest.mark.asyncio
@pytest.mark.parametrize("finisher", ["retry", "lookup", "next commit"])
async def test_a_commit_interrupted_after_its_compare_and_set_is_finished(
    nodes: list[Store], admin: AsyncMongoClient[dict[str, Any]], finisher: str
) -> None:
    """A node wins the compare-and-set for e1 and dies before appending the entry. The
    SKU shows the new state, the stream does not have the change yet, and whichever comes
    first, the retry of e1, a lookup of e1, or the next commit to the SKU, finishes it."""
    doomed, healthy = nodes[0], nodes[1]
    assert isinstance(doomed, MongoStore)
    await bump(healthy, "b1", "s1", "e0", ts=TS0)
    record = stock_record(level=2, version=2, ts=TS0 + 1)
    claimed = await doomed._claim(record, 1, "e1", b"e1>2", TS0 + 1)
    assert not isinstance(claimed, StockCommit)
    assert await healthy.stock("b1", "s1") == record
    assert [e.client_id for e in await healthy.read_after("inv:b1", 0, 10)] == ["e0"]
    assert await _pending(admin) is not None

    if finisher == "retry":
        again = await healthy.commit_stock(
            record, expected_version=1, event_id="e1", payload=b"again", ts=TS0 + 9
        )
        assert (again.outcome, again.record) == ("duplicate", record)
        entry = again.entry
    elif finisher == "lookup":
        entry = await healthy.stock_entry("b1", "e1")
    else:
        nxt = await bump(healthy, "b1", "s1", "e2", ts=TS0 + 2)
        assert nxt.outcome == "committed" and nxt.record is not None
        assert (nxt.record.level, nxt.record.version) == (3, 3)
        entry = await healthy.stock_entry("b1", "e1")
    assert entry is not None
    assert (entry.stream, entry.seq, entry.client_id, entry.payload, entry.ts) == (
        "inv:b1",
        2,
        "e1",
        b"e1>2",
        TS0 + 1,
    )
    assert await _pending(admin) is None
    stored = await nodes[2].read_after("inv:b1", 0, 10)
    expected = ["e0", "e1", "e2"] if finisher == "next commit" else ["e0", "e1"]
    assert [e.client_id for e in stored] == expected
    assert stored[1] == entry
    head = await nodes[2].head("inv:b1")
    assert head is not None and head.head == len(stored)
    # the event stays committed once: a later retry is a plain duplicate
    late = await bump(doomed, "b1", "s1", "e1")
    assert (late.outcome, late.entry) == ("duplicate", entry)


# ---------------------------------------------------------------------------------------- open_store


@pytest.mark.asyncio
async def test_a_url_without_a_database_uses_soko(
    mongo_url: str, admin: AsyncMongoClient[dict[str, Any]]
) -> None:
    server_url = mongo_url.rsplit("/", 1)[0]
    await admin.drop_database("soko")
    store = await open_store(server_url)
    try:
        r = await store.append(STREAM, author="alice", client_id="c1", payload=b"x", ts=TS0, members=())
        doc = await admin.get_database("soko").get_collection("entries").find_one({"client_id": "c1"})
        assert doc is not None and doc["seq"] == r.entry.seq == 1
    finally:
        await store.close()
        await admin.drop_database("soko")


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["mongodb://127.0.0.1:1/soko", "mongodb+srv://cluster.example/soko"])
async def test_a_mongodb_url_without_pymongo_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setitem(sys.modules, "pymongo", None)  # import pymongo now raises ImportError
    monkeypatch.delitem(sys.modules, "storage.mongo", raising=False)
    with pytest.raises(ValueError, match=r"pip install 'soko-live\[mongo\]'"):
        await open_store(url)


@pytest.mark.asyncio
async def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="mongodb://"):
        await open_store("postgres://localhost/soko")


@pytest.mark.asyncio
async def test_ping_and_close_answer_promptly_once_the_server_is_gone(tmp_path: Path) -> None:
    """The driver's own waits are 30 s (server selection); a readiness probe and a hub
    shutdown must not inherit them. The 20 s bounds only separate the two, with margin."""
    server = SecantusServer(tmp_path / "db")
    await asyncio.to_thread(server.start)
    try:
        store = await open_store(server.url("soko"))
        await store.ping()
    finally:
        await asyncio.to_thread(server.stop)
    with pytest.raises(PyMongoError):
        await asyncio.wait_for(store.ping(), 20)
    await asyncio.wait_for(store.close(), 20)
    with pytest.raises(RuntimeError, match="closed"):
        await store.ping()
