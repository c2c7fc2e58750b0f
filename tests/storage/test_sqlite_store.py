"""What only the SQLite store has to show: a database file from an earlier version opens."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storage import open_store
from storage.base import OrderRecord

TS0 = 1_700_000_000_000

_FIRST_ORDERS_SCHEMA = """
CREATE TABLE orders (
    order_id    TEXT PRIMARY KEY,
    shopper_id  TEXT NOT NULL,
    boutique_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    driver_id   TEXT,
    updated_ts  INTEGER NOT NULL
);
CREATE INDEX orders_shopper ON orders (shopper_id, updated_ts);
INSERT INTO orders VALUES ('o-old', 'alice', 'b1', 'created', NULL, 1700000000000);
"""
"""The ``orders`` table as the first release created it (no pickup or dropoff), with one order."""


def _write_first_version(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(_FIRST_ORDERS_SCHEMA)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_a_database_without_order_points_gains_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await asyncio.to_thread(_write_first_version, path)
    url = f"sqlite:///{path}"
    store = await open_store(url)
    try:
        old = await store.get_order("o-old")
        assert old == OrderRecord(
            order_id="o-old",
            shopper_id="alice",
            boutique_id="b1",
            status="created",
            driver_id=None,
            updated_ts=TS0,
            pickup=None,
            dropoff=None,
        )
        new = OrderRecord(
            order_id="o-new",
            shopper_id="alice",
            boutique_id="b1",
            status="created",
            driver_id="d1",
            updated_ts=TS0 + 1,
            pickup=(-1.2864, 36.8172),
            dropoff=(-1.3, 36.75),
        )
        await store.upsert_order(new)
        assert await store.get_order("o-new") == new
        assert [o.order_id for o in await store.orders_for(field="shopper_id", value="alice", limit=10)] == [
            "o-new",
            "o-old",
        ]
    finally:
        await store.close()
    store = await open_store(url)  # opening a migrated file again changes nothing
    try:
        assert await store.get_order("o-new") == new
        assert await store.get_order("o-old") == old
    finally:
        await store.close()
