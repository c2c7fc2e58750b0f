"""Cross-tenant authorization: 1,000 seeded-random forbidden operations, and nothing leaks.

A real hub is populated with 3 boutiques (2 staff each), 6 shoppers, 3 drivers,
orders reported through ``POST /api/v1/events`` (with drivers assigned, one order
reassigned from one driver to another, one order without a driver) and existing
conversations. Then 15 persistent connections (one per actor) run a
``random.Random(1234)`` matrix of operations on streams and orders the actor does
not belong to, interleaved with legitimate traffic (chat, typing, read receipts,
order status changes, notifications) that produces live frames.

Every forbidden operation must be refused with 2003 (``sync`` must simply omit the
foreign streams), and every frame any client ever received must concern a stream
or order that client may see, as defined from the seed data alone.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import socketio

from tests.support.streamclient import StreamClient

SEED = 1234
OPERATIONS = 1000
LEGIT_PROBABILITY = 0.35

BOUTIQUES = ("b0", "b1", "b2")
STAFF = {f"st-{b}-{k}": b for b in BOUTIQUES for k in range(2)}
SHOPPERS = tuple(f"sh{i}" for i in range(6))
DRIVERS = ("d0", "d1", "d2")
# order id, shopper, boutique, driver (final assignment; None: never assigned)
ORDERS = (
    ("o0", "sh0", "b0", "d0"),
    ("o1", "sh1", "b1", "d1"),
    ("o2", "sh2", "b2", "d2"),
    ("o3", "sh3", "b1", "d0"),
    ("o4", "sh4", "b2", "d1"),
    ("o5", "sh5", "b0", "d2"),
    ("o6", "sh0", "b2", "d1"),
    ("o7", "sh1", "b0", None),
    ("o8", "sh2", "b1", "d1"),  # first assigned to d0, who chatted in it, then reassigned to d1
)
REASSIGNED_ORDER, FORMER_DRIVER = "o8", "d0"
STATUSES = ("confirmed", "preparing", "ready", "picked_up", "in_transit", "delivered")
FOREIGN_MARK = "FOREIGN"


@dataclass(frozen=True)
class Actor:
    sub: str
    role: str
    boutique: str | None = None


ACTORS = (
    *(Actor(s, "shopper") for s in SHOPPERS),
    *(Actor(s, "staff", b) for s, b in STAFF.items()),
    *(Actor(d, "driver") for d in DRIVERS),
)
ORDER_BY_ID = {o[0]: o for o in ORDERS}


# ---------------------------------------------------------------- who may see what (from the seed data only)


def chat_parties(stream: str) -> set[str]:
    """Parties (``user:X`` / ``boutique:B``) that legitimately take part in a chat stream now."""
    parts = stream.split(":")
    if stream.startswith("chat:b:"):
        return {f"user:{parts[3]}", f"boutique:{parts[2]}"}
    order = ORDER_BY_ID.get(parts[2])
    if order is None or order[3] is None:
        return set()
    return {f"user:{order[1]}", f"user:{order[3]}"}


def allowed_streams(actor: Actor) -> set[str]:
    if actor.role == "shopper":
        return (
            {f"chat:b:{b}:{actor.sub}" for b in (*BOUTIQUES, "b9")}
            | {f"chat:o:{o}" for o, s, _b, d in ORDERS if s == actor.sub and d is not None}
            | {f"inbox:u:{actor.sub}"}
        )
    if actor.role == "staff":
        return {f"chat:b:{actor.boutique}:{s}" for s in (*SHOPPERS, "ghost")} | {
            f"inbox:u:{actor.sub}",
            f"inbox:b:{actor.boutique}",
        }
    return {f"chat:o:{o}" for o, _s, _b, d in ORDERS if d == actor.sub} | {f"inbox:u:{actor.sub}"}


def allowed_orders(actor: Actor) -> set[str]:
    if actor.role == "shopper":
        return {o for o, s, _b, _d in ORDERS if s == actor.sub}
    if actor.role == "staff":
        return {o for o, _s, b, _d in ORDERS if b == actor.boutique}
    return {o for o, _s, _b, d in ORDERS if d == actor.sub}


USERS = (*SHOPPERS, *STAFF, *DRIVERS)
UNIVERSE_STREAMS = sorted(
    {f"chat:b:{b}:{s}" for b in (*BOUTIQUES, "b9") for s in (*SHOPPERS, "ghost")}
    | {f"chat:o:{o[0]}" for o in ORDERS}
    | {"chat:o:o-none"}
    | {f"inbox:u:{u}" for u in (*USERS, "ghost")}
    | {f"inbox:b:{b}" for b in (*BOUTIQUES, "b9")}
)
UNIVERSE_ORDERS = sorted({o[0] for o in ORDERS} | {"o-none"})


def own_chats(actor: Actor) -> list[str]:
    """Chat streams the actor may write to, for legitimate traffic."""
    if actor.role == "shopper":
        return sorted(s for s in allowed_streams(actor) if s.startswith("chat:") and ":b9:" not in s)
    if actor.role == "staff":
        return sorted(f"chat:b:{actor.boutique}:{s}" for s in SHOPPERS)
    return sorted(s for s in allowed_streams(actor) if s.startswith("chat:"))


def test_allowed_sets_are_consistent() -> None:
    """The model itself: every actor has foreign streams and orders to attack, and its own to use."""
    for actor in ACTORS:
        assert allowed_streams(actor) <= set(UNIVERSE_STREAMS)
        assert set(UNIVERSE_STREAMS) - allowed_streams(actor)
        assert set(UNIVERSE_ORDERS) - allowed_orders(actor)
        assert own_chats(actor)
    assert f"chat:o:{REASSIGNED_ORDER}" not in allowed_streams(Actor(FORMER_DRIVER, "driver"))


# ---------------------------------------------------------------- clients


@dataclass
class Recorder:
    """One persistent python-socketio connection that records every frame it receives."""

    actor: Actor
    sio: socketio.AsyncClient
    frames: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    @classmethod
    async def connect(cls, url: str, token: str, actor: Actor) -> Recorder:
        sio = socketio.AsyncClient(reconnection=False)
        rec = cls(actor, sio)

        async def any_event(event: str, *args: Any) -> None:
            rec.frames.append((event, args))

        sio.on("*", any_event)
        await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        return rec

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=20)

    async def ok(self, event: str, data: Any) -> Any:
        reply = await self.call(event, data)
        assert isinstance(reply, dict) and reply.get("ok") is True, (self.actor, event, data, reply)
        return reply["data"]


def leak_problems(actor: Actor, frames: list[tuple[str, tuple[Any, ...]]]) -> list[str]:
    """Every frame that ``actor`` should never have received, described."""
    streams, orders = allowed_streams(actor), allowed_orders(actor)
    problems: list[str] = []
    for event, args in frames:
        bad = None
        if len(args) != 1 or not isinstance(args[0], dict):
            bad = "not one object argument"
        else:
            data = args[0]
            if event == "welcome":
                if data.get("user") != actor.sub or data.get("role") != actor.role:
                    bad = "welcome for someone else"
            elif event in ("chat.message", "notification", "chat.read", "chat.typing", "notify.badge"):
                stream = data.get("stream")
                if stream not in streams:
                    bad = f"stream {stream!r} is not visible to {actor.sub}"
                elif event == "chat.message":
                    if FOREIGN_MARK in str(data.get("text")):
                        bad = "a refused message was delivered"
                    elif not author_is_party(stream, data):
                        bad = "a message by a non-party was delivered"
                elif event == "chat.read" and data.get("party") not in chat_parties(stream):
                    bad = f"read receipt of non-party {data.get('party')!r}"
                elif event == "chat.typing" and not typist_is_party(stream, data):
                    bad = f"typing of non-party {data.get('user')!r}"
            elif event == "order.updated":
                order_id = (data.get("order") or {}).get("order_id")
                if order_id not in orders:
                    bad = f"order {order_id!r} is not visible to {actor.sub}"
            else:
                bad = "unexpected event"
        if bad is not None:
            problems.append(f"{actor.sub} got {event} {args!r}: {bad}")
    return problems


def author_is_party(stream: str, frame: dict[str, Any]) -> bool:
    author, role = frame.get("author"), frame.get("author_role")
    if role == "staff":
        return stream.startswith("chat:b:") and STAFF.get(str(author)) == stream.split(":")[2]
    return f"user:{author}" in chat_parties(stream)


def typist_is_party(stream: str, frame: dict[str, Any]) -> bool:
    return author_is_party(stream, {"author": frame.get("user"), "author_role": frame.get("role")})


# ---------------------------------------------------------------- the scenario


class Services:
    """The service API over one HTTP session."""

    def __init__(self, hub: Any, http: aiohttp.ClientSession) -> None:
        self._hub = hub
        self._http = http
        self._auth = {"Authorization": f"Bearer {hub.token('service', 'svc-authz')}"}

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        async with self._http.post(self._hub.url + path, json=body, headers=self._auth) as resp:
            payload = await resp.json(content_type=None)
            assert resp.status == 200, (path, body, resp.status, payload)
            return payload


async def seed(hub: Any, api: Services) -> None:
    """Orders, deliveries and conversations, written before the recording clients connect."""
    for order_id, shopper, boutique, _driver in ORDERS:
        await api.post(
            "/api/v1/events",
            {
                "type": "order.created",
                "event_id": f"ev-create-{order_id}",
                "order_id": order_id,
                "shopper_id": shopper,
                "boutique_id": boutique,
                "total_cents": 4200,
                "currency": "KES",
            },
        )
    for order_id, _s, _b, driver in ORDERS:
        first = FORMER_DRIVER if order_id == REASSIGNED_ORDER else driver
        if first is not None:
            await api.post(
                "/api/v1/events",
                {
                    "type": "delivery.assigned",
                    "event_id": f"ev-assign-{order_id}",
                    "order_id": order_id,
                    "driver_id": first,
                },
            )

    seeders: dict[str, StreamClient] = {}

    async def client(actor: Actor) -> StreamClient:
        if actor.sub not in seeders:
            c = StreamClient(hub.url, hub.token(actor.role, actor.sub, boutique=actor.boutique))
            await c.connect(sync=False)
            seeders[actor.sub] = c
        return seeders[actor.sub]

    try:
        for i, shopper in enumerate(SHOPPERS):
            for boutique in (BOUTIQUES[i % 3], BOUTIQUES[(i + 1) % 3]):
                stream = f"chat:b:{boutique}:{shopper}"
                await (await client(Actor(shopper, "shopper"))).send(
                    stream, f"hello {boutique} from {shopper}"
                )
                await (await client(Actor(f"st-{boutique}-0", "staff", boutique))).send(stream, "welcome!")
        for order_id, shopper, _b, driver in ORDERS:
            first = FORMER_DRIVER if order_id == REASSIGNED_ORDER else driver
            if first is None:
                continue
            stream = f"chat:o:{order_id}"
            await (await client(Actor(shopper, "shopper"))).send(stream, f"where is {order_id}?")
            await (await client(Actor(first, "driver"))).send(stream, "on my way")
    finally:
        for c in seeders.values():
            await c.disconnect()
    # the reassignment: d0 took part in chat:o:o8 but must see nothing of it from now on
    await api.post(
        "/api/v1/events",
        {
            "type": "delivery.assigned",
            "event_id": f"ev-reassign-{REASSIGNED_ORDER}",
            "order_id": REASSIGNED_ORDER,
            "driver_id": ORDER_BY_ID[REASSIGNED_ORDER][3],
        },
    )


def forbidden_reply(reply: Any) -> bool:
    return (
        isinstance(reply, dict)
        and reply.get("ok") is False
        and "data" not in reply
        and isinstance(reply.get("error"), dict)
        and reply["error"].get("code") == 2003
        and reply["error"].get("name") == "forbidden"
        and reply["error"].get("temporary") is False
    )


@pytest.mark.asyncio
async def test_cross_tenant_matrix_is_refused_and_nothing_leaks(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory(rate_per_second=10000, rate_burst=10000, typing_interval=0.0)
    rng = random.Random(SEED)
    async with aiohttp.ClientSession() as http:
        api = Services(hub, http)
        await seed(hub, api)

        recorders: dict[str, Recorder] = {}
        try:
            for actor in ACTORS:
                token = hub.token(actor.role, actor.sub, boutique=actor.boutique)
                recorders[actor.sub] = await Recorder.connect(hub.url, token, actor)
            for rec in recorders.values():
                for order_id in sorted(allowed_orders(rec.actor)):
                    view = await rec.ok("order.watch", {"order_id": order_id})
                    assert view["order_id"] == order_id

            status_index = dict.fromkeys(ORDER_BY_ID, 0)
            done: Counter[str] = Counter()
            failures: list[str] = []

            async def legit(step: int) -> None:
                kind = rng.choice(("send", "send", "typing", "read", "status", "notify", "inbox_read"))
                rec = recorders[rng.choice(ACTORS).sub]
                if kind == "send":
                    await rec.ok(
                        "chat.send",
                        {
                            "stream": rng.choice(own_chats(rec.actor)),
                            "client_id": f"legit-{step}",
                            "text": f"legit message {step}",
                        },
                    )
                elif kind == "typing":
                    await rec.ok("chat.typing", {"stream": rng.choice(own_chats(rec.actor))})
                elif kind == "read":
                    await rec.ok(
                        "chat.read", {"stream": rng.choice(own_chats(rec.actor)), "seq": rng.randint(0, 9)}
                    )
                elif kind == "status":
                    order_id = rng.choice(sorted(ORDER_BY_ID))
                    if status_index[order_id] < len(STATUSES):
                        status = STATUSES[status_index[order_id]]
                        status_index[order_id] += 1
                        await api.post(
                            "/api/v1/events",
                            {
                                "type": "order.status_updated",
                                "event_id": f"ev-status-{step}",
                                "order_id": order_id,
                                "status": status,
                            },
                        )
                elif kind == "notify":
                    await api.post(
                        "/api/v1/notifications",
                        {
                            "user": rng.choice(USERS),
                            "category": "system",
                            "title": f"note {step}",
                            "id": f"note-{step}",
                        },
                    )
                else:
                    inbox = rng.choice(
                        sorted(s for s in allowed_streams(rec.actor) if s.startswith("inbox:"))
                    )
                    await rec.ok("notify.read", {"stream": inbox, "seq": rng.randint(0, 5)})
                done[f"legit:{kind}"] += 1

            kinds = (
                "chat.send",
                "chat.history",
                "catchup",
                "chat.read",
                "chat.typing",
                "order.watch",
                "notify.ack",
                "notify.read",
                "sync",
            )
            for step in range(OPERATIONS):
                actor = rng.choice(ACTORS)
                rec = recorders[actor.sub]
                foreign = sorted(set(UNIVERSE_STREAMS) - allowed_streams(actor))
                foreign_inboxes = [s for s in foreign if s.startswith("inbox:")]
                kind = rng.choice(kinds)
                stream = rng.choice(foreign_inboxes if kind.startswith("notify.") else foreign)
                if kind == "chat.send":
                    req: dict[str, Any] = {
                        "stream": stream,
                        "client_id": f"foreign-{step}",
                        "text": f"{FOREIGN_MARK} {step} by {actor.sub}",
                    }
                elif kind == "chat.history":
                    req = {"stream": stream, "limit": rng.randint(1, 500)}
                    if rng.random() < 0.5:
                        req["before"] = rng.randint(0, 10)
                elif kind == "catchup":
                    req = {"stream": stream, "after": rng.randint(0, 3), "limit": rng.randint(1, 500)}
                elif kind in ("chat.read", "notify.read"):
                    req = {"stream": stream, "seq": rng.randint(0, 10)}
                elif kind == "chat.typing":
                    req = {"stream": stream}
                elif kind == "order.watch":
                    req = {"order_id": rng.choice(sorted(set(UNIVERSE_ORDERS) - allowed_orders(actor)))}
                elif kind == "notify.ack":
                    req = {"stream": stream, "seqs": rng.sample(range(1, 8), rng.randint(1, 3))}
                else:
                    named = rng.sample(foreign, rng.randint(1, 6))
                    req = {"cursors": [{"stream": s, "seq": rng.randint(0, 3)} for s in named]}
                reply = await rec.call(kind, req)
                if kind == "sync":
                    ok = isinstance(reply, dict) and reply.get("ok") is True
                    listed = {s["stream"] for s in reply["data"]["streams"]} if ok else set()
                    if not ok or listed - allowed_streams(actor) or listed & set(named):
                        failures.append(f"step {step}: {actor.sub} sync {req} -> {reply}")
                elif not forbidden_reply(reply):
                    failures.append(f"step {step}: {actor.sub} {kind} {req} -> {reply}")
                done[kind] += 1
                if rng.random() < LEGIT_PROBABILITY:
                    await legit(step)

            assert not failures, f"{len(failures)} operations were not refused:\n" + "\n".join(failures[:20])
            assert sum(v for k, v in done.items() if not k.startswith("legit:")) == OPERATIONS
            assert all(done[k] > 50 for k in kinds), done

            # barrier: frames to one socket arrive in order, so once each socket has its final
            # notification, every frame published to it before has arrived too
            for actor in ACTORS:
                await api.post(
                    "/api/v1/notifications",
                    {"user": actor.sub, "category": "system", "title": "final", "id": f"final-{actor.sub}"},
                )
            async with asyncio.timeout(30):
                for rec in recorders.values():
                    while not any(
                        e == "notification" and a and a[0].get("id") == f"final-{rec.actor.sub}"
                        for e, a in rec.frames
                    ):
                        await asyncio.sleep(0.02)

            # the recording is not vacuous: legitimate live traffic reached the clients
            seen = Counter(e for rec in recorders.values() for e, _ in rec.frames)
            print("operations:", dict(done))
            print("frames received:", dict(seen))
            for event in (
                "welcome",
                "chat.message",
                "notification",
                "order.updated",
                "chat.typing",
                "chat.read",
                "notify.badge",
            ):
                assert seen[event] > 0, (event, seen)
            assert all(len(rec.frames) > 2 for rec in recorders.values())

            problems = [p for rec in recorders.values() for p in leak_problems(rec.actor, rec.frames)]
            assert not problems, f"{len(problems)} leaked frames:\n" + "\n".join(problems[:20])

            # no refused write reached the store: every chat stream, read by a party, holds no foreign text
            readers = {f"chat:b:{b}": recorders[f"st-{b}-0"] for b in BOUTIQUES}
            for stream in UNIVERSE_STREAMS:
                if stream.startswith("chat:b:") and ":b9:" not in stream:
                    reader = readers[stream.rsplit(":", 1)[0]]
                elif stream.startswith("chat:o:") and stream != "chat:o:o-none":
                    order = ORDER_BY_ID[stream.split(":")[2]]
                    reader = recorders[order[1]]
                    if order[3] is None:
                        assert forbidden_reply(await reader.call("chat.history", {"stream": stream}))
                        continue
                else:
                    continue
                page = await reader.ok("chat.history", {"stream": stream, "limit": 500})
                texts = [e["text"] for e in page["entries"]]
                assert not [t for t in texts if FOREIGN_MARK in t], (stream, texts)
        finally:
            for rec in recorders.values():
                if rec.sio.connected:
                    await rec.sio.disconnect()


@pytest.mark.asyncio
async def test_former_driver_sees_nothing_of_a_reassigned_order(hub_factory) -> None:  # type: ignore[no-untyped-def]
    """The reassigned order's chat is gone from the former driver's sync and chat.list, and refused."""
    hub = await hub_factory()
    async with aiohttp.ClientSession() as http:
        api = Services(hub, http)
        await seed(hub, api)
    former = StreamClient(hub.url, hub.token("driver", FORMER_DRIVER))
    current = StreamClient(hub.url, hub.token("driver", ORDER_BY_ID[REASSIGNED_ORDER][3]))
    await former.connect(sync=False)
    await current.connect(sync=False)
    try:
        stream = f"chat:o:{REASSIGNED_ORDER}"
        listed = {s["stream"] for s in (await former.ok("sync", {"cursors": []}))["streams"]}
        assert stream not in listed
        assert f"inbox:u:{FORMER_DRIVER}" in listed
        assert listed <= allowed_streams(Actor(FORMER_DRIVER, "driver"))
        conversations = (await former.ok("chat.list", {}))["conversations"]
        assert stream not in {c["stream"] for c in conversations}
        assert forbidden_reply(await former.call("catchup", {"stream": stream}))
        # the current driver may read the whole conversation, the former driver's message included
        page = await current.ok("catchup", {"stream": stream})
        assert [e["author"] for e in page["entries"]] == [ORDER_BY_ID[REASSIGNED_ORDER][1], FORMER_DRIVER]
    finally:
        await former.disconnect()
        await current.disconnect()


@pytest.mark.asyncio
async def test_new_driver_sync_lists_the_reassigned_order_chat(hub_factory) -> None:  # type: ignore[no-untyped-def]
    hub = await hub_factory()
    async with aiohttp.ClientSession() as http:
        await seed(hub, Services(hub, http))
    current = StreamClient(hub.url, hub.token("driver", ORDER_BY_ID[REASSIGNED_ORDER][3]))
    await current.connect(sync=False)
    try:
        stream = f"chat:o:{REASSIGNED_ORDER}"
        assert (await current.ok("catchup", {"stream": stream}))["head"] == 2
        listed = {s["stream"] for s in (await current.ok("sync", {"cursors": []}))["streams"]}
        conversations = {c["stream"] for c in (await current.ok("chat.list", {}))["conversations"]}
        assert stream in listed, listed
        assert stream in conversations, conversations
    finally:
        await current.disconnect()


@pytest.mark.asyncio
async def test_unassigned_driver_stops_receiving_order_updates(hub_factory) -> None:  # type: ignore[no-untyped-def]
    """A driver watching an order it is then taken off must not see the order's later updates."""
    hub = await hub_factory()
    async with aiohttp.ClientSession() as http:
        api = Services(hub, http)
        await api.post(
            "/api/v1/events",
            {
                "type": "order.created",
                "event_id": "ev-c",
                "order_id": "ox",
                "shopper_id": "shx",
                "boutique_id": "b0",
            },
        )
        await api.post(
            "/api/v1/events",
            {"type": "delivery.assigned", "event_id": "ev-a1", "order_id": "ox", "driver_id": "d0"},
        )
        former = StreamClient(hub.url, hub.token("driver", "d0"))
        shopper = StreamClient(hub.url, hub.token("shopper", "shx"))
        await former.connect(sync=False)
        await shopper.connect(sync=False)
        try:
            assert (await former.ok("order.watch", {"order_id": "ox"}))["driver_id"] == "d0"
            await shopper.ok("order.watch", {"order_id": "ox"})
            await api.post(
                "/api/v1/events",
                {"type": "delivery.assigned", "event_id": "ev-a2", "order_id": "ox", "driver_id": "d1"},
            )
            await api.post(
                "/api/v1/events",
                {
                    "type": "order.status_updated",
                    "event_id": "ev-s1",
                    "order_id": "ox",
                    "status": "picked_up",
                },
            )

            def updates(c: StreamClient) -> list[dict[str, Any]]:
                return [d["order"] for e, d in c.live if e == "order.updated"]

            await shopper.wait_for(
                lambda: any(o["status"] == "picked_up" for o in updates(shopper)), timeout=10
            )
            # barrier for the former driver's socket: a notification published after the status update
            await api.post(
                "/api/v1/notifications", {"user": "d0", "category": "system", "title": "t", "id": "bar"}
            )
            await former.wait_for(
                lambda: any(e == "notification" and d.get("id") == "bar" for e, d in former.live), timeout=10
            )
            assert [o for o in updates(former) if o["driver_id"] != "d0"] == []
            assert forbidden_reply(await former.call("order.watch", {"order_id": "ox"}))
        finally:
            await former.disconnect()
            await shopper.disconnect()
