"""Chaos: three ``soko hub`` processes on one redis-server and one MongoDB store, under chat load.

One test ``kill -9``s a node mid-load; the other kills and restarts Redis mid-load.
Writers retry every unacked message with the same ``client_id`` (the documented
outbox rule), on any live node. At the end every acked message is stored exactly
once, nothing unacked was stored twice, and every participant, including those
whose node died, shows each conversation exactly as stored: no loss, no duplicate.

The default run is CI-sized; ``-m soak`` runs the heavy version.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ulid import ULID

from tests.support.hub import HubProcess, mint
from tests.support.redis import RedisServer
from tests.support.streamclient import StreamClient

BOUTIQUE = "b1"
PACE = 0.1
"""Seconds between two sends of one writer, so the load spans the outage and the recovery."""


@dataclass
class Participant:
    """A user with one socket, which moves to a live node whenever its node is gone."""

    role: str
    sub: str
    nodes: list[HubProcess]
    home: int
    client: StreamClient = field(init=False)
    moved: int = 0
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)
    """client_id -> (stream, text) of every message acked to this writer."""
    retries: int = 0
    duplicates: int = 0
    """Acks that said the message was already stored (a retry of a write that had landed)."""
    _moving: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def connect(self) -> None:
        boutique = BOUTIQUE if self.role == "staff" else None
        self.client = StreamClient(self.nodes[self.home].url, mint(self.role, self.sub, boutique))
        await self.client.connect()

    async def ensure_connected(self) -> None:
        """Reconnect to the next live node (keeping cursors) if the socket is down."""
        async with self._moving:
            await self._move_if_down()

    async def _move_if_down(self) -> None:
        while not self.client.sio.connected:
            live = [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.poll() is None]
            self.home = live[(live.index(self.home) + 1) % len(live)] if self.home in live else live[0]
            with contextlib.suppress(Exception):
                await self.client.reconnect(self.nodes[self.home].url)
                self.moved += 1
            if not self.client.sio.connected:
                await asyncio.sleep(0.1)

    async def send_until_acked(self, stream: str, text: str) -> None:
        """The outbox rule: one client_id per message, retried on any node until acked."""
        client_id = str(ULID())
        while True:
            await self.ensure_connected()
            try:
                reply = await self.client.call(
                    "chat.send", {"stream": stream, "client_id": client_id, "text": text}, timeout=3
                )
            except Exception:  # disconnected or timed out mid-call: retry, maybe elsewhere
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            if reply["ok"]:
                self.sent[client_id] = (stream, text)
                self.duplicates += reply["data"]["duplicate"]
                return
            assert reply["error"]["temporary"], reply  # only retryable errors are acceptable here
            await asyncio.sleep(0.1)


async def run_chat_load(
    tmp_path: Path, redis: RedisServer, store: str, *, shoppers: int, messages: int, chaos: str
) -> None:
    nodes = []
    for i in range(3):
        data = tmp_path / f"node{i}"
        data.mkdir()
        nodes.append(
            HubProcess(
                data, extra_env={"SOKO_BROKER": redis.url, "SOKO_STORE": store, "SOKO_RATE_BURST": "1000"}
            )
        )
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        staff = [Participant("staff", f"staff{i}", nodes, i) for i in range(3)]
        buyers = [Participant("shopper", f"s{i}", nodes, i % 3) for i in range(shoppers)]
        everyone = staff + buyers
        for p in everyone:
            await p.connect()

        async def shopper_load(p: Participant) -> None:
            for n in range(messages):
                await p.send_until_acked(f"chat:b:{BOUTIQUE}:{p.sub}", f"{p.sub} #{n}")
                await asyncio.sleep(PACE)

        async def staff_load(p: Participant) -> None:
            for n in range(messages // 2):
                buyer = buyers[(n + staff.index(p)) % len(buyers)]
                await p.send_until_acked(f"chat:b:{BOUTIQUE}:{buyer.sub}", f"{p.sub} to {buyer.sub} #{n}")
                await asyncio.sleep(2 * PACE)

        async def keep_readers_connected() -> None:
            while True:
                for p in everyone:
                    await p.ensure_connected()
                await asyncio.sleep(0.05)

        load = [asyncio.create_task(shopper_load(p)) for p in buyers]
        load += [asyncio.create_task(staff_load(p)) for p in staff]
        watcher = asyncio.create_task(keep_readers_connected())
        total = shoppers * messages + 3 * (messages // 2)
        while sum(len(p.sent) for p in everyone) < total // 3:
            await asyncio.sleep(0.02)
        if chaos == "kill-node":
            victims = [p for p in everyone if p.home == 1]
            nodes[1].signal(signal.SIGKILL)
            await nodes[1].wait()
        else:
            await redis.kill()
            await asyncio.sleep(1.0)  # load keeps running on every node meanwhile
            await redis.start()
        await asyncio.wait_for(asyncio.gather(*load), timeout=120)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

        acked = {cid: st for p in everyone for cid, st in p.sent.items()}
        assert len(acked) == total
        streams = {stream for stream, _ in acked.values()}
        auditor = StreamClient(nodes[0].url, mint("staff", "auditor", BOUTIQUE))
        await auditor.connect()
        stored_total = 0
        for stream in streams:
            stored = auditor.entries[stream]
            assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
            ids = [e["client_id"] for e in stored]
            assert len(ids) == len(set(ids)), f"{stream}: a message was stored twice"
            expected = {cid for cid, (s, _) in acked.items() if s == stream}
            assert set(ids) == expected, f"{stream}: stored {len(ids)}, acked {len(expected)}"
            stored_total += len(ids)
            for p in everyone:  # converged on their own: live frames, gap catch-up, resync
                if p.role == "staff" or stream.endswith(f":{p.sub}"):

                    def shown(p: Participant = p, s: str = stream) -> list[str]:
                        return [e["client_id"] for e in p.client.entries[s]]

                    with contextlib.suppress(TimeoutError):
                        await p.client.wait_for(lambda shown=shown, ids=ids: shown() == ids, timeout=10)
                    assert shown() == ids, f"{p.sub} shows {stream} differently from the store"
        assert stored_total == total
        print(
            f"\n{chaos}: {total} messages, {sum(p.retries for p in everyone)} retried sends, "
            f"{sum(p.duplicates for p in everyone)} acked as duplicates, "
            f"{sum(p.moved for p in everyone)} moves, {sum(p.client.resyncs for p in everyone)} resyncs"
        )
        if chaos == "kill-node":
            assert victims and all(p.moved >= 1 and p.home != 1 for p in victims)
        else:
            with contextlib.suppress(TimeoutError):
                await auditor.wait_for(lambda: all(p.client.resyncs >= 1 for p in everyone), timeout=10)
            assert all(p.client.resyncs >= 1 for p in everyone), "a node never told its sockets to resync"
        for p in everyone:  # exactly-once fan-out: no frame was pushed to a socket twice
            pushed = [(f["stream"], f["seq"]) for ev, f in p.client.live if ev == "chat.message"]
            assert len(pushed) == len(set(pushed)), f"{p.sub} was sent a chat frame twice"
        await auditor.disconnect()
        for p in everyone:
            await p.client.disconnect()
    finally:
        for n in nodes:
            await n.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(240)
@pytest.mark.parametrize("chaos", ["kill-node", "kill-redis"])
async def test_zero_loss_zero_duplicates_under_chaos(
    redis_server: RedisServer, mongo_url: str, tmp_path: Path, chaos: str
) -> None:
    await run_chat_load(tmp_path, redis_server, mongo_url, shoppers=6, messages=20, chaos=chaos)


@pytest.mark.soak
@pytest.mark.asyncio
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("chaos", ["kill-node", "kill-redis"])
async def test_zero_loss_zero_duplicates_under_chaos_soak(
    redis_server: RedisServer, mongo_url: str, tmp_path: Path, chaos: str
) -> None:
    await run_chat_load(tmp_path, redis_server, mongo_url, shoppers=60, messages=100, chaos=chaos)
