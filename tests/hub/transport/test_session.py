"""HubSocket: engineio sessions without per-message tasks, on a real server with real WebSocket clients."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections import Counter

import aiohttp
import pytest
from engineio import packet as eio_packet

from hub.transport.send_queue import SendQueue
from hub.transport.session import HubEngineServer, HubSocket, HubSocketServer
from tests.support.transport_server import ROOM, Hub, StartFanoutHub

FAST_PINGS = {"ping_interval": 0.2, "ping_timeout": 0.3}


async def _polling_session(hub: Hub) -> tuple[str, str]:
    """Open a polling session connected to the default namespace; its sid and poll URL."""
    poll = f"{hub.url}/socket.io/?EIO=4&transport=polling"
    async with hub.http.get(poll) as reply:
        eio_sid = json.loads((await reply.text())[1:])["sid"]
    poll = f"{poll}&sid={eio_sid}"
    async with hub.http.post(poll, data="40") as reply:
        assert reply.status == 200
    async with hub.http.get(poll) as reply:
        assert (await reply.text()).startswith("40")
    return eio_sid, poll


def _upgrade_url(hub: Hub, eio_sid: str) -> str:
    return f"{hub.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket&sid={eio_sid}"


def server_task_census() -> Counter[str]:
    """How many tasks run each coroutine, by qualified name."""
    return Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())  # type: ignore[union-attr]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_every_session_is_a_hub_socket_even_after_engineio_replaces_its_table(
    fanout_hub: StartFanoutHub,
) -> None:
    hub = await fanout_hub()
    first = await hub.raw()
    assert type(hub.sio.eio.sockets[first.eio_sid]) is HubSocket
    assert type(hub.sio.eio.sockets[first.eio_sid].queue) is SendQueue

    await hub.sio.eio.disconnect()  # closes every session and assigns a fresh, plain dict
    async with asyncio.timeout(10):
        await first.closed.wait()
    second = await hub.raw()
    assert type(hub.sio.eio.sockets[second.eio_sid]) is HubSocket


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_idle_session_runs_no_task_per_read_or_per_ping(fanout_hub: StartFanoutHub) -> None:
    """engineio's own socket keeps a writer, a read task, a ``wait_for`` on its queue and a
    sleeping ping task per connection, beside aiohttp's two for the request; this one keeps one,
    the task serving its adopted WebSocket."""
    hub = await fanout_hub(server_options=FAST_PINGS)
    n = 40
    before = server_task_census()
    clients = [await hub.raw() for _ in range(n)]
    async with asyncio.timeout(10):  # past two ping exchanges each
        while any(client.received < 2 for client in clients):
            await asyncio.sleep(0.05)
    grown = server_task_census() - before

    per_connection = {name: count for name, count in grown.items() if count >= n}
    assert per_connection == {
        "RawClient._read_loop": n,  # the test's own clients
        "DirectWebSocket._serve": n,
    }, grown


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_peer_that_stops_answering_pings_is_disconnected_and_its_connection_released(
    fanout_hub: StartFanoutHub,
) -> None:
    """No read timeout any more: the ping timeout alone must end a silent session."""
    hub = await fanout_hub(server_options=FAST_PINGS)
    silent, alive = await hub.raw(), await hub.raw()
    server_side = hub.sio.eio.sockets[silent.eio_sid].websocket_transport
    session = hub.sio.eio.sockets[silent.eio_sid]
    silent.pause()

    async with asyncio.timeout(10):
        while (silent.sid, "ping timeout") not in hub.disconnects:
            await asyncio.sleep(0.05)
    async with asyncio.timeout(20):  # the WebSocket close waits up to CLOSE_TIMEOUT_S, then aborts
        while not server_side.is_closing():
            await asyncio.sleep(0.1)
    assert session.queue.empty(), "nothing left behind for a writer that will never run"
    assert all(sid != alive.sid for sid, _ in hub.disconnects), "the answering peer is kept"
    assert await alive.emit("ping_me", 7, ack=True) == [{"pong": 7}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("sender", ["session", "fanout"])
async def test_a_packet_sent_while_another_is_queued_stays_behind_it(
    fanout_hub: StartFanoutHub, sender: str
) -> None:
    """Neither a session send nor a fan-out emit is written directly while a queued packet is unsent."""
    hub = await fanout_hub()
    client = await hub.raw()
    socket = hub.sio.eio.sockets[client.eio_sid]

    async def send(event: str, value: int) -> None:
        if sender == "session":
            await hub.sio.eio.send(client.eio_sid, f'2["{event}",{value}]')
        else:
            await hub.sio.emit(event, value, room=ROOM)

    # a binary packet always goes through the writer
    socket.post(eio_packet.Packet(eio_packet.MESSAGE, data=b"\x00raw"))
    await send("first", 1)  # neither send suspends, so the writer has not run yet
    await send("second", 2)
    assert socket.queue.qsize() == 3, "both sends must queue behind the unsent binary packet"
    assert await client.next_event() == ("first", [1])
    assert await client.next_event() == ("second", [2])
    assert client.binary == [b"\x00raw"]

    await send("third", 3)
    assert socket.queue.qsize() == 0, "with the writer idle again, the send is written at once"
    assert await client.next_event() == ("third", [3])


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_websocket_that_began_closing_takes_no_direct_write(fanout_hub: StartFanoutHub) -> None:
    """Once aiohttp starts its close (here, from the server side) the fan-out stops writing to it,
    before the session itself hears of the close: nothing may follow a close frame."""
    hub = await fanout_hub()
    leaving, staying = await hub.raw(), await hub.raw()
    link = hub.manager._links[leaving.eio_sid]
    assert link.ready()
    closing = asyncio.get_running_loop().create_task(link._websocket.close())
    await asyncio.sleep(0)  # the close frame is on its way; the session's read loop has not seen it
    assert not hub.sio.eio.sockets[leaving.eio_sid].closing
    assert not link.ready()
    await hub.sio.emit("after", 1, room=ROOM)
    assert await staying.next_event() == ("after", [1])
    await closing
    async with asyncio.timeout(10):
        await leaving.closed.wait()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_server_disconnect_sends_close_and_ends_the_websocket(fanout_hub: StartFanoutHub) -> None:
    """CLOSE goes through the writer, which closes the WebSocket after it."""
    hub = await fanout_hub()
    client = await hub.raw()
    await hub.sio.eio.disconnect(client.eio_sid)
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.close_reason == "eio close"
    assert client.eio_sid not in hub.sio.eio.sockets


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_client_close_packet_ends_the_session_and_its_websocket(fanout_hub: StartFanoutHub) -> None:
    hub = await fanout_hub()
    leaving, staying = await hub.raw(), await hub.raw()
    server_side = hub.sio.eio.sockets[leaving.eio_sid].websocket_transport
    await leaving.ws.send_str("1")  # Engine.IO CLOSE from the client
    async with asyncio.timeout(10):
        await leaving.closed.wait()
        while not server_side.is_closing():
            await asyncio.sleep(0.05)
    assert (leaving.sid, "client disconnect") in hub.disconnects
    assert leaving.eio_sid not in hub.sio.eio.sockets
    assert await staying.emit("ping_me", 1, ack=True) == [{"pong": 1}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_polling_only_client_is_served_and_pinged(fanout_hub: StartFanoutHub) -> None:
    """A session that stays on polling is pinged by the timer, and each PONG schedules the next PING."""
    hub = await fanout_hub(server_options=FAST_PINGS)
    eio_sid, poll = await _polling_session(hub)
    assert type(hub.sio.eio.sockets[eio_sid]) is HubSocket
    pings = 0
    async with asyncio.timeout(10):
        while pings < 2:  # the second PING is scheduled only by the PONG to the first
            async with hub.http.get(poll) as reply:
                packets = (await reply.text()).split("\x1e")
            for packet in packets:
                if packet == "2":
                    pings += 1
                    async with hub.http.post(poll, data="3") as pong:
                        assert pong.status == 200
    async with hub.http.post(poll, data='420["ping_me",5]') as reply:
        assert reply.status == 200
    async with asyncio.timeout(10):
        answer = ""
        while not answer.startswith("430"):
            async with hub.http.get(poll) as reply:
                answer = next((p for p in (await reply.text()).split("\x1e") if p != "2"), "")
    assert answer == '430[{"pong":5}]'
    assert not hub.disconnects


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_send_while_the_writer_waits_for_a_stalled_peer_is_queued(fanout_hub: StartFanoutHub) -> None:
    """Backpressure: while the writer waits for a peer that stopped reading to drain its socket, a
    new packet is queued (where the slow-consumer bound counts it), not written to the transport."""
    hub = await fanout_hub()
    client = await hub.raw()
    socket = hub.sio.eio.sockets[client.eio_sid]
    client.pause()
    pad = "x" * 1_000_000
    sent = 0
    async with asyncio.timeout(40):
        while True:  # until the writer is parked in drain with nothing left queued
            socket.post(eio_packet.Packet(eio_packet.MESSAGE, data=b"\x00raw"))  # binary: through the writer
            await hub.sio.eio.send(client.eio_sid, f'2["big",{{"i":{sent},"pad":"{pad}"}}]')
            sent += 1
            while not socket.queue.empty():
                await asyncio.sleep(0.005)
            # a writer that did not have to wait for the socket has already finished
            if socket._writer is not None:
                break
    await hub.sio.eio.send(client.eio_sid, '2["after",1]')
    assert socket.queue.qsize() == 1, "the send must be queued while the writer waits"
    client.resume()
    names = [(await client.next_event(timeout=20))[0] for _ in range(sent + 1)]
    assert names == ["big"] * sent + ["after"]
    assert len(client.binary) == sent


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_failed_upgrade_leaves_the_session_on_polling_with_nothing_lost(
    fanout_hub: StartFanoutHub,
) -> None:
    """An emit during the probe is held for polling, not written to the probing WebSocket; when
    the client then sends something other than UPGRADE, the session stays on polling."""
    hub = await fanout_hub()
    eio_sid, poll = await _polling_session(hub)
    async with hub.http.ws_connect(_upgrade_url(hub, eio_sid)) as ws:
        await ws.send_str("2probe")
        assert await ws.receive_str() == "3probe"
        await hub.sio.emit("during", 1, room=ROOM)
        await ws.send_str("2not-an-upgrade")
        async with asyncio.timeout(10):
            ending = await ws.receive()
        assert ending.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), ending
    session = hub.sio.eio.sockets[eio_sid]
    assert not session.upgraded and not session.upgrading and not session.closed
    assert not hub.manager.takes_direct_writes(eio_sid)
    await hub.sio.emit("after", 2, room=ROOM)
    async with hub.http.get(poll) as reply:
        payload = await reply.text()
    assert payload.split("\x1e") == ["6", '42["during",1]', '42["after",2]']


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_second_upgrade_racing_the_first_is_refused(fanout_hub: StartFanoutHub) -> None:
    """Two WebSockets probing one polling session: the first to probe upgrades and takes direct
    writes, the second is closed and never registered for them."""
    hub = await fanout_hub()
    eio_sid, _ = await _polling_session(hub)
    async with hub.http.ws_connect(_upgrade_url(hub, eio_sid)) as first:
        await first.send_str("2probe")
        assert await first.receive_str() == "3probe"
        async with hub.http.ws_connect(_upgrade_url(hub, eio_sid)) as second:
            await second.send_str("2probe")
            async with asyncio.timeout(10):
                ending = await second.receive()
            assert ending.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), ending
        await first.send_str("5")
        async with asyncio.timeout(10):
            while not hub.manager.takes_direct_writes(eio_sid) or hub.manager.queue_depth(eio_sid):
                await asyncio.sleep(0.01)
        await hub.sio.emit("direct", 1, room=ROOM)
        assert await first.receive_str() == "6"  # the NOOP that ends the client's pending poll
        assert await first.receive_str() == '42["direct",1]'


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_websocket_task_cancelled_twice_still_closes_its_session(
    fanout_hub: StartFanoutHub,
) -> None:
    """Shutdown cancels the task serving a WebSocket that outlives its grace (after aborting the
    connection; here it is not aborted, the harder case). Cancelled once, the session ends its read
    loop and closes the WebSocket; cancelled again while that close waits for the peer, it must
    still close the session and run its disconnect handler."""
    hub = await fanout_hub()
    client = await hub.raw()
    requests = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "DirectWebSocket._serve"]
    assert len(requests) == 1, "precondition: the client's WebSocket is the only one served"
    requests[0].cancel()
    await asyncio.sleep(0)  # the handler runs on to its WebSocket close, which waits for the client
    assert client.eio_sid in hub.sio.eio.sockets and not hub.disconnects
    requests[0].cancel()
    async with asyncio.timeout(10):
        while not hub.disconnects:
            await asyncio.sleep(0.01)
    assert hub.disconnects == [(client.sid, "transport close")]
    async with asyncio.timeout(10):  # and the serving task drops the closed session from the table
        while client.eio_sid in hub.sio.eio.sockets:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_shutting_the_server_down_runs_every_sessions_disconnect_handler(
    fanout_hub: StartFanoutHub,
) -> None:
    """Stopping the server (as the hub does at SIGTERM) with WebSockets open closes each session,
    so its disconnect handler runs and it leaves the session table."""
    hub = await fanout_hub()
    clients = [await hub.raw() for _ in range(3)]
    await hub.runner.cleanup()
    assert sorted(sid for sid, _ in hub.disconnects) == sorted(c.sid for c in clients)
    assert not hub.sio.eio.sockets
    async with asyncio.timeout(10):
        for client in clients:
            await client.closed.wait()


def test_the_engine_server_refuses_settings_that_would_leave_sessions_unwatched() -> None:
    with pytest.raises(ValueError, match="monitor_clients"):
        HubSocketServer(async_mode="aiohttp", monitor_clients=False)
    with pytest.raises(ValueError, match="aiohttp only"):
        HubEngineServer(async_mode="asgi")


def test_the_session_table_refuses_what_it_cannot_make_a_hub_socket() -> None:
    server = HubEngineServer(async_mode="aiohttp")
    with pytest.raises(TypeError, match="not an AsyncSocket"):
        server.sockets["x"] = object()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_closed_session_waiting_for_its_ping_does_not_keep_its_websocket(
    fanout_hub: StartFanoutHub,
) -> None:
    """PINGs wait in one server-wide queue that cannot be cancelled, so a session that closes
    stays referenced until its PING is due (``ping_interval``, 25 s by default). It must not keep
    its WebSocket (the adopted connection and its frame parser) alive that long: after a reconnect
    storm that would be every old connection's memory."""
    hub = await fanout_hub()
    client = await hub.raw()
    session = hub.sio.eio.sockets[client.eio_sid]
    assert len(hub.sio.eio.pings) == 1, "precondition: the first PING is waiting"
    websocket = weakref.ref(session._ws._websocket._frames)
    await client.close()
    async with asyncio.timeout(10):  # engineio drops the session once its WebSocket handler returned
        while client.eio_sid in hub.sio.eio.sockets:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # the serving task has ended; its done-callbacks (which untrack it) run now
    del session
    gc.collect()
    assert len(hub.sio.eio.pings) == 1, "the PING entry is still there"
    assert websocket() is None
