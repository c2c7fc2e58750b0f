"""The gateway's SQLite outbox: order, versions, memory, the full-outbox policy, status, and kill -9."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from edge.outbox import Outbox, OutboxError, OutboxItem, read_status
from edge.sensors import SensorMemory
from protocol.messages import DeviceHealthReport, StockSet

REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", "b1", max_events=1000)
    yield box
    await box.close()


def stock(item: OutboxItem) -> StockSet:
    assert item.kind == "stock"
    return msgspec.json.decode(item.payload, type=StockSet)


def health(item: OutboxItem) -> DeviceHealthReport:
    assert item.kind == "health"
    return msgspec.json.decode(item.payload, type=DeviceHealthReport)


def levels(items: list[OutboxItem]) -> list[tuple[str, int]]:
    return [(stock(i).sku, stock(i).level) for i in items if i.kind == "stock"]


@pytest.mark.asyncio
async def test_items_come_out_in_the_order_they_were_put(outbox: Outbox) -> None:
    ids = [
        await outbox.put_stock("s1", "w1", "sku-a", 5),
        await outbox.put_health("s2", "w2", "sku-b", "silent", "no reading for 60 s", 1_700_000_000_000),
        await outbox.put_stock("s2", "w2", "sku-b", 0),
        await outbox.put_stock("s1", "w1", "sku-a", 4),
    ]
    items = await outbox.peek(10)
    assert [i.event_id for i in items] == ids
    assert [i.kind for i in items] == ["stock", "health", "stock", "stock"]
    assert [i.id for i in items] == sorted(i.id for i in items)
    first = stock(items[0])
    assert (first.event_id, first.boutique_id, first.sku, first.level) == (ids[0], "b1", "sku-a", 5)
    report = health(items[1])
    assert (report.shelf, report.sensor, report.sku, report.state) == ("s2", "w2", "sku-b", "silent")
    assert (report.detail, report.ts, report.boutique_id) == ("no reading for 60 s", 1_700_000_000_000, "b1")
    assert [i.event_id for i in await outbox.peek(2)] == ids[:2]

    await outbox.remove([items[0].id, items[1].id])
    assert [i.event_id for i in await outbox.peek(10)] == ids[2:]


@pytest.mark.asyncio
async def test_versions_strictly_rise_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    versions: list[int] = []
    for _ in range(3):
        box = await Outbox.open(path, "b1", max_events=1000)
        for level in range(5):
            await box.put_stock("s1", "w1", "sku-a", level)
        await box.put_stock("s2", "w2", "sku-b", 1)
        versions += [stock(i).version or 0 for i in await box.peek(1000)]
        await box.remove([i.id for i in await box.peek(1000)])
        await box.close()
    assert len(versions) == 18
    assert all(a < b for a, b in itertools.pairwise(versions))


@pytest.mark.asyncio
async def test_versions_start_at_the_clock_and_never_follow_it_back(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    before_ms = time.time_ns() // 1_000_000
    box = await Outbox.open(path, "b1", max_events=1000)
    await box.put_stock("s1", "w1", "sku-a", 1)
    first = stock((await box.peek(1))[0]).version
    await box.close()
    # A replaced outbox file still outranks what the hub saw from the lost one.
    assert first is not None and first >= before_ms

    ahead = 2**52

    def set_counter() -> None:
        conn = sqlite3.connect(path)
        conn.execute("UPDATE counters SET value = ? WHERE name = 'version'", (ahead,))
        conn.commit()
        conn.close()

    await asyncio.to_thread(set_counter)
    box = await Outbox.open(path, "b1", max_events=1000)
    try:
        await box.put_stock("s1", "w1", "sku-a", 2)
        assert stock((await box.peek(2))[1]).version == ahead + 1
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_sensor_memory_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, "b1", max_events=1000)
    assert await box.memories() == {}
    await box.put_stock("s1", "w1", "sku-a", 7)
    await box.put_stock("s1", "w1", "sku-a", 6)
    await box.put_health("s1", "w1", "sku-a", "invalid", "negative weight", 1)
    await box.put_health("s2", "w2", "sku-b", "silent", "", 2)
    await box.put_stock("s3", "w3", "sku-c", 0)
    await box.close()

    box = await Outbox.open(path, "b1", max_events=1000)
    try:
        assert await box.memories() == {
            "s1/w1": SensorMemory(level=6, health="invalid"),
            "s2/w2": SensorMemory(level=None, health="silent"),
            "s3/w3": SensorMemory(level=0, health="ok"),
        }
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_a_full_outbox_coalesces_stock_per_sku_keeping_the_latest(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "outbox.db", "b1", max_events=6)
    try:
        for sku, level in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)]:
            await box.put_stock("s", sku, sku, level)
        in_flight = await box.peek(6)
        await box.put_stock("s", "a", "a", 4)

        items = await box.peek(100)
        assert levels(items) == [("c", 1), ("b", 2), ("a", 3), ("a", 4)]
        assert [i.id for i in items] == sorted(i.id for i in items)
        status = await box.status()
        assert (status.totals.created, status.totals.coalesced, status.depth) == (7, 3, 4)

        # An ack for a batch peeked before coalescing only removes what is still pending.
        await box.remove([i.id for i in in_flight])
        assert levels(await box.peek(100)) == [("a", 4)]
        assert (await box.status()).totals.delivered == 3
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_a_full_outbox_coalesces_health_per_sensor_then_drops_the_oldest_health(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "outbox.db", "b1", max_events=4)
    try:
        await box.put_health("s1", "x", "a", "silent", "1", 1)
        await box.put_health("s1", "y", "b", "invalid", "2", 2)
        await box.put_health("s1", "x", "a", "ok", "3", 3)
        await box.put_health("s1", "x", "a", "silent", "4", 4)
        await box.put_health("s1", "x", "a", "ok", "5", 5)
        items = await box.peek(100)
        assert [(health(i).sensor, health(i).detail) for i in items] == [("y", "2"), ("x", "4"), ("x", "5")]
        assert (await box.status()).totals.coalesced == 2

        await box.remove([i.id for i in items])
        await box.put_health("s1", "x", "a", "silent", "6", 6)
        await box.put_health("s1", "y", "b", "ok", "7", 7)
        await box.put_stock("s1", "z", "c", 1)
        await box.put_stock("s1", "w", "d", 1)
        # Full, and nothing is superseded: the oldest health event makes room; stock is kept.
        await box.put_stock("s1", "z", "c", 2)
        items = await box.peek(100)
        assert [i.kind for i in items] == ["health", "stock", "stock", "stock"]
        assert health(items[0]).detail == "7"
        assert levels(items) == [("c", 1), ("d", 1), ("c", 2)]
        status = await box.status()
        assert (status.totals.dropped, status.totals.coalesced, status.depth) == (1, 2, 4)
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_invalid_events_are_refused_and_nothing_is_stored(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="StockSet"):
        await outbox.put_stock("s1", "w1", "sku a", 1)
    with pytest.raises(ValueError, match="StockSet"):
        await outbox.put_stock("s1", "w1", "sku-a", -1)
    with pytest.raises(ValueError, match="DeviceHealthReport"):
        await outbox.put_health("s1", "w1", "sku-a", "on fire", "", 1)
    assert await outbox.peek(10) == []
    assert await outbox.memories() == {}
    await outbox.put_health("s1", "w1", "sku-a", "invalid", "x" * 500, 1)
    assert health((await outbox.peek(1))[0]).detail == "x" * 200


@pytest.mark.asyncio
async def test_another_boutiques_outbox_is_refused(tmp_path: Path) -> None:
    box = await Outbox.open(tmp_path / "outbox.db", "b1", max_events=10)
    await box.close()
    with pytest.raises(OutboxError, match="outbox of boutique 'b1', not 'b2'"):
        await Outbox.open(tmp_path / "outbox.db", "b2", max_events=10)
    await asyncio.to_thread((tmp_path / "junk.db").write_bytes, b"not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"junk\.db is not a usable edge outbox"):
        await Outbox.open(tmp_path / "junk.db", "b1", max_events=10)


@pytest.mark.asyncio
async def test_wait_for_items_blocks_while_empty_and_returns_after_a_put(outbox: Outbox) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(outbox.wait_for_items(), 0.2)
    waiter = asyncio.create_task(outbox.wait_for_items())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(waiter), 0.2)
    await outbox.put_stock("s1", "w1", "sku-a", 1)
    await asyncio.wait_for(waiter, 10)
    # Something pending: returns at once, however often it is asked.
    await asyncio.wait_for(outbox.wait_for_items(), 10)
    await asyncio.wait_for(outbox.wait_for_items(), 10)
    await outbox.remove([i.id for i in await outbox.peek(10)])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(outbox.wait_for_items(), 0.2)


@pytest.mark.asyncio
async def test_a_full_disk_fails_the_put_whole_and_leaves_the_outbox_usable(outbox: Outbox) -> None:
    await outbox.put_stock("s1", "w1", "sku-a", 1)

    def fill_to_the_brim() -> None:
        # A connection's own page limit is the portable way to make SQLite see a full disk;
        # it has to be set on the outbox's connection, on its thread.
        conn = outbox._c
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    await outbox._run(fill_to_the_brim)
    before = await outbox.status()
    level = 1
    with pytest.raises(OutboxError, match="full") as raised:
        while level < 10_000:  # fills the free space of the last pages, then fails
            level += 1
            await outbox.put_stock("s1", "w1", "sku-a", level)
    assert "rollback" not in str(raised.value)
    after = await outbox.status()
    # Nothing half-written: every put before the failing one is whole, the failing one is absent.
    assert after.depth == after.totals.created == level - 1 > before.depth
    assert levels(await outbox.peek(10_000))[-1] == ("sku-a", level - 1)
    assert (await outbox.memories())["s1/w1"].level == level - 1

    await outbox.remove([i.id for i in await outbox.peek(10_000)])
    assert (await outbox.status()).totals.delivered == level - 1
    await outbox.put_stock("s1", "w1", "sku-a", 0)  # the freed pages are reused
    assert levels(await outbox.peek(10)) == [("sku-a", 0)]


@pytest.mark.asyncio
async def test_a_second_gateway_on_the_same_outbox_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = await Outbox.open(path, "b1", max_events=10)
    try:
        await first.put_stock("s1", "w1", "sku-a", 1)
        with pytest.raises(
            OutboxError, match=rf"outbox .*outbox\.db is in use by another gateway \(pid {os.getpid()}\)"
        ):
            await Outbox.open(path, "b1", max_events=10)
        # `soko edge status` still reads it meanwhile, and the first gateway goes on.
        assert (await asyncio.to_thread(read_status, path)).depth == 1
        await first.put_stock("s1", "w1", "sku-a", 2)
    finally:
        await first.close()
    second = await Outbox.open(path, "b1", max_events=10)
    try:
        assert levels(await second.peek(10)) == [("sku-a", 1), ("sku-a", 2)]
    finally:
        await second.close()
    # A failed open (another boutique's file) does not keep the lock either.
    with pytest.raises(OutboxError, match="outbox of boutique"):
        await Outbox.open(path, "b2", max_events=10)
    await (await Outbox.open(path, "b1", max_events=10)).close()


@pytest.mark.asyncio
async def test_a_sensors_pending_change_is_remembered_until_a_put_settles_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, "b1", max_events=100)
    await box.put_stock("s1", "w1", "sku-a", 7)
    await box.remember_pending("s1", "w1", "sku-a", 5)
    await box.remember_pending("s2", "w2", "sku-b", 3)  # a sensor that never settled a level yet
    await box.close()

    box = await Outbox.open(path, "b1", max_events=100)
    try:
        assert await box.memories() == {
            "s1/w1": SensorMemory(level=7, health="ok", pending=5),
            "s2/w2": SensorMemory(level=None, health="ok", pending=3),
        }
        assert await box.depth() == 1  # remembering queues nothing
        await box.put_stock("s1", "w1", "sku-a", 5)
        await box.put_health("s2", "w2", "sku-b", "silent", "", 1)
        await box.remember_pending("s2", "w2", "sku-b", None)
        memories = await box.memories()
        assert memories["s1/w1"] == SensorMemory(level=5, health="ok", pending=None)
        assert memories["s2/w2"] == SensorMemory(level=None, health="silent", pending=None)
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_an_outbox_from_before_pending_opens_and_keeps_its_memories(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, "b1", max_events=100)
    await box.put_stock("s1", "w1", "sku-a", 4)
    await box.close()

    def make_it_old() -> None:
        conn = sqlite3.connect(path)
        conn.execute("ALTER TABLE sensors DROP COLUMN pending")
        conn.execute("DELETE FROM counters WHERE name IN ('duplicate', 'stale')")
        conn.commit()
        conn.close()

    await asyncio.to_thread(make_it_old)
    old = await asyncio.to_thread(read_status, path)
    assert (old.depth, old.totals.stale, old.totals.duplicate) == (1, 0, 0)

    box = await Outbox.open(path, "b1", max_events=100)
    try:
        assert await box.memories() == {"s1/w1": SensorMemory(level=4, health="ok", pending=None)}
        await box.remember_pending("s1", "w1", "sku-a", 2)
        assert (await box.memories())["s1/w1"].pending == 2
        await box.remove([i.id for i in await box.peek(10)], duplicate=1)
        assert (await box.status()).totals.duplicate == 1
    finally:
        await box.close()


@pytest.mark.asyncio
async def test_the_hubs_duplicate_and_stale_answers_are_counted_with_the_delivery(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, "b1", max_events=100)
    try:
        for level in range(5):
            await box.put_stock("s1", "w1", "sku-a", level)
        items = await box.peek(10)
        await box.remove([i.id for i in items[:3]], duplicate=1, stale=2)
        await box.remove([i.id for i in items[3:]], stale=1)
        totals = (await box.status()).totals
        assert (totals.delivered, totals.duplicate, totals.stale) == (5, 1, 3)
    finally:
        await box.close()
    assert (await asyncio.to_thread(read_status, path)).totals == totals


@pytest.mark.asyncio
async def test_status_reports_depth_totals_uplink_and_sensors(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, "b1", max_events=1000)
    try:
        empty = await box.status()
        assert (empty.depth, empty.oldest_age_s, empty.last_ok_ts, empty.last_error) == (0, None, None, None)

        await box.put_stock("s1", "w1", "sku-a", 3)
        await box.put_stock("s2", "w2", "sku-b", 9)
        await box.put_health("s2", "w2", "sku-b", "silent", "no reading for 60 s", 1)
        await box.put_stock("s3", "w3", "sku-c", 1)
        items = await box.peek(10)
        await box.remove([items[0].id])
        await box.record_uplink(True)
        await box.reject([items[1].id], "forbidden (2003): stock of boutique b1")
        await box.record_uplink(False, "forbidden (2003): stock of boutique b1")

        status = await box.status()
        assert (status.boutique, status.depth, status.stock_depth, status.health_depth) == ("b1", 2, 1, 1)
        assert status.oldest_age_s is not None and status.oldest_age_s >= 0
        assert status.last_ok_ts is not None and status.last_attempt_ts is not None
        assert status.last_attempt_ts >= status.last_ok_ts
        assert status.last_error == "forbidden (2003): stock of boutique b1"
        assert (status.totals.created, status.totals.delivered, status.totals.rejected) == (4, 1, 1)
        assert status.dead_letters == 1
        assert [(s.key, s.sku, s.level, s.health, s.detail) for s in status.sensors] == [
            ("s1/w1", "sku-a", 3, "ok", ""),
            ("s2/w2", "sku-b", 9, "silent", "no reading for 60 s"),
            ("s3/w3", "sku-c", 1, "ok", ""),
        ]
        # The CLI's reader sees the same thing without an event loop, while the gateway has the file open.
        offline = await asyncio.to_thread(read_status, path)
        assert offline.sensors == status.sensors
        assert (offline.depth, offline.totals, offline.dead_letters) == (2, status.totals, 1)
    finally:
        await box.close()
    assert (await asyncio.to_thread(read_status, path)).depth == 2


def test_read_status_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "outbox.db"
    with pytest.raises(OutboxError, match=r"no edge outbox at .*nowhere/outbox\.db"):
        read_status(missing)
    assert not missing.parent.exists()


def test_read_status_refuses_a_file_that_is_not_an_outbox(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(OutboxError, match="is not an edge outbox"):
        read_status(other)


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edge.outbox import Outbox

    async def main():
        box = await Outbox.open(Path(sys.argv[1]), "b1", max_events=100000)
        level = 0
        while True:
            level += 1
            event_id = await box.put_stock("s1", "w1", "sku-a", level)
            print(level, event_id, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_everything_a_put_returned_for_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 200:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the writer exited early"
            level, event_id = line.decode().split()
            assert int(level) == len(acknowledged) + 1
            acknowledged.append(event_id)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    box = await Outbox.open(path, "b1", max_events=100000)
    try:
        stored = [i.event_id for i in await box.peek(100000)]
        # Every acknowledged put is there, in order; at most the puts in flight at the kill follow.
        assert stored[: len(acknowledged)] == acknowledged
        memory = (await box.memories())["s1/w1"]
        assert memory.level == len(stored) >= len(acknowledged)
        assert (await box.status()).totals.created == len(stored)
    finally:
        await box.close()
