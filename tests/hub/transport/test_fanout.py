"""FanoutManager against a real python-socketio server on aiohttp, with real websocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from typing import Any

import pytest
import socketio

from hub.transport.fanout import SLOW_CONSUMER_REASON, FanoutManager
from tests.support.rawclient import RawClient
from tests.support.transport_server import ROOM, StartFanoutHub


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def drain_events(client: RawClient, settle: float = 0.2) -> list[tuple[str, list[Any]]]:
    """Everything the client receives until it has been quiet for ``settle`` seconds."""
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(await client.next_event(timeout=settle))
    return got


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_room_of_2000_gets_one_copy_each_without_task_per_recipient(fanout_hub: StartFanoutHub) -> None:
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2 * n + 100:
        pytest.skip("not enough file descriptors for 2,000 loopback connections")

    t0 = time.perf_counter()
    rss0 = rss_mb()
    hub = await fanout_hub()
    clients: list[RawClient] = []
    for start in range(0, n, 200):
        clients += await asyncio.gather(*(hub.raw() for _ in range(start, min(n, start + 200))))
    t_connected = time.perf_counter()
    rss_connected = rss_mb()
    assert len(hub.manager.rooms["/"][ROOM]) == n

    payload = {"stream": "inv:b1", "seq": 1, "sku": "SKU-0001", "qty": 7, "version": 42, "note": "x" * 60}
    tasks_before = len(asyncio.all_tasks())
    t_emit = time.perf_counter()
    await hub.sio.emit("stock", payload, room=ROOM)
    emit_ms = (time.perf_counter() - t_emit) * 1000
    tasks_after_emit = len(asyncio.all_tasks())
    queued = sum(hub.manager.queue_depth(c.eio_sid) for c in clients)

    received = await asyncio.gather(*(c.next_event(timeout=20) for c in clients))
    t_delivered = time.perf_counter()
    tasks_after_delivery = len(asyncio.all_tasks())
    rss_delivered = rss_mb()
    extra = await asyncio.gather(*(drain_events(c, settle=0.3) for c in clients))

    print(
        f"\n2,000-room fan-out: connect {t_connected - t0:.2f}s, emit call {emit_ms:.1f} ms, "
        f"emit->all delivered {t_delivered - t_emit:.2f}s; frames queued by the emit {queued}; "
        f"tasks before {tasks_before}, right after emit {tasks_after_emit}, "
        f"after delivery {tasks_after_delivery}; RSS start {rss0:.0f} MB, "
        f"+{rss_connected - rss0:.0f} MB for {n} connections (both ends), "
        f"+{rss_delivered - rss_connected:.1f} MB across the emit"
    )
    assert queued == 0, "idle WebSocket recipients are written to directly, not queued"
    assert all(r == ("stock", [payload]) for r in received)
    assert all(e == [] for e in extra), "a connection received more than one copy"
    assert tasks_after_emit - tasks_before < 50
    assert tasks_after_delivery - tasks_before < 50
    assert rss_delivered - rss0 < 200
    assert rss_delivered - rss_connected < 20


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_slow_consumer_is_evicted_and_others_keep_receiving(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub(max_queue=50, close_timeout=10.0)
    slow, fast1, fast2 = [await hub.raw() for _ in range(3)]
    fast = [fast1, fast2]
    slow.pause()

    pad = "x" * 16384
    counts = {c.sid: 0 for c in fast}
    deepest = 0

    async def consume(client: RawClient) -> None:
        while True:
            name, args = await client.events.get()
            if name == "blob":
                assert args[0]["i"] == counts[client.sid], "frames arrived out of order or were lost"
                counts[client.sid] += 1

    consumers = [asyncio.create_task(consume(c)) for c in fast]
    sent = 0
    after_eviction = 0
    while after_eviction < 50 and sent < 20000:
        await hub.sio.emit("blob", {"i": sent, "pad": pad}, room=ROOM)
        sent += 1
        deepest = max(deepest, hub.manager.queue_depth(slow.eio_sid))
        if hub.slow:
            after_eviction += 1
        # pace on the fast clients only, so that only the stalled one falls behind
        while any(hub.manager.queue_depth(c.eio_sid) > 10 for c in fast):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)

    assert hub.slow == [slow.sid]
    assert deepest <= 50
    print(f"\nslow consumer evicted after {sent - after_eviction} emits of 16 KiB; deepest queue {deepest}")

    slow.resume()
    async with asyncio.timeout(10):
        await slow.closed.wait()
    got = []
    while not slow.events.empty():
        got.append(slow.events.get_nowait())
    assert got[-1] == (
        "session.closing",
        [
            {
                "error": {
                    "code": 3002,
                    "name": "slow_consumer",
                    "message": got[-1][1][0]["error"]["message"],
                    "temporary": True,
                },
                "reconnect": True,
            }
        ],
    )
    assert all(name == "blob" for name, _ in got[:-1])
    assert slow.close_reason in ("eio close", "transport close")
    assert (slow.sid, SLOW_CONSUMER_REASON) in hub.disconnects
    assert not hub.manager.is_connected(slow.sid, "/")

    await hub.sio.emit("blob", {"i": sent, "pad": "last"}, room=ROOM)
    async with asyncio.timeout(10):
        while any(counts[c.sid] < sent + 1 for c in fast):
            await asyncio.sleep(0.01)
    for task in consumers:
        task.cancel()
    assert all(counts[c.sid] == sent + 1 for c in fast)
    assert hub.slow == [slow.sid]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_stalled_consumer_connection_is_aborted_after_close_timeout(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub(max_queue=20, close_timeout=0.5)
    stalled, other = await hub.raw(), await hub.raw()
    server_side = hub.sio.eio.sockets[stalled.eio_sid].websocket_transport
    stalled.pause()
    pad = "y" * 32768
    sent = 0
    while not hub.slow and sent < 20000:
        await hub.sio.emit("blob", {"i": sent, "pad": pad}, room=ROOM)
        sent += 1
        while hub.manager.queue_depth(other.eio_sid) > 5:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    assert hub.slow == [stalled.sid]

    assert not server_side.is_closing()
    await hub.manager.wait_evictions()
    # the server gave up on the peer: its session is closed and its TCP connection aborted.
    # What the stalled reader still finds in its kernel buffers when it looks again depends
    # on timing, so only the server side is asserted exactly.
    assert server_side.is_closing()
    socket = hub.sio.eio.sockets.get(stalled.eio_sid)
    assert socket is None or socket.closed
    assert (stalled.sid, SLOW_CONSUMER_REASON) in hub.disconnects
    stalled.resume()
    async with asyncio.timeout(10):
        await stalled.closed.wait()
    assert stalled.close_reason in ("transport close", "eio close")
    names = [name for name, _ in await drain_events(stalled, settle=0.05)]
    assert set(names[:-1]) <= {"blob"} and names[-1:] in ([], ["blob"], ["session.closing"]), names

    await hub.sio.emit("after", 1, room=ROOM)
    events = await drain_events(other)
    assert events[-1] == ("after", [1])
    assert len(events) == sent + 1


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_skip_sid_single_and_list(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    a, b, c = [await hub.raw() for _ in range(3)]

    await hub.sio.emit("one", 1, room=ROOM, skip_sid=a.sid)
    await hub.sio.emit("two", 2, room=ROOM, skip_sid=[a.sid, b.sid])
    await hub.sio.emit("three", 3, room=ROOM)

    assert await drain_events(a) == [("three", [3])]
    assert await drain_events(b) == [("one", [1]), ("three", [3])]
    assert await drain_events(c) == [("one", [1]), ("two", [2]), ("three", [3])]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_single_sid_rooms_list_and_tuple_args(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    a, b = await hub.raw(), await hub.raw()
    await hub.sio.enter_room(b.sid, "other")

    await hub.sio.emit("direct", {"k": "v"}, to=a.sid)
    await hub.sio.emit("multi", ("x", 2, None), room=[ROOM, "other"])
    await hub.sio.emit("nothing", None, room="nobody-here")

    assert await drain_events(a) == [("direct", [{"k": "v"}]), ("multi", ["x", 2, None])]
    assert await drain_events(b) == [("multi", ["x", 2, None])]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_emit_with_ack_callback_uses_fallback_path(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    client = socketio.AsyncClient()
    answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @client.on("question")
    async def question(data: Any) -> Any:
        return {"answer": data["n"] * 2}

    await client.connect(hub.url, transports=["websocket"])
    try:
        sid = client.get_sid()
        await hub.sio.emit("question", {"n": 21}, to=sid, callback=answered.set_result)
        async with asyncio.timeout(5):
            assert await answered == {"answer": 42}
        assert await hub.sio.call("question", {"n": 5}, to=sid, timeout=5) == {"answer": 10}
        # and the client -> server ack direction is untouched by the manager
        assert await client.call("ping_me", "hi", timeout=5) == {"pong": "hi"}
    finally:
        await client.disconnect()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_binary_frame_shared_by_polling_and_websocket_clients(fanout_hub: StartFanoutHub) -> None:
    """Stock python-socketio fails this: engineio's Packet caches the first encoding it is asked
    for, so a websocket writer's raw bytes end up in a polling payload (TypeError)."""
    hub = await fanout_hub()
    polling, websocket = socketio.AsyncClient(), socketio.AsyncClient()
    got: dict[str, asyncio.Future[Any]] = {}
    for name, client in (("polling", polling), ("websocket", websocket)):
        got[name] = asyncio.get_running_loop().create_future()

        def on_blob(data: Any, fut: asyncio.Future[Any] = got[name]) -> None:
            fut.set_result(data)

        client.on("blob", on_blob)
    await websocket.connect(hub.url, transports=["websocket"])
    await polling.connect(hub.url, transports=["polling"])
    try:
        blob = bytes(range(256)) * 4
        await hub.sio.emit("blob", {"raw": blob, "n": 1}, room=ROOM)
        async with asyncio.timeout(5):
            assert await got["websocket"] == {"raw": blob, "n": 1}
            assert await got["polling"] == {"raw": blob, "n": 1}
    finally:
        # closing the sessions server-side first ends the pending long-poll; otherwise the
        # polling client's disconnect waits for it (up to the 25 s ping interval). The
        # server's close waits, without a timeout, for the client to poll once more: bound it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await hub.sio.eio.disconnect()
        await polling.disconnect()
        await websocket.disconnect()


@pytest.mark.asyncio
async def test_rejects_non_positive_bound() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        FanoutManager(max_queue=0)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_official_client_upgrading_from_polling_gets_every_frame_in_order(
    fanout_hub: StartFanoutHub,
) -> None:
    """Emits run while python-socketio's client upgrades polling -> websocket: some are queued,
    some written directly once upgraded; the client sees each once, in order."""
    hub = await fanout_hub()
    client = socketio.AsyncClient()
    got: list[int] = []
    done = asyncio.Event()
    total = 400

    @client.on("n")
    def on_n(i: int) -> None:
        got.append(i)
        if len(got) == total:
            done.set()

    await client.connect(hub.url)  # polling first, then the upgrade
    try:
        for i in range(total):
            await hub.sio.emit("n", i, room=ROOM)
            await asyncio.sleep(0.002 if i < 200 else 0)
        async with asyncio.timeout(20):
            await done.wait()
        assert got == list(range(total))
        assert client.transport() == "websocket"
        assert hub.manager.takes_direct_writes(client.eio.sid), "the upgraded session takes direct writes"
        assert hub.manager.queue_depth(client.eio.sid) == 0
    finally:
        await client.disconnect()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_direct_slow_consumer_is_evicted_by_unsent_bytes(fanout_hub: StartFanoutHub) -> None:
    """Direct writes bypass the queue, so the transport's unsent bytes are what is bounded."""
    hub = await fanout_hub(max_queue=100_000, max_buffer_bytes=256 * 1024, close_timeout=0.5)
    stalled, other = await hub.raw(), await hub.raw()
    stalled.pause()
    pad = "z" * 32768
    sent = 0
    deepest_queue = 0
    while not hub.slow and sent < 5000:
        await hub.sio.emit("blob", {"i": sent, "pad": pad}, room=ROOM)
        sent += 1
        if not hub.slow:  # an eviction queues the session.closing frame
            deepest_queue = max(deepest_queue, hub.manager.queue_depth(stalled.eio_sid))
        while hub.manager.buffered_bytes(other.eio_sid) > 0:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    assert hub.slow == [stalled.sid]
    assert deepest_queue == 0, "the stalled peer's frames went to its transport, not its queue"
    await hub.manager.wait_evictions()
    assert (stalled.sid, SLOW_CONSUMER_REASON) in hub.disconnects
    stalled.resume()

    await hub.sio.emit("after", 1, room=ROOM)
    events = await drain_events(other)
    assert [args[0]["i"] for name, args in events if name == "blob"] == list(range(sent))
    assert events[-1] == ("after", [1])


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("enabled", [False, True])
async def test_permessage_deflate_only_when_enabled(fanout_hub: StartFanoutHub, enabled: bool) -> None:
    """Off by default even when the client offers it; when enabled, compressed sessions still
    receive fan-out (through the queue, as a prebuilt frame cannot be shared with them)."""
    hub = await fanout_hub(websocket_deflate=enabled)
    client = await RawClient.connect(hub.http, hub.url, compress=15)
    hub.clients.append(client)
    assert bool(client.ws.compress) is enabled
    await hub.sio.emit("hello", {"text": "a" * 2000}, room=ROOM)
    assert await client.next_event() == ("hello", [{"text": "a" * 2000}])


@pytest.mark.asyncio
async def test_rejects_non_positive_buffer_bound() -> None:
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        FanoutManager(max_buffer_bytes=0)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_evicted_upgraded_session_that_stopped_reading_is_aborted(fanout_hub: StartFanoutHub) -> None:
    """A session that started on polling and upgraded (what official clients do) and then stops
    reading: its WebSocket is not in the session's environ, yet it is aborted and released."""
    hub = await fanout_hub(max_queue=100_000, max_buffer_bytes=256 * 1024, close_timeout=0.5)
    base = f"{hub.url}/socket.io/?EIO=4"
    opened = await (await hub.http.get(f"{base}&transport=polling")).text()
    eio_sid = json.loads(opened[1:])["sid"]
    await hub.http.post(f"{base}&transport=polling&sid={eio_sid}", data="40")
    assert (await (await hub.http.get(f"{base}&transport=polling&sid={eio_sid}")).text()).startswith("40")
    ws = await hub.http.ws_connect(f"{base.replace('http', 'ws', 1)}&transport=websocket&sid={eio_sid}")
    await ws.send_str("2probe")
    assert (await ws.receive()).data == "3probe"
    await ws.send_str("5")
    async with asyncio.timeout(5):
        while not hub.manager.takes_direct_writes(eio_sid):
            await asyncio.sleep(0.01)
    sid = hub.sio.manager.sid_from_eio_sid(eio_sid, "/")

    pad = "z" * 32768
    sent = 0
    while not hub.slow and sent < 5000:  # the client never reads again
        await hub.sio.emit("blob", {"i": sent, "pad": pad}, room=ROOM)
        sent += 1
        await asyncio.sleep(0)
    assert hub.slow == [sid]
    await hub.manager.wait_evictions()
    async with asyncio.timeout(10):
        while hub.manager.takes_direct_writes(eio_sid):
            await asyncio.sleep(0.05)
    assert (sid, SLOW_CONSUMER_REASON) in hub.disconnects
    await ws.close()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_refuses_a_server_whose_sessions_cannot_take_direct_writes() -> None:
    with pytest.raises(TypeError, match="HubSocketServer"):
        socketio.AsyncServer(client_manager=FanoutManager(), async_mode="aiohttp")
