"""The uplink against a real hub: drains in order, survives the hub going away, a lost ack,
a refused token and a token of another boutique without losing an event, counts stale
answers, and delivers device health. A scripted Socket.IO hub covers the refusals the real
one cannot be made to give on demand."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import socketio
from aiohttp import web

from edge.outbox import Outbox
from edge.uplink import Uplink
from protocol import PROTOCOL_VERSION, events
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.messages import (
    DeviceHealthAccepted,
    DeviceHealthReport,
    StockOutcome,
    StockSet,
    StockUpdateReply,
    StockUpdateRequest,
    Welcome,
)
from tests.support.hub import RunningHub
from tests.support.stockclient import StockClient

B = "b1"


@pytest_asyncio.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "edge" / "outbox.db", B, max_events=10_000)
    yield box
    await box.close()


@contextlib.asynccontextmanager
async def running(
    outbox: Outbox, url: str, token: Callable[[], str], batch: int = 100
) -> AsyncIterator[tuple[Uplink, list[str]]]:
    """An uplink task for the block; it must still be running (not crashed) at the end."""
    states: list[str] = []
    uplink = Uplink(outbox, url, token, batch, states.append, call_timeout=20.0)
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink, states
    finally:
        assert not task.done(), task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def drained(outbox: Outbox) -> None:
    async def empty() -> bool:
        return await outbox.depth() == 0

    await until(empty, "the outbox drained")


@contextlib.asynccontextmanager
async def staff(hub: RunningHub) -> AsyncIterator[StockClient]:
    client = StockClient(hub.url, hub.token("staff", "st1", B))
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def stream(client: StockClient, name: str) -> list[dict[str, Any]]:
    """Every entry of a durable stream, from the start."""
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.ok("catchup", {"stream": name, "after": after, "limit": 500})
        entries += page["entries"]
        after = page["next_after"]
        if not page["has_more"]:
            return entries


async def hub_levels(client: StockClient) -> dict[str, int]:
    client.view.clear()
    await client.watch(B)
    return {sku: level for sku, (level, _version) in client.view.items()}


async def put_levels(outbox: Outbox, changes: Sequence[tuple[str, int]]) -> list[str]:
    return [await outbox.put_stock("s1", sku, sku, level) for sku, level in changes]


def random_changes(n: int, skus: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(f"sku-{rng.randrange(skus)}", rng.randrange(0, 40)) for _ in range(n)]


def latest(changes: Sequence[tuple[str, int]]) -> dict[str, int]:
    return dict(changes)


@pytest.mark.asyncio
async def test_a_backlog_drains_in_order_and_the_hub_ends_at_the_latest_levels(
    hub_factory: Any, outbox: Outbox
) -> None:
    hub = await hub_factory()
    changes = random_changes(250, skus=6, seed=1)
    ids = await put_levels(outbox, changes)
    token = hub.token("device", "gw1", B)
    async with running(outbox, hub.url, lambda: token) as (uplink, states):
        await drained(outbox)

        async def idle() -> bool:
            return states[-1:] == ["idle"]

        await until(idle, "the uplink reported idle")
    assert states[:2] == ["connecting", "draining 250"]
    assert uplink.outcomes == {"applied": 250}
    async with staff(hub) as client:
        assert await hub_levels(client) == latest(changes)
        assert [e["event_id"] for e in await stream(client, f"inv:{B}")] == ids
    status = await outbox.status()
    assert (status.totals.delivered, status.dead_letters, status.last_error) == (250, 0, None)
    assert status.last_ok_ts is not None


@pytest.mark.asyncio
async def test_events_put_while_the_hub_is_down_arrive_once_when_it_is_back(
    hub_factory: Any, outbox: Outbox
) -> None:
    hub = await hub_factory()
    token = hub.token("device", "gw1", B)
    async with staff(hub) as client:
        before = await put_levels(outbox, [("sku-a", 3)])
        async with running(outbox, hub.url, lambda: token) as (_uplink, states):
            await drained(outbox)
            await client.disconnect()
            await hub.stop()

            async def offline() -> bool:
                return "offline" in states

            await until(offline, "the uplink noticed the hub is gone")
            changes = random_changes(60, skus=4, seed=2)
            during = await put_levels(outbox, changes)

            async def refused() -> bool:
                return "cannot reach the hub" in ((await outbox.status()).last_error or "")

            await until(refused, "a connect attempt failed")
            assert await outbox.depth() == 60
            hub = await hub_factory(port=hub.port)
            await drained(outbox)
    async with staff(hub) as client:
        assert [e["event_id"] for e in await stream(client, f"inv:{B}")] == before + during
        assert await hub_levels(client) == {"sku-a": 3, **latest(changes)}


class AckLostOutbox(Outbox):
    """An outbox whose gateway "dies" at its first remove(): the hub has applied the
    batch and acked it, but the outbox never records the delivery."""

    died: asyncio.Event

    async def remove(self, ids: Sequence[int], *, duplicate: int = 0, stale: int = 0) -> None:
        if not self.died.is_set():
            self.died.set()
            await asyncio.Future()  # until the test cancels the uplink
        await super().remove(ids, duplicate=duplicate, stale=stale)


@pytest.mark.asyncio
async def test_a_lost_ack_redelivers_and_the_hub_applies_nothing_twice(
    hub_factory: Any, tmp_path: Path
) -> None:
    hub = await hub_factory()
    token = hub.token("device", "gw1", B)
    path = tmp_path / "outbox.db"
    box = await AckLostOutbox.open(path, B, max_events=1000)
    box.died = asyncio.Event()
    changes = random_changes(40, skus=3, seed=3)
    try:
        ids = await put_levels(box, changes)
        async with running(box, hub.url, lambda: token) as (first, _states):
            await asyncio.wait_for(box.died.wait(), 60)
        assert first.outcomes == {"applied": 40}
    finally:
        await box.close()

    outbox = await Outbox.open(path, B, max_events=1000)
    try:
        assert [i.event_id for i in await outbox.peek(100)] == ids
        async with staff(hub) as client:
            assert [e["event_id"] for e in await stream(client, f"inv:{B}")] == ids
            async with running(outbox, hub.url, lambda: token) as (second, _states):
                await drained(outbox)
            assert second.outcomes == {"duplicate": 40}
            assert [e["event_id"] for e in await stream(client, f"inv:{B}")] == ids
            assert await hub_levels(client) == latest(changes)
        totals = (await outbox.status()).totals
        assert (totals.delivered, totals.duplicate, totals.stale) == (40, 40, 0)
    finally:
        await outbox.close()


@pytest.mark.asyncio
async def test_a_token_of_another_boutique_or_role_sends_nothing_and_loses_nothing(
    hub_factory: Any, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory()
    tokens = [hub.token("device", "gw1", "b2")]
    await put_levels(outbox, [("sku-a", 1), ("sku-b", 2)])
    await outbox.put_health("s1", "sku-a", "sku-a", "silent", "no reading for 60 s", 1)

    def logged(text: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(r.levelno == logging.ERROR and text in r.getMessage() for r in caplog.records)

        return check

    async with running(outbox, hub.url, lambda: tokens[-1]) as (uplink, states):
        await until(logged("as device 'gw1' of boutique b2, but this gateway is boutique b1"), "b2 refused")
        tokens.append(hub.token("staff", "st9", B))  # the operator gets it wrong again
        await until(logged("as staff 'st9' of boutique b1"), "a staff token refused")
        async with staff(hub) as client:
            assert await hub_levels(client) == {}
        status = await outbox.status()
        assert (status.depth, status.dead_letters, status.totals.rejected) == (3, 0, 0)
        assert "this gateway is boutique b1" in (status.last_error or "")
        assert "draining 3" not in states

        tokens.append(hub.token("device", "gw1", B))  # the token file is fixed
        await drained(outbox)
    status = await outbox.status()
    assert (status.dead_letters, status.totals.rejected, status.totals.delivered) == (0, 0, 3)
    assert uplink.outcomes == {"applied": 2}
    async with staff(hub) as client:
        assert await hub_levels(client) == {"sku-a": 1, "sku-b": 2}
        inbox = [e for e in await stream(client, f"inbox:b:{B}") if e["category"] == "device"]
        assert len(inbox) == 1


@pytest.mark.asyncio
async def test_a_stale_answer_is_logged_and_counted(
    hub_factory: Any, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory()
    token = hub.token("device", "gw1", B)
    ahead = 2**52

    def set_version_counter(value: int) -> None:
        conn = sqlite3.connect(outbox.path)
        conn.execute("UPDATE counters SET value = ? WHERE name = 'version'", (value,))
        conn.commit()
        conn.close()

    # A gateway whose version counter once ran far ahead, then was set back.
    await asyncio.to_thread(set_version_counter, ahead)
    await put_levels(outbox, [("sku-a", 5)])
    async with running(outbox, hub.url, lambda: token):
        await drained(outbox)
    await asyncio.to_thread(set_version_counter, 0)
    await put_levels(outbox, [("sku-a", 3), ("sku-b", 1)])
    sent = [msgspec.json.decode(i.payload, type=StockSet).version for i in await outbox.peek(2)]
    async with running(outbox, hub.url, lambda: token) as (uplink, _states):
        await drained(outbox)
    assert uplink.outcomes == {"stale": 1, "applied": 1}
    totals = (await outbox.status()).totals
    assert (totals.delivered, totals.stale, totals.duplicate) == (3, 1, 0)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "stale" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "for sku-a: version" in warnings[0] and f"version {sent[0]} " in warnings[0]
    async with staff(hub) as client:
        assert await hub_levels(client) == {"sku-a": 5, "sku-b": 1}


class ScriptedHub:
    """A Socket.IO server speaking the hub's side of the uplink: a ``welcome`` for a device
    of ``B``, then ``refusal`` as the answer to the first request and ``ok`` to every later
    one. The real hub cannot be made to refuse a valid device token's events on demand."""

    def __init__(self, refusal: ErrorCode) -> None:
        self.refusal = refusal
        self.tokens: list[str] = []
        """The token of each connection, in order."""
        self.requests: list[tuple[int, list[str]]] = []
        """(connection number, event ids) of each request."""
        self._connection: dict[str, int] = {}
        self.sio = socketio.AsyncServer(async_mode="aiohttp", always_connect=True)
        self.sio.on("connect", self._connect)
        self.sio.on(events.STOCK_UPDATE, self._stock_update)
        self.sio.on(events.DEVICE_HEALTH, self._device_health)
        self.url = ""

    async def _connect(self, sid: str, _environ: Any, auth: Any) -> None:
        self.tokens.append(auth["token"])
        self._connection[sid] = len(self.tokens)
        welcome = Welcome(
            protocol=PROTOCOL_VERSION, user="gw1", role="device", boutique=B, node="n1", token_expires_at=0
        )
        await self.sio.emit(events.WELCOME, to_wire(welcome), to=sid)

    def _answer(self, sid: str, ids: list[str], data: msgspec.Struct) -> dict[str, Any]:
        self.requests.append((self._connection[sid], ids))
        if len(self.requests) == 1:
            return {"ok": False, "error": to_wire(SokoError(self.refusal, "scripted refusal").body())}
        return {"ok": True, "data": to_wire(data)}

    async def _stock_update(self, sid: str, data: Any) -> dict[str, Any]:
        updates = [u for u in msgspec.convert(data, StockUpdateRequest).updates if isinstance(u, StockSet)]
        outcomes = [
            StockOutcome(
                event_id=u.event_id,
                boutique_id=u.boutique_id,
                sku=u.sku,
                applied=True,
                duplicate=False,
                stale=False,
                level=u.level,
                version=1,
            )
            for u in updates
        ]
        return self._answer(sid, [u.event_id for u in updates], StockUpdateReply(results=outcomes))

    async def _device_health(self, sid: str, data: Any) -> dict[str, Any]:
        report = msgspec.convert(data, DeviceHealthReport)
        return self._answer(
            sid, [report.event_id], DeviceHealthAccepted(notification_id="n", duplicate=False)
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ScriptedHub]:
        app = web.Application()
        self.sio.attach(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("refusal", "level"),
    [
        (ErrorCode.UNAUTHENTICATED, logging.ERROR),
        (ErrorCode.FORBIDDEN, logging.ERROR),
        (ErrorCode.TOKEN_EXPIRED, logging.WARNING),
    ],
)
async def test_a_refused_token_keeps_the_events_and_reconnects_with_the_token_read_again(
    outbox: Outbox, caplog: pytest.LogCaptureFixture, refusal: ErrorCode, level: int
) -> None:
    ids = await put_levels(outbox, [("sku-a", 1), ("sku-b", 2)])
    reads = itertools.count(1)
    async with (
        ScriptedHub(refusal).serving() as hub,
        running(outbox, hub.url, lambda: f"token-{next(reads)}"),
    ):
        await drained(outbox)
    assert hub.tokens == ["token-1", "token-2"]
    assert hub.requests == [(1, ids), (2, ids)]
    status = await outbox.status()
    assert (status.dead_letters, status.totals.rejected, status.totals.delivered) == (0, 0, 2)
    name = refusal.slug
    logs = [r for r in caplog.records if f"{name} ({int(refusal)}): scripted refusal" in r.getMessage()]
    assert [r.levelno for r in logs] == [level]
    assert "keeping the 2 event(s)" in logs[0].getMessage()


@pytest.mark.asyncio
@pytest.mark.parametrize("refusal", [ErrorCode.BAD_REQUEST, ErrorCode.INVALID_ID, ErrorCode.CONFLICT])
async def test_a_refused_request_goes_to_the_dead_letters_and_the_queue_moves_on(
    outbox: Outbox, caplog: pytest.LogCaptureFixture, refusal: ErrorCode
) -> None:
    ids = await put_levels(outbox, [("sku-a", 1), ("sku-b", 2)])
    ids.append(await outbox.put_health("s1", "sku-a", "sku-a", "silent", "no reading for 60 s", 1))
    async with ScriptedHub(refusal).serving() as hub, running(outbox, hub.url, lambda: "token"):
        await drained(outbox)
    assert hub.requests == [(1, ids[:2]), (1, ids[2:])]
    status = await outbox.status()
    assert (status.dead_letters, status.totals.rejected, status.totals.delivered) == (2, 2, 1)
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "dead letters" in r.getMessage()]
    assert len(refusals) == 1 and f"{refusal.slug} ({int(refusal)})" in refusals[0].getMessage()


@pytest.mark.asyncio
async def test_a_missing_or_refused_token_is_logged_and_retried_until_the_token_is_fixed(
    hub_factory: Any, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory()
    tokens: list[str] = []

    def token() -> str:
        if not tokens:
            raise FileNotFoundError("no such file: device.token")
        return tokens[-1]

    def logged(text: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(text in r.getMessage() for r in caplog.records)

        return check

    await put_levels(outbox, [("sku-a", 4)])
    async with running(outbox, hub.url, token) as (_uplink, states):
        await until(logged("cannot read the device token: no such file"), "a missing token reported")
        tokens.append(hub.token("device", "gw1", B, ttl=-10))
        await until(logged("hub rejected the device token: token_expired"), "a refused token logged")

        async def recorded() -> bool:
            return "hub rejected the device token" in ((await outbox.status()).last_error or "")

        await until(recorded, "a refused token recorded for `soko edge status`")
        status = await outbox.status()
        assert status.depth == 1 and status.last_ok_ts is None
        tokens.append(hub.token("device", "gw1", B))
        await drained(outbox)
    assert "offline" in states
    async with staff(hub) as client:
        assert await hub_levels(client) == {"sku-a": 4}


@pytest.mark.asyncio
async def test_device_health_reaches_the_staff_inbox_once_even_when_redelivered(
    hub_factory: Any, tmp_path: Path
) -> None:
    hub = await hub_factory()
    token = hub.token("device", "gw1", B)
    path = tmp_path / "outbox.db"
    box = await AckLostOutbox.open(path, B, max_events=1000)
    box.died = asyncio.Event()
    try:
        await box.put_health("s1", "w1", "sku-a", "silent", "no reading for 60 s", 1_700_000_000_000)
        await box.put_stock("s1", "w2", "sku-b", 3)
        await box.put_health("s1", "w3", "sku-c", "invalid", "negative weight", 1_700_000_000_500)
        await box.put_health("s1", "w1", "sku-a", "ok", "", 1_700_000_001_000)
        async with running(box, hub.url, lambda: token):
            await asyncio.wait_for(box.died.wait(), 60)
    finally:
        await box.close()

    outbox = await Outbox.open(path, B, max_events=1000)
    try:
        async with running(outbox, hub.url, lambda: token) as (uplink, _states):
            await drained(outbox)
        assert uplink.outcomes == {"applied": 1}
    finally:
        await outbox.close()
    async with staff(hub) as client:
        inbox = [e for e in await stream(client, f"inbox:b:{B}") if e["category"] == "device"]
        assert [(e["data"]["sensor"], e["data"]["state"], e["data"]["device"]) for e in inbox] == [
            ("w1", "silent", "gw1"),
            ("w3", "invalid", "gw1"),
            ("w1", "ok", "gw1"),
        ]
        assert await hub_levels(client) == {"sku-b": 3}
