"""Durable chat: zero loss across a hub restart, idempotent retries, and catch-up semantics.

Every test runs real hubs over SQLite (``hub_factory``) and real Socket.IO clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from ulid import ULID

from tests.support.hub import RunningHub
from tests.support.rawclient import RawClient
from tests.support.streamclient import StreamClient

HubFactory = Callable[..., Awaitable[RunningHub]]

STREAM = "chat:b:b1:alice"
UNLIMITED = {"rate_per_second": 100_000.0, "rate_burst": 100_000}
"""The per-connection rate limit is not under test here; 200 sends in a burst would hit it."""


async def try_send(client: StreamClient, client_id: str, text: str, timeout: float) -> dict[str, Any] | None:
    """One attempt of an outbox send: the ack data, or None when no successful ack arrived."""
    try:
        reply = await client.call(
            "chat.send", {"stream": STREAM, "client_id": client_id, "text": text}, timeout=timeout
        )
    except (
        socketio.exceptions.TimeoutError,
        socketio.exceptions.BadNamespaceError,
        socketio.exceptions.DisconnectedError,
    ):
        return None
    return reply["data"] if reply.get("ok") else None


def seqs(client: StreamClient, stream: str = STREAM) -> list[int]:
    return [e["seq"] for e in client.entries[stream]]


# ---------------------------------------------------------------------------------------- zero loss


@pytest.mark.asyncio
async def test_zero_loss_across_a_hub_restart(hub_factory: HubFactory) -> None:
    """Staff is offline; a shopper sends 200 messages while the hub restarts in the middle.

    The shopper's outbox keeps each message's client_id and re-sends whatever was not
    acked. The staff member comes back with its old cursors and must hold all 200,
    exactly once, in the order sent, with seqs 1..200.
    """
    hub1 = await hub_factory(**UNLIMITED)
    texts = [f"message {i:03d}" for i in range(200)]
    outbox = [(str(ULID()), t) for t in texts]
    acks: dict[str, dict[str, Any]] = {}

    shopper = StreamClient(hub1.url, hub1.token("shopper", "alice"))
    staff = StreamClient(hub1.url, hub1.token("staff", "bob", boutique="b1"))
    await shopper.connect()
    await staff.connect()

    # 10 messages while the staff member is online: it holds cursors for the stream
    for cid, text in outbox[:10]:
        acks[cid] = await shopper.send(STREAM, text, client_id=cid)
    await staff.wait_for(lambda: len(staff.entries[STREAM]) == 10, timeout=20)
    await staff.disconnect()
    assert staff.cursors[STREAM] == 10

    for cid, text in outbox[10:100]:
        acks[cid] = await shopper.send(STREAM, text, client_id=cid)

    # the shopper keeps sending, pipelined 10 at a time, and the hub stops under it:
    # some messages are stored and acked, some may be stored with the ack lost, some not stored
    halfway = asyncio.Event()

    async def keep_sending() -> None:
        for start in range(100, 200, 10):
            batch = outbox[start : start + 10]
            results = await asyncio.gather(*(try_send(shopper, cid, text, 5.0) for cid, text in batch))
            for (cid, _), result in zip(batch, results, strict=True):
                if result is not None:
                    acks[cid] = result
            if None in results:
                return
            if len(acks) >= 110:
                halfway.set()

    sender = asyncio.create_task(keep_sending())
    halfway_reached = asyncio.create_task(halfway.wait())
    await asyncio.wait([sender, halfway_reached], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    halfway_reached.cancel()
    await hub1.stop()
    await sender
    assert not shopper.sio.connected
    assert len(acks) < 200

    hub2 = await hub_factory(**UNLIMITED)  # same data directory, new port
    shopper.url = hub2.url
    await shopper.connect()
    duplicates = 0
    for cid, text in outbox:
        if cid in acks:
            continue
        result = await try_send(shopper, cid, text, timeout=10.0)
        assert result is not None, f"retry of {text!r} was not acked"
        duplicates += result["duplicate"]
        acks[cid] = result

    # every message acked once, with seqs 1..200 in the order they were written
    assert [acks[cid]["seq"] for cid, _ in outbox] == list(range(1, 201))
    assert len({acks[cid]["epoch"] for cid, _ in outbox}) == 1
    assert duplicates <= 10

    staff.url = hub2.url
    await staff.connect()  # python-socketio's AsyncClient reconnects; the cursors are kept
    assert staff.resets == []  # the restart kept the epoch: recovered from the old cursor
    assert staff.texts(STREAM) == texts
    assert seqs(staff) == list(range(1, 201))
    assert [e["client_id"] for e in staff.entries[STREAM]] == [cid for cid, _ in outbox]

    # a brand-new device of the staff member gets the same 200 from scratch
    fresh = StreamClient(hub2.url, hub2.token("staff", "carol", boutique="b1"))
    await fresh.connect()
    assert fresh.texts(STREAM) == texts
    assert seqs(fresh) == list(range(1, 201))
    for c in (shopper, staff, fresh):
        await c.disconnect()


# ---------------------------------------------------------------------------------------- idempotency


@pytest.mark.asyncio
async def test_retry_after_a_lost_ack_returns_the_original(hub: RunningHub) -> None:
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect()
    cid = str(ULID())
    async with aiohttp.ClientSession() as http:
        raw = await RawClient.connect(http, hub.url, auth={"token": hub.token("shopper", "alice")})
        assert (await raw.next_event())[0] == "welcome"
        # a chat.send that asks for an ack (id 7), and the socket goes away right after
        payload = {"stream": STREAM, "client_id": cid, "text": "first try"}
        await raw.ws.send_str("427" + json.dumps(["chat.send", payload]))
        await raw.close()
    await staff.wait_for(lambda: len(staff.entries[STREAM]) == 1, timeout=20)
    [original] = staff.entries[STREAM]

    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    await shopper.connect()
    retry = await shopper.send(STREAM, "first try", client_id=cid)
    assert retry == {
        "stream": STREAM,
        "seq": 1,
        "epoch": original["epoch"],
        "ts": original["ts"],
        "client_id": cid,
        "duplicate": True,
    }
    # a retry with other text is still the same write: nothing new is stored
    retry2 = await shopper.send(STREAM, "edited text", client_id=cid)
    assert retry2 == retry

    # barrier: a later message reaches staff after any frame a duplicate could have caused
    after = await shopper.send(STREAM, "second message")
    assert (after["seq"], after["duplicate"]) == (2, False)
    await staff.wait_for(lambda: len(staff.entries[STREAM]) == 2, timeout=20)
    live_chat = [d for ev, d in staff.live if ev == "chat.message"]
    assert [(d["seq"], d["text"]) for d in live_chat] == [(1, "first try"), (2, "second message")]

    page = await shopper.ok("catchup", {"stream": STREAM, "after": 0, "limit": 100})
    assert [(e["seq"], e["client_id"], e["text"]) for e in page["entries"]] == [
        (1, cid, "first try"),
        (2, after["client_id"], "second message"),
    ]
    history = await shopper.ok("chat.history", {"stream": STREAM})
    assert [e["seq"] for e in history["entries"]] == [1, 2]
    await shopper.disconnect()
    await staff.disconnect()


@pytest.mark.asyncio
async def test_client_id_reused_on_another_stream_is_a_conflict(hub: RunningHub) -> None:
    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    await shopper.connect()
    cid = str(ULID())
    await shopper.send(STREAM, "to b1", client_id=cid)
    reply = await shopper.call("chat.send", {"stream": "chat:b:b2:alice", "client_id": cid, "text": "to b2"})
    assert reply["ok"] is False
    assert reply["error"]["code"] == 4002
    assert reply["error"]["name"] == "conflict"
    history = await shopper.ok("chat.history", {"stream": "chat:b:b2:alice"})
    assert history["entries"] == []
    await shopper.disconnect()


# ---------------------------------------------------------------------------------------- catch-up


async def seven_messages(hub: RunningHub) -> tuple[StreamClient, list[str]]:
    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    await shopper.connect()
    texts = [f"m{i}" for i in range(1, 8)]
    for t in texts:
        await shopper.send(STREAM, t)
    return shopper, texts


async def status_of(client: StreamClient, cursor: dict[str, Any]) -> dict[str, Any]:
    """The ``sync`` status of STREAM for one cursor."""
    reply = await client.ok("sync", {"cursors": [cursor]})
    [status] = [s for s in reply["streams"] if s["stream"] == STREAM]
    result: dict[str, Any] = status
    return result


def page_summary(page: dict[str, Any]) -> tuple[list[int], int, bool, bool, int]:
    return (
        [e["seq"] for e in page["entries"]],
        page["next_after"],
        page["has_more"],
        page["recovered"],
        page["head"],
    )


@pytest.mark.asyncio
async def test_catchup_pages_exactly_the_missed_entries(hub: RunningHub) -> None:
    shopper, texts = await seven_messages(hub)
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect(sync=False)
    reply = await staff.ok("sync", {"cursors": []})
    epoch = shopper.epochs[STREAM]
    assert reply == {
        "streams": [
            {
                "stream": "inbox:u:bob",
                "epoch": "",
                "head": 0,
                "behind": False,
                "recovered": True,
                "unread": 0,
            },
            {"stream": "inbox:b:b1", "epoch": "", "head": 0, "behind": False, "recovered": True, "unread": 0},
            {"stream": STREAM, "epoch": epoch, "head": 7, "behind": True, "recovered": True, "unread": 0},
        ]
    }

    pages = []
    after = 0
    while True:
        page = await staff.ok("catchup", {"stream": STREAM, "epoch": epoch, "after": after, "limit": 3})
        assert (page["stream"], page["epoch"]) == (STREAM, epoch)
        pages.append(page_summary(page))
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert pages == [([1, 2, 3], 3, True, True, 7), ([4, 5, 6], 6, True, True, 7), ([7], 7, False, True, 7)]

    page = await staff.ok("catchup", {"stream": STREAM, "epoch": epoch, "after": 7, "limit": 3})
    assert page_summary(page) == ([], 7, False, True, 7)

    # a cursor in the middle: sync says behind, and the page holds exactly what was missed
    status = await status_of(staff, {"stream": STREAM, "epoch": epoch, "seq": 4})
    assert (status["behind"], status["recovered"], status["head"]) == (True, True, 7)
    page = await staff.ok("catchup", {"stream": STREAM, "epoch": epoch, "after": 4, "limit": 100})
    assert page_summary(page) == ([5, 6, 7], 7, False, True, 7)
    assert [e["text"] for e in page["entries"]] == texts[4:]
    e = page["entries"][0]
    assert {k: e[k] for k in ("kind", "stream", "seq", "epoch", "author", "author_role", "text")} == {
        "kind": "chat",
        "stream": STREAM,
        "seq": 5,
        "epoch": epoch,
        "author": "alice",
        "author_role": "shopper",
        "text": "m5",
    }

    # a cursor at the head is current
    status = await status_of(staff, {"stream": STREAM, "epoch": epoch, "seq": 7})
    assert (status["behind"], status["recovered"]) == (False, True)
    await staff.disconnect()
    await shopper.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("epoch", "seq"),
    [("wrong-epoch", 3), (None, 3), ("HEAD", 99)],
    ids=["wrong-epoch", "no-epoch-but-seq", "past-head"],
)
async def test_invalid_cursor_is_not_recovered_and_restarts_at_seq_1(
    hub: RunningHub, epoch: str | None, seq: int
) -> None:
    shopper, _texts = await seven_messages(hub)
    real = shopper.epochs[STREAM]
    epoch = real if epoch == "HEAD" else epoch
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect(sync=False)
    reply = await staff.ok("sync", {"cursors": [{"stream": STREAM, "epoch": epoch, "seq": seq}]})
    [status] = [s for s in reply["streams"] if s["stream"] == STREAM]
    assert status == {
        "stream": STREAM,
        "epoch": real,
        "head": 7,
        "behind": True,
        "recovered": False,
        "unread": 0,
    }
    page = await staff.ok("catchup", {"stream": STREAM, "epoch": epoch, "after": seq, "limit": 2})
    assert page["epoch"] == real
    assert page_summary(page) == ([1, 2], 2, True, False, 7)
    # continuing from the reset cursor in the current epoch is valid again
    page = await staff.ok("catchup", {"stream": STREAM, "epoch": real, "after": 2, "limit": 100})
    assert page_summary(page) == ([3, 4, 5, 6, 7], 7, False, True, 7)
    await staff.disconnect()
    await shopper.disconnect()


@pytest.mark.asyncio
async def test_stream_client_resets_on_a_bad_cursor(hub: RunningHub) -> None:
    shopper, texts = await seven_messages(hub)
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    staff.epochs[STREAM] = "an-epoch-the-server-never-had"
    staff.cursors[STREAM] = 3
    staff.entries[STREAM] = [{"seq": i, "text": "stale"} for i in (1, 2, 3)]
    await staff.connect()
    assert staff.resets == [STREAM]
    assert staff.texts(STREAM) == texts
    assert seqs(staff) == list(range(1, 8))
    assert staff.epochs[STREAM] == shopper.epochs[STREAM]
    await staff.disconnect()
    await shopper.disconnect()


@pytest.mark.asyncio
async def test_fresh_client_gets_everything(hub: RunningHub) -> None:
    shopper, texts = await seven_messages(hub)
    for who in ("bob", "carol"):
        staff = StreamClient(hub.url, hub.token("staff", who, boutique="b1"))
        statuses = {s["stream"]: s for s in await _connect(staff)}
        assert statuses[STREAM]["recovered"] is True and statuses[STREAM]["behind"] is True
        assert staff.texts(STREAM) == texts
        assert seqs(staff) == list(range(1, 8))
        assert staff.resets == []
        await staff.disconnect()
    # another shopper's fresh client sees none of it
    other = StreamClient(hub.url, hub.token("shopper", "mallory"))
    assert [s["stream"] for s in await _connect(other)] == ["inbox:u:mallory"]
    assert STREAM not in other.entries
    await other.disconnect()
    await shopper.disconnect()


async def _connect(client: StreamClient) -> list[dict[str, Any]]:
    await client.connect(sync=False)
    return await client.sync()


@pytest.mark.asyncio
async def test_catchup_of_a_stream_without_entries(hub: RunningHub) -> None:
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect(sync=False)
    page = await staff.ok("catchup", {"stream": STREAM, "after": 0, "limit": 10})
    assert page == {
        "stream": STREAM,
        "epoch": "",
        "recovered": True,
        "entries": [],
        "next_after": 0,
        "head": 0,
        "has_more": False,
    }
    refused = await staff.call("catchup", {"stream": "chat:b:b2:alice", "after": 0})
    assert refused["ok"] is False and refused["error"]["code"] == 2003
    await staff.disconnect()


@pytest.mark.asyncio
async def test_changed_epoch_means_full_resync(hub_factory: HubFactory, tmp_path: Path) -> None:
    """The log is rebuilt (a new store): old cursors are not valid in the new epoch."""
    hub1 = await hub_factory()
    shopper, _ = await seven_messages(hub1)
    staff = StreamClient(hub1.url, hub1.token("staff", "bob", boutique="b1"))
    await staff.connect()
    old_epoch = staff.epochs[STREAM]
    assert seqs(staff) == list(range(1, 8))
    await staff.disconnect()
    await shopper.disconnect()
    await hub1.stop()

    hub2 = await hub_factory(data=tmp_path / "rebuilt")
    shopper2 = StreamClient(hub2.url, hub2.token("shopper", "alice"))
    await shopper2.connect()
    await shopper2.send(STREAM, "after rebuild 1")
    await shopper2.send(STREAM, "after rebuild 2")
    staff.url = hub2.url
    await staff.connect()
    assert staff.resets == [STREAM]
    assert staff.epochs[STREAM] != old_epoch
    assert staff.texts(STREAM) == ["after rebuild 1", "after rebuild 2"]
    assert seqs(staff) == [1, 2]
    await staff.disconnect()
    await shopper2.disconnect()


class LossyClient(StreamClient):
    """Ignores chosen live frames, as if they were lost while connected; records catch-ups."""

    def __init__(self, *args: Any, drop: set[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop = set(drop)
        self.dropped: list[int] = []
        self.catchups: list[int] = []

    async def _on_durable(self, frame: dict[str, Any]) -> None:
        if frame["stream"] == STREAM and frame["seq"] in self.drop:
            self.drop.discard(frame["seq"])
            self.dropped.append(frame["seq"])
            return
        await super()._on_durable(frame)

    async def catch_up(self, stream: str, limit: int = 100) -> None:
        self.catchups.append(self.cursors[stream])
        await super().catch_up(stream, limit)


@pytest.mark.asyncio
async def test_a_gap_seen_live_triggers_catch_up(hub: RunningHub) -> None:
    shopper = StreamClient(hub.url, hub.token("shopper", "alice"))
    staff = LossyClient(hub.url, hub.token("staff", "bob", boutique="b1"), drop={2, 3})
    await shopper.connect()
    await staff.connect()
    assert staff.catchups == []

    await shopper.send(STREAM, "one")
    await staff.wait_for(lambda: seqs(staff) == [1], timeout=20)
    await shopper.send(STREAM, "two")
    await shopper.send(STREAM, "three")
    await staff.wait_for(lambda: staff.dropped == [2, 3], timeout=20)
    assert seqs(staff) == [1]  # the client knows nothing of 2 and 3 yet
    await shopper.send(STREAM, "four")  # seq 4 > cursor + 1: a gap, caught up from cursor 1
    await staff.wait_for(lambda: seqs(staff) == [1, 2, 3, 4], timeout=20)
    assert staff.catchups == [1]
    await shopper.send(STREAM, "five")
    await staff.wait_for(lambda: seqs(staff) == [1, 2, 3, 4, 5], timeout=20)
    assert staff.texts(STREAM) == ["one", "two", "three", "four", "five"]
    assert staff.catchups == [1]

    # the same repair by hand: cursor 1 and a live frame with seq 4 mean "catch up after 1"
    page = await staff.ok("catchup", {"stream": STREAM, "epoch": staff.epochs[STREAM], "after": 1})
    assert [e["text"] for e in page["entries"]] == ["two", "three", "four", "five"]
    await staff.disconnect()
    await shopper.disconnect()
