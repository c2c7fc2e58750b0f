"""Hostile and broken input at every edge of a real hub (DESIGN.md principle 10).

Handshake tokens (expired, other algorithms, ``alg: none``, foreign RSA key, wrong
audience, missing, staff without boutique), the Origin allow-list, the 64 KiB frame
cap, strict payload decoding, the per-connection rate limit, token expiry while
connected, and the namespace watchdog. Each case also checks that the hub keeps
serving: the same connection where the error is per request, other clients where
the offender is disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
import socketio
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.hub import TEST_SECRET
from tests.support.rawclient import RawClient, RawClientError

SHOP = "http://shop.example"
EVIL = "http://evil.example"
STREAM = "chat:b:b1:alice"


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "role": "shopper",
        "aud": "soko-live",
        "iat": now,
        "exp": now + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


async def refusal(http: aiohttp.ClientSession, url: str, auth: dict[str, Any] | None) -> dict[str, Any]:
    """The ErrorBody of a refused namespace CONNECT (fails the test if the CONNECT succeeds)."""
    try:
        client = await RawClient.connect(http, url, auth=auth)
    except RawClientError as exc:
        text = str(exc)
        assert text.startswith("connect refused: "), text
        payload = json.loads(text.removeprefix("connect refused: "))
        body: dict[str, Any] = payload["data"]
        assert set(body) == {"code", "name", "message", "temporary"}, payload
        return body
    await client.close()
    raise AssertionError(f"the hub accepted auth {auth!r}")


async def expect_ok(client: RawClient, event: str, data: Any) -> Any:
    reply = await client.emit(event, data, ack=True, timeout=15)
    assert reply is not None and len(reply) == 1 and reply[0].get("ok") is True, reply
    return reply[0]["data"]


async def connect(
    http: aiohttp.ClientSession,
    hub: Any,
    role: str = "shopper",
    sub: str = "alice",
    boutique: str | None = None,
    ttl: float = 3600.0,
    **kwargs: Any,
) -> RawClient:
    client = await RawClient.connect(
        http, hub.url, auth={"token": hub.token(role, sub, boutique, ttl)}, **kwargs
    )
    event, args = await client.next_event(timeout=15)
    assert event == "welcome" and args[0]["user"] == sub, (event, args)
    return client


# ---------------------------------------------------------------- handshake tokens


@pytest.mark.asyncio
async def test_valid_token_is_accepted(hub, http) -> None:  # type: ignore[no-untyped-def]
    """Control for the refusals below: the same claims, correctly signed, connect."""
    client = await RawClient.connect(
        http, hub.url, auth={"token": jwt.encode(claims(), TEST_SECRET, "HS256")}
    )
    try:
        event, args = await client.next_event(timeout=15)
        assert event == "welcome" and args[0]["user"] == "alice" and args[0]["role"] == "shopper"
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_expired_token_is_refused_with_token_expired(hub, http) -> None:  # type: ignore[no-untyped-def]
    body = await refusal(http, hub.url, {"token": hub.token("shopper", "alice", ttl=-30)})
    assert body["code"] == 2002 and body["name"] == "token_expired" and body["temporary"] is True


@pytest.mark.asyncio
async def test_expired_token_connect_error_reaches_python_socketio_client(hub) -> None:  # type: ignore[no-untyped-def]
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    async def on_connect_error(data: Any) -> None:
        errors.append(data)

    client.on("connect_error", on_connect_error)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            hub.url,
            auth={"token": hub.token("shopper", "alice", ttl=-30)},
            transports=["websocket"],
            wait_timeout=10,
        )
    assert len(errors) == 1 and errors[0]["data"]["code"] == 2002, errors


def _rs256_token() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), key, algorithm="RS256")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("HS384 with the hub's secret", lambda: jwt.encode(claims(), TEST_SECRET, algorithm="HS384")),
        ("HS512 with the hub's secret", lambda: jwt.encode(claims(), TEST_SECRET, algorithm="HS512")),
        ("alg none", lambda: unsigned_token(claims())),
        ("alg none claiming staff", lambda: unsigned_token(claims(role="staff", boutique="b1"))),
        ("RS256 with a foreign key", _rs256_token),
        ("HS256 with another secret", lambda: jwt.encode(claims(), "another-secret-" * 4, algorithm="HS256")),
        ("wrong audience", lambda: jwt.encode(claims(aud="other-app"), TEST_SECRET, algorithm="HS256")),
        ("no audience", lambda: jwt.encode(claims(aud=None), TEST_SECRET, algorithm="HS256")),
        ("no expiry", lambda: jwt.encode(claims(exp=None), TEST_SECRET, algorithm="HS256")),
        ("staff without boutique", lambda: jwt.encode(claims(role="staff"), TEST_SECRET, algorithm="HS256")),
        ("unknown role", lambda: jwt.encode(claims(role="admin"), TEST_SECRET, algorithm="HS256")),
        ("operator in sub", lambda: jwt.encode(claims(sub="$where"), TEST_SECRET, algorithm="HS256")),
        ("garbage", lambda: "not.a.jwt"),
    ],
)
@pytest.mark.asyncio
async def test_bad_token_is_refused_unauthenticated(hub, http, label, make) -> None:  # type: ignore[no-untyped-def]
    body = await refusal(http, hub.url, {"token": make()})
    assert body["code"] == 2001 and body["name"] == "unauthenticated" and body["temporary"] is False, (
        label,
        body,
    )


@pytest.mark.parametrize("auth", [None, {}, {"token": ""}, {"token": None}, {"token": 42}, {"jwt": "x"}])
@pytest.mark.asyncio
async def test_missing_token_is_refused_unauthenticated(hub, http, auth) -> None:  # type: ignore[no-untyped-def]
    body = await refusal(http, hub.url, auth)
    assert body["code"] == 2001, body


# ---------------------------------------------------------------- origin


@pytest.mark.asyncio
async def test_foreign_origin_is_refused_at_the_handshake(hub_factory, http) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(allow_origin=(SHOP,))
    polling = f"{hub.url}/socket.io/?EIO=4&transport=polling"

    # polling open: the foreign Origin gets no session, the allowed one and none do
    async with http.get(polling, headers={"Origin": EVIL}) as resp:
        body = await resp.text()
        assert resp.status == 403 and not body.startswith("0{"), (resp.status, body)
        assert json.loads(body)["error"]["code"] == 2004, body  # origin_not_allowed (docs/protocol.md)
    for headers in ({"Origin": SHOP}, {}):
        async with http.get(polling, headers=headers) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("0{"), headers

    # websocket: refused before any Engine.IO packet
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await RawClient.connect(
            http, hub.url, auth={"token": hub.token("shopper", "alice")}, headers={"Origin": EVIL}
        )
    assert refused.value.status >= 400
    for headers in ({"Origin": SHOP}, {}):
        client = await connect(http, hub, headers=headers)
        assert (
            await expect_ok(
                client, "chat.send", {"stream": STREAM, "client_id": f"o-{len(headers)}", "text": "hi"}
            )
        )["duplicate"] is False
        await client.close()

    # the official python client too
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            hub.url,
            auth={"token": hub.token("shopper", "alice")},
            headers={"Origin": EVIL},
            transports=["websocket"],
            wait_timeout=10,
        )
    await sio.disconnect()


# ---------------------------------------------------------------- frame cap


@pytest.mark.asyncio
async def test_oversized_frame_closes_only_that_connection(hub, http) -> None:  # type: ignore[no-untyped-def]
    staff = await connect(http, hub, "staff", "bob", "b1")
    offender = await connect(http, hub)
    try:
        await offender.emit("chat.send", {"stream": STREAM, "client_id": "big", "text": "x" * 70_000})
        async with asyncio.timeout(15):
            await offender.closed.wait()
        # the hub keeps serving: an existing client and a new one
        ack = await expect_ok(
            staff, "chat.send", {"stream": STREAM, "client_id": "after-big", "text": "still here"}
        )
        assert ack["seq"] == 1  # the oversized message was never stored
        again = await connect(http, hub)
        page = await expect_ok(again, "chat.history", {"stream": STREAM})
        assert [e["text"] for e in page["entries"]] == ["still here"]
        await again.close()
    finally:
        await offender.close()
        await staff.close()


# ---------------------------------------------------------------- malformed requests


MALFORMED: list[tuple[str, str, list[Any], int]] = [
    ("string", "chat.send", ["hello"], 1000),
    ("number", "chat.send", [42], 1000),
    ("array", "chat.send", [[STREAM, "id", "text"]], 1000),
    ("null", "chat.send", [None], 1000),
    ("bool", "sync", [True], 1000),
    (
        "unknown field",
        "chat.send",
        [{"stream": STREAM, "client_id": "u1", "text": "hi", "admin": True}],
        1000,
    ),
    ("missing field", "chat.send", [{"stream": STREAM, "text": "hi"}], 1000),
    ("missing everything", "chat.send", [{}], 1000),
    ("client_id int", "chat.send", [{"stream": STREAM, "client_id": 5, "text": "hi"}], 1000),
    ("text list", "chat.send", [{"stream": STREAM, "client_id": "t1", "text": ["hi"]}], 1000),
    ("seq string", "chat.read", [{"stream": STREAM, "seq": "1"}], 1000),
    ("limit bool", "chat.history", [{"stream": STREAM, "limit": True}], 1000),
    ("limit zero", "catchup", [{"stream": STREAM, "limit": 0}], 1000),
    ("limit too big", "catchup", [{"stream": STREAM, "limit": 501}], 1000),
    ("negative seq", "chat.read", [{"stream": STREAM, "seq": -1}], 1000),
    ("huge seq", "chat.read", [{"stream": STREAM, "seq": 10**40}], 1000),
    ("float seq", "chat.read", [{"stream": STREAM, "seq": 1e308}], 1000),
    ("operator stream", "chat.send", [{"stream": {"$gt": ""}, "client_id": "m1", "text": "hi"}], 1000),
    ("operator client_id", "chat.send", [{"stream": STREAM, "client_id": {"$ne": None}, "text": "hi"}], 1000),
    ("$where client_id", "chat.send", [{"stream": STREAM, "client_id": "$where", "text": "hi"}], 1003),
    ("dotted client_id", "chat.send", [{"stream": STREAM, "client_id": "a.b", "text": "hi"}], 1003),
    ("long client_id", "chat.send", [{"stream": STREAM, "client_id": "a" * 65, "text": "hi"}], 1003),
    ("newline client_id", "chat.send", [{"stream": STREAM, "client_id": "ab\n", "text": "hi"}], 1003),
    ("path stream", "chat.send", [{"stream": "chat:b:../x", "client_id": "p1", "text": "hi"}], 1003),
    ("unknown family", "chat.history", [{"stream": "admin:all"}], 1003),
    ("operator order", "order.watch", [{"order_id": "$gt"}], 1003),
    ("bad cursor stream", "sync", [{"cursors": [{"stream": "inbox:u:a.b"}]}], 1003),
    ("nested garbage", "sync", [{"cursors": [[[[[{"stream": [[[]]]}]]]]]}], 1000),
    ("deep nesting", "sync", [{"cursors": json.loads("[" * 500 + "]" * 500)}], 1000),
    (
        "garbage in seqs",
        "notify.ack",
        [{"stream": "inbox:u:alice", "seqs": [1, "2", None, {"a": [1]}]}],
        1000,
    ),
    ("too many cursors", "sync", [{"cursors": [{"stream": STREAM}] * 1001}], 1000),
    ("two arguments", "chat.send", [{"stream": STREAM, "client_id": "t2", "text": "hi"}, {"x": 1}], 1000),
    ("no argument", "chat.list", [], 1000),
    ("unknown event", "chat.delete", [{"stream": STREAM}], 1001),
    ("server event name", "welcome", [{}], 1001),
    ("empty text", "chat.send", [{"stream": STREAM, "client_id": "e1", "text": ""}], 1000),
    ("blank text", "chat.send", [{"stream": STREAM, "client_id": "e2", "text": " \x00\x01 "}], 1000),
    ("text too long", "chat.send", [{"stream": STREAM, "client_id": "l1", "text": "x" * 4001}], 1004),
]


@pytest.mark.asyncio
async def test_malformed_requests_get_their_code_and_the_connection_keeps_working(  # type: ignore[no-untyped-def]
    hub, http
) -> None:
    client = await connect(http, hub)
    try:
        wrong: list[str] = []
        for label, event, args, code in MALFORMED:
            reply = await client.emit(event, *args, ack=True, timeout=15)
            assert reply is not None
            error = reply[0].get("error") if len(reply) == 1 and isinstance(reply[0], dict) else None
            if not (
                reply[0].get("ok") is False
                and error
                and error["code"] == code
                and error["temporary"] is False
            ):
                wrong.append(f"{label}: expected {code}, got {reply}")
        assert not wrong, "\n".join(wrong)

        # frames the Socket.IO layer cannot even parse: no answer is possible, the connection survives
        await client.ws.send_str('42["chat.send",{"stream":')
        await client.ws.send_str('42["sync",{"cursors":' + "[" * 5000 + "]" * 5000 + "}]")
        await client.ws.send_str("4-garbage")

        ack = await expect_ok(
            client, "chat.send", {"stream": STREAM, "client_id": "valid-1", "text": "valid"}
        )
        assert ack["seq"] == 1 and ack["duplicate"] is False  # none of the malformed sends was stored
        assert not client.closed.is_set()
    finally:
        await client.close()


# ---------------------------------------------------------------- rate limit


@pytest.mark.asyncio
async def test_flood_is_throttled_then_disconnected_and_others_unaffected(  # type: ignore[no-untyped-def]
    hub_factory, http
) -> None:
    hub = await hub_factory(rate_per_second=5, rate_burst=5, rate_strikes=20)
    bystander = await connect(http, hub, "staff", "bob", "b1")
    flooder = await connect(http, hub)
    twin = await connect(http, hub)  # the same user on a second device, keeping to the rate
    twin_replies: list[Any] = []

    async def polite() -> None:
        while not flooder.closed.is_set():
            reply = await twin.emit("chat.list", {}, ack=True, timeout=15)
            twin_replies.append(reply[0] if reply else None)
            await asyncio.sleep(0.25)

    polite_task: asyncio.Task[None] | None = None
    try:
        replies = await asyncio.gather(
            *(flooder.emit("chat.list", {}, ack=True, timeout=15) for _ in range(10))
        )
        bodies = [r[0] for r in replies if r]
        limited = [b["error"] for b in bodies if b.get("ok") is False]
        assert any(b.get("ok") is True for b in bodies), bodies
        assert limited, bodies
        assert all(
            e["code"] == 3001 and e["name"] == "rate_limited" and e["temporary"] is True for e in limited
        )
        polite_task = asyncio.create_task(polite())  # starts while the user's budget is spent

        async with asyncio.timeout(30):
            while not flooder.closed.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    for _ in range(50):
                        await flooder.emit("chat.list", {})
                await asyncio.sleep(0.01)
        closing = [args[0] for event, args in drain(flooder) if event == "session.closing"]
        assert len(closing) == 1, closing
        assert closing[0]["error"]["code"] == 3001 and closing[0]["reconnect"] is True
        assert (
            flooder.close_reason == "eio close"
        )  # an Engine.IO close: official clients reconnect by themselves

        assert not bystander.closed.is_set()
        assert (await expect_ok(bystander, "chat.list", {}))["conversations"] == []
        await polite_task
        # The budget is the user's, so the twin was refused too, but never disconnected for it.
        assert any(r and r.get("ok") is False and r["error"]["code"] == 3001 for r in twin_replies), (
            twin_replies
        )
        assert not twin.closed.is_set()
    finally:
        if polite_task is not None:
            polite_task.cancel()
        await flooder.close()
        await twin.close()
        await bystander.close()


def drain(client: RawClient) -> list[tuple[str, list[Any]]]:
    out = []
    while not client.events.empty():
        out.append(client.events.get_nowait())
    return out


# ---------------------------------------------------------------- token expiry


@pytest.mark.asyncio
async def test_token_expiring_while_connected_closes_the_session(hub, http) -> None:  # type: ignore[no-untyped-def]
    other = await connect(http, hub, "staff", "bob", "b1")
    # ttl 2 s counted from the next whole second, so a slow handshake cannot meet an already expired token
    token = jwt.encode(claims(exp=math.ceil(time.time()) + 2), TEST_SECRET, algorithm="HS256")
    client = await RawClient.connect(http, hub.url, auth={"token": token})
    try:
        async with asyncio.timeout(20):
            await client.closed.wait()
        events = drain(client)
        assert events[0][0] == "welcome"
        closing = [args[0] for event, args in events if event == "session.closing"]
        assert len(closing) == 1, events
        assert closing[0]["error"]["code"] == 2002 and closing[0]["error"]["temporary"] is True
        assert closing[0]["reconnect"] is True
        assert time.time() >= events[0][1][0]["token_expires_at"] - 1
        assert not other.closed.is_set()
        await expect_ok(other, "chat.list", {})
    finally:
        await client.close()
        await other.close()


@pytest.mark.asyncio
async def test_hub_closes_the_websocket_of_a_session_it_ends(hub, http) -> None:  # type: ignore[no-untyped-def]
    """The official JS client ignores an Engine.IO CLOSE packet over WebSocket; the hub must close the
    WebSocket itself, or that client would notice only at its ping timeout (25 s here)."""
    token = jwt.encode(claims(exp=math.ceil(time.time()) + 2), TEST_SECRET, algorithm="HS256")
    url = hub.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with http.ws_connect(url, autoping=True) as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str("40" + json.dumps({"token": token}))
        texts: list[str] = []
        async with asyncio.timeout(10):  # expiry in <= 3 s; the ping timeout would be 25 s + 20 s
            while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                texts.append(msg.data)  # never answers, never closes: like a client ignoring CLOSE
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        assert any('"session.closing"' in t for t in texts) and texts[-1] == "1", texts


# ---------------------------------------------------------------- namespace watchdog


async def open_unbound_websocket(http: aiohttp.ClientSession, hub: Any) -> aiohttp.ClientWebSocketResponse:
    """An Engine.IO websocket session that receives its open packet and never sends ``40``."""
    ws = await http.ws_connect(hub.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket")
    opened = await ws.receive_str(timeout=15)
    assert opened.startswith("0{") and json.loads(opened[1:])["sid"], opened
    return ws


@pytest.mark.asyncio
async def test_watchdog_closes_sessions_that_never_connect_the_namespace(  # type: ignore[no-untyped-def]
    hub_factory, http
) -> None:
    hub = await hub_factory(namespace_timeout=1.0)
    bound = await connect(http, hub)
    ws = await open_unbound_websocket(http, hub)
    async with http.get(f"{hub.url}/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 200
        polling_sid = json.loads((await resp.text())[1:])["sid"]
    try:
        # websocket: the server ends the Engine.IO session with a CLOSE packet ("1")
        seen: list[Any] = []
        async with asyncio.timeout(20):
            while True:
                msg = await ws.receive()
                seen.append((msg.type, msg.data))
                if msg.type is not aiohttp.WSMsgType.TEXT or msg.data == "1":
                    break
                if msg.data == "2":
                    await ws.send_str("3")  # alive at the Engine.IO level; only the namespace is missing
        assert seen[-1] in ((aiohttp.WSMsgType.TEXT, "1"), (aiohttp.WSMsgType.CLOSE, seen[-1][1])), seen
        await ws.close()

        # polling: the session is gone (a long poll ends with CLOSE, or the sid is unknown)
        async with asyncio.timeout(20):
            async with http.get(f"{hub.url}/socket.io/?EIO=4&transport=polling&sid={polling_sid}") as resp:
                body = await resp.text()
        assert resp.status >= 400 or "1" in body.split("\x1e"), (resp.status, body)
        async with http.get(f"{hub.url}/socket.io/?EIO=4&transport=polling&sid={polling_sid}") as resp:
            assert resp.status >= 400, resp.status

        # the session that did connect its namespace, open longer than the timeout, is still served
        await asyncio.sleep(2.5)
        assert not bound.closed.is_set()
        await expect_ok(bound, "chat.list", {})
    finally:
        await ws.close()
        await bound.close()


@pytest.mark.asyncio
async def test_watchdog_closes_the_tcp_connection_of_a_peer_that_ignores_close(  # type: ignore[no-untyped-def]
    hub_factory, http
) -> None:
    hub = await hub_factory(namespace_timeout=1.0)
    ws = await open_unbound_websocket(http, hub)
    try:
        async with asyncio.timeout(12):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass  # ignore everything, the CLOSE packet included
        assert ws.closed
    finally:
        await ws.close()
