"""Group commit on a real SQLite file: fewer commits, the same answers, nothing reported that was not kept."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_asyncio

from storage import open_store
from storage.group_commit import GroupCommitter, GroupRolledBack, unit_of_work
from storage.sqlite import SqliteStore

TS0 = 1_700_000_000_000


class Writer:
    """A writer connection on its own thread, recording each COMMIT it executes."""

    def __init__(self, path: Path) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.commits = 0
        self.conn = self.pool.submit(self._open, path).result()
        self.group = GroupCommitter(self.pool, lambda: self.conn)

    def _open(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE rows (name TEXT PRIMARY KEY)")
        conn.execute("CREATE TABLE refs (name TEXT REFERENCES rows (name) DEFERRABLE INITIALLY DEFERRED)")
        conn.set_trace_callback(self._traced)
        return conn

    def _traced(self, statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            self.commits += 1

    def insert(self, name: str, *, then: Callable[[], None] | None = None) -> Callable[[], str]:
        def unit() -> str:
            with unit_of_work(self.conn):
                self.conn.execute("INSERT INTO rows VALUES (?)", (name,))
                if then is not None:
                    then()
            return name

        return unit

    def dangling_ref(self) -> Callable[[], None]:
        """A unit that succeeds but makes the group's COMMIT fail (a deferred foreign key)."""

        def unit() -> None:
            self.conn.execute("INSERT INTO refs VALUES ('nobody')")

        return unit

    def names(self) -> set[str]:
        rows = self.pool.submit(lambda: self.conn.execute("SELECT name FROM rows").fetchall()).result()
        return {row[0] for row in rows}


@pytest_asyncio.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    made = Writer(tmp_path / "group.db")
    yield made
    made.pool.submit(made.conn.close).result()
    made.pool.shutdown()


def boom() -> None:
    raise ValueError("unit failed after writing")


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_concurrent_units_share_commits_and_each_gets_its_own_result(writer: Writer) -> None:
    names = [f"row-{i}" for i in range(300)]
    results = await asyncio.gather(*(writer.group.run(writer.insert(name)) for name in names))
    assert results == names
    assert writer.names() == set(names)
    # gather queues all 300 before the committer runs: two groups (256 + 44), not 300 transactions
    assert writer.commits == 2, writer.commits


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_failing_unit_rolls_back_alone(writer: Writer) -> None:
    outcomes = await asyncio.gather(
        writer.group.run(writer.insert("before")),
        writer.group.run(writer.insert("bad", then=boom)),
        writer.group.run(writer.insert("before")),  # duplicate key: fails inside SQLite, alone
        writer.group.run(writer.insert("after")),
        return_exceptions=True,
    )
    assert outcomes[0] == "before" and outcomes[3] == "after"
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    assert writer.names() == {"before", "after"}


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_lost_transaction_fails_every_unit_it_held(writer: Writer) -> None:
    """SQLite rolls a whole transaction back on I/O errors; a ROLLBACK inside a unit does the same here."""

    def lose_transaction() -> None:
        writer.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    await writer.group.run(writer.insert("warm-up"))
    outcomes = await asyncio.gather(
        writer.group.run(writer.insert("a")),
        writer.group.run(writer.insert("b")),
        writer.group.run(writer.insert("c", then=lose_transaction)),
        writer.group.run(writer.insert("d")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], GroupRolledBack) and isinstance(outcomes[1], GroupRolledBack)
    assert isinstance(outcomes[2], sqlite3.OperationalError)
    assert outcomes[3] == "d"
    assert writer.names() == {"warm-up", "d"}, "every unit reported as failed left nothing behind"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_store_appends_in_one_burst_keep_contiguous_seqs_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "soko.db"
    store = await open_store(f"sqlite:///{path}")
    assert isinstance(store, SqliteStore)
    results = await asyncio.gather(
        *(
            store.append(
                "chat:o1", author="alice", client_id=f"c{i}", payload=b"{}", ts=TS0 + i, members=("alice",)
            )
            for i in range(200)
        ),
        # a retry of c7 in the same burst is recognised as a duplicate
        store.append("chat:o1", author="alice", client_id="c7", payload=b"{}", ts=TS0, members=("alice",)),
    )
    await store.close()
    seqs = [result.entry.seq for result in results[:200]]
    assert seqs == list(range(1, 201))
    assert results[200].duplicate and results[200].entry.seq == 8

    reopened = await open_store(f"sqlite:///{path}")
    try:
        kept = await reopened.read_after("chat:o1", 0, 500)
        assert [entry.client_id for entry in kept] == [f"c{i}" for i in range(200)]
    finally:
        await reopened.close()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_failed_commit_fails_every_unit_of_its_group(writer: Writer) -> None:
    await writer.group.run(writer.insert("warm-up"))
    outcomes = await asyncio.gather(
        writer.group.run(writer.insert("a")),
        writer.group.run(writer.dangling_ref()),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, GroupRolledBack) for outcome in outcomes), outcomes
    assert "FOREIGN KEY" in str(outcomes[0])
    assert writer.names() == {"warm-up"}
    assert await writer.group.run(writer.insert("b")) == "b", "the next group starts clean"
    assert writer.names() == {"warm-up", "b"}


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_cancelled_caller_neither_stops_its_write_nor_disturbs_the_others(writer: Writer) -> None:
    await writer.group.run(writer.insert("warm-up"))
    cancelled = asyncio.ensure_future(writer.group.run(writer.insert("cancelled")))
    kept = asyncio.ensure_future(writer.group.run(writer.insert("kept")))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await kept == "kept"
    assert cancelled.cancelled()
    await writer.group.drain()
    assert writer.names() == {"warm-up", "cancelled", "kept"}


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_store_close_commits_queued_writes_and_refuses_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "soko.db"
    store = await open_store(f"sqlite:///{path}")
    appends = [
        asyncio.ensure_future(
            store.append("chat:o2", author="bob", client_id=f"c{i}", payload=b"{}", ts=TS0, members=("bob",))
        )
        for i in range(50)
    ]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        await store.append("chat:o2", author="bob", client_id="late", payload=b"{}", ts=TS0, members=("bob",))
    await closing
    assert [result.entry.seq for result in await asyncio.gather(*appends)] == list(range(1, 51))

    reopened = await open_store(f"sqlite:///{path}")
    try:
        assert len(await reopened.read_after("chat:o2", 0, 100)) == 50
    finally:
        await reopened.close()
