"""Stripe webhooks and payment events against real hubs.

Payloads are signed exactly as Stripe signs them (``t=<ts>,v1=<hex HMAC-SHA256(secret,
"<ts>.<payload>")>``) and posted as raw bytes without an Origin header, as Stripe does.
Effects are read back from the hub's store (inboxes are durable logs) or through a real
Socket.IO client. Effects are applied off the request path, so tests wait for the
payment intake to be drained (:func:`drained`) before counting; since the intake is
applied in order, an event posted after another one is a barrier for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hub.app import STORE, STRIPE
from hub.domains.payments import INTAKE_PARTY, INTAKE_STREAM
from hub.ingest.stripe import MAX_BODY_BYTES, PATH
from tests.support.hub import RunningHub
from tests.support.streamclient import StreamClient

SECRET = "whsec_test_0123456789abcdef"
PEOPLE = {"order_id": "o1", "shopper_id": "alice", "boutique_id": "b1"}
ORDER_CREATED = {"type": "order.created", "event_id": "c-o1", **PEOPLE}


def sign(payload: bytes, secret: str = SECRET, ts: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    t = int(time.time()) if ts is None else ts
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def stripe_event(
    event_id: str,
    event_type: str = "payment_intent.succeeded",
    metadata: dict[str, Any] | None = None,
    **fields: Any,
) -> bytes:
    """A Stripe event body (snapshot payload) around a PaymentIntent or Charge."""
    obj_type = "charge" if event_type.startswith("charge.") else "payment_intent"
    obj: dict[str, Any] = {
        "id": f"{obj_type[:2]}_{event_id}",
        "object": obj_type,
        "amount": 2599,
        "amount_received": 2599 if event_type == "payment_intent.succeeded" else 0,
        "currency": "eur",
        "metadata": PEOPLE if metadata is None else metadata,
        **fields,
    }
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


SIGNED = "signed"


async def deliver(hub: RunningHub, payload: bytes, signature: str | None = SIGNED) -> tuple[int, Any]:
    """POST ``payload`` as Stripe does (raw JSON, no Origin); ``signature`` None sends no header."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = sign(payload) if signature == SIGNED else signature
    async with (
        aiohttp.ClientSession() as http,
        http.post(hub.url + PATH, data=payload, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def stripe_hub(hub_factory: Any, **overrides: Any) -> RunningHub:
    hub: RunningHub = await hub_factory(stripe_webhook_secret=SECRET, **overrides)
    return hub


async def drained(hub: RunningHub) -> None:
    """Wait until every recorded payment event was applied (fails after 20 s)."""
    store = hub.app[STORE]
    async with asyncio.timeout(20):
        while await store.unacked(INTAKE_STREAM, INTAKE_PARTY, 1):
            await asyncio.sleep(0.02)


async def inbox(hub: RunningHub, stream: str) -> list[dict[str, Any]]:
    """The notifications in one inbox, oldest first: ``{id, category, title, body, data}`` each."""
    entries = await hub.app[STORE].read_after(stream, 0, 100)
    return [{"id": e.client_id, **json.loads(e.payload)} for e in entries]


def titles(entries: list[dict[str, Any]]) -> list[str]:
    return [e["title"] for e in entries]


def notes(client: StreamClient) -> list[dict[str, Any]]:
    """Notification frames a Socket.IO client was shown live."""
    return [d for ev, d in client.live if ev == "notification"]


async def metric(hub: RunningHub, name: str, outcome: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(hub.url + "/metrics") as resp:
        text = await resp.text()
    prefix = f'{name}{{outcome="{outcome}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def ok_data(status: int, body: Any) -> dict[str, Any]:
    assert status == 200 and body["ok"] is True, (status, body)
    data: dict[str, Any] = body["data"]
    return data


def error_of(status: int, body: Any, expected_status: int) -> dict[str, Any]:
    assert status == expected_status and body["ok"] is False, (status, body)
    error: dict[str, Any] = body["error"]
    return error


# ------------------------------------------------------------------------------------- success


@pytest.mark.asyncio
async def test_same_event_five_times_concurrently_has_exactly_one_effect(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    payload = stripe_event("evt_once")

    answers = await asyncio.gather(*(deliver(hub, payload) for _ in range(5)))

    datas = [ok_data(status, body) for status, body in answers]
    assert sorted(d["duplicate"] for d in datas) == [False, True, True, True, True]
    assert {d["event_id"] for d in datas} == {"evt_once"}
    await drained(hub)
    shopper = await inbox(hub, "inbox:u:alice")
    staff = await inbox(hub, "inbox:b:b1")
    assert [(n["id"], n["title"], n["category"]) for n in shopper] == [
        ("stripe.evt_once.s", "Payment received", "payment")
    ]
    receipt = {"order_id": "o1", "payment": "succeeded", "amount_cents": 2599, "currency": "EUR"}
    assert shopper[0]["data"] == receipt
    assert shopper[0]["body"] == "Order o1: 25.99 EUR"
    assert [(n["id"], n["title"], n["category"]) for n in staff] == [
        ("stripe.evt_once.b", "New paid order", "payment")
    ]
    assert await metric(hub, "soko_stripe_webhooks_total", "accepted") == 1
    assert await metric(hub, "soko_stripe_webhooks_total", "duplicate") == 4
    assert await metric(hub, "soko_payment_effects_total", "applied") == 1

    # A later redelivery, after the effect, is still a duplicate with no effect.
    assert ok_data(*await deliver(hub, payload))["duplicate"] is True
    await drained(hub)
    assert len(await inbox(hub, "inbox:u:alice")) == 1


@pytest.mark.asyncio
async def test_failed_and_refunded_notify_only_the_shopper(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    failed = stripe_event("evt_failed", "payment_intent.payment_failed", amount=1250)
    refunded = stripe_event("evt_refund", "charge.refunded", amount=1250, amount_refunded=500, currency="usd")

    assert ok_data(*await deliver(hub, failed))["duplicate"] is False
    assert ok_data(*await deliver(hub, refunded))["duplicate"] is False

    await drained(hub)
    shopper = await inbox(hub, "inbox:u:alice")
    assert [(n["id"], n["title"], n["data"]["amount_cents"], n["data"]["currency"]) for n in shopper] == [
        ("stripe.evt_failed.s", "Payment failed", 1250, "EUR"),
        ("stripe.evt_refund.s", "Payment refunded", 500, "USD"),
    ]
    assert {n["category"] for n in shopper} == {"payment"}
    assert await inbox(hub, "inbox:b:b1") == []


@pytest.mark.asyncio
async def test_a_shopper_never_sees_another_shoppers_payment(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    await hub.service("/api/v1/events", ORDER_CREATED)
    alice = StreamClient(hub.url, hub.token("shopper", "alice"))
    mallory = StreamClient(hub.url, hub.token("shopper", "mallory"))
    sam = StreamClient(hub.url, hub.token("staff", "sam", boutique="b2"))
    clients = {"alice": alice, "mallory": mallory, "sam": sam}
    for client in clients.values():
        await client.connect()
    try:
        # Metadata naming mallory and b2 for alice's order o1: the known order wins, nobody is notified.
        forged = stripe_event("evt_forged", metadata={**PEOPLE, "shopper_id": "mallory", "boutique_id": "b2"})
        mallorys = stripe_event(
            "evt_mallory", metadata={"order_id": "o2", "shopper_id": "mallory", "boutique_id": "b2"}
        )
        for payload in (forged, stripe_event("evt_alice"), mallorys):
            assert ok_data(*await deliver(hub, payload))["duplicate"] is False
        await drained(hub)
        # Barrier: a notification published after every payment effect; once a socket has it, it has them all.
        for user, client in clients.items():
            await hub.service(
                "/api/v1/notifications", {"user": user, "category": "system", "title": "barrier"}
            )
            await client.wait_for(
                lambda c=client: any(d["category"] == "system" for d in notes(c)), timeout=20
            )

        assert [d["id"] for d in notes(alice) if d["category"] == "payment"] == ["stripe.evt_alice.s"]
        assert [d["id"] for d in notes(mallory) if d["category"] == "payment"] == ["stripe.evt_mallory.s"]
        assert [d["id"] for d in notes(sam) if d["category"] == "payment"] == ["stripe.evt_mallory.b"]
        assert [n["id"] for n in await inbox(hub, "inbox:u:mallory") if n["category"] == "payment"] == [
            "stripe.evt_mallory.s"
        ]
        assert [n["id"] for n in await inbox(hub, "inbox:b:b2")] == ["stripe.evt_mallory.b"]
        assert await metric(hub, "soko_payment_effects_total", "mismatch") == 1
    finally:
        for client in clients.values():
            await client.disconnect()


# ------------------------------------------------------------------------------------ rejected


@pytest.mark.asyncio
async def test_tampered_body_is_rejected_with_no_effect(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    original = stripe_event("evt_tamper", amount_received=100)
    tampered = original.replace(b'"amount_received": 100', b'"amount_received": 1')
    assert tampered != original

    error = error_of(*await deliver(hub, tampered, signature=sign(original)), 400)
    assert (error["code"], error["name"], error["temporary"]) == (1000, "bad_request", False)
    error_of(*await deliver(hub, original, signature=sign(original, secret="whsec_other")), 400)
    error_of(*await deliver(hub, original, signature="t=1,v1=00"), 400)
    error_of(*await deliver(hub, original, signature=None), 400)

    # A valid event delivered afterwards is applied after anything recorded before it.
    ok_data(*await deliver(hub, stripe_event("evt_after")))
    await drained(hub)
    assert [n["id"] for n in await inbox(hub, "inbox:u:alice")] == ["stripe.evt_after.s"]
    assert await metric(hub, "soko_stripe_webhooks_total", "bad_signature") == 4


@pytest.mark.asyncio
async def test_stale_timestamp_is_rejected(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    payload = stripe_event("evt_stale")

    error = error_of(*await deliver(hub, payload, signature=sign(payload, ts=int(time.time()) - 301)), 400)
    assert error["code"] == 1000 and "timestamp" in error["message"].lower()

    # Within the tolerance the very same event is accepted: only its age made the difference.
    assert ok_data(*await deliver(hub, payload, signature=sign(payload, ts=int(time.time()) - 200)))
    await drained(hub)
    assert titles(await inbox(hub, "inbox:u:alice")) == ["Payment received"]


@pytest.mark.asyncio
async def test_missing_or_malformed_metadata_and_unknown_types_are_ignored(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    cases = [
        (stripe_event("evt_nometa", metadata={}), "ignored_metadata"),
        (stripe_event("evt_partial", metadata={"order_id": "o1", "shopper_id": "alice"}), "ignored_metadata"),
        (stripe_event("evt_badid", metadata={**PEOPLE, "shopper_id": "alice/../bob"}), "ignored_metadata"),
        (stripe_event("evt_operator", metadata={**PEOPLE, "order_id": "$gt"}), "ignored_metadata"),
        (stripe_event("evt_currency", currency="euro"), "ignored_payload"),
        (stripe_event("evt_negative", amount_received=-5), "ignored_payload"),
        (stripe_event("evt_customer", "customer.created"), "ignored_type"),
    ]
    for payload, outcome in cases:
        data = ok_data(*await deliver(hub, payload))
        assert data["ignored"] == outcome, (data, outcome)

    ok_data(*await deliver(hub, stripe_event("evt_barrier")))
    await drained(hub)
    assert [n["id"] for n in await inbox(hub, "inbox:u:alice")] == ["stripe.evt_barrier.s"]
    assert [n["id"] for n in await inbox(hub, "inbox:b:b1")] == ["stripe.evt_barrier.b"]
    assert await metric(hub, "soko_stripe_webhooks_total", "ignored_metadata") == 4
    assert await metric(hub, "soko_stripe_webhooks_total", "ignored_payload") == 2
    assert await metric(hub, "soko_stripe_webhooks_total", "ignored_type") == 1


@pytest.mark.asyncio
async def test_oversized_body_is_refused(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    payload = stripe_event("evt_big", description="x" * MAX_BODY_BYTES)
    error = error_of(*await deliver(hub, payload), 413)
    assert error["name"] == "frame_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        for start in range(0, len(payload), 16 * 1024):
            yield payload[start : start + 16 * 1024]

    headers = {"Content-Type": "application/json", "Stripe-Signature": sign(payload)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(hub.url + PATH, data=chunks(), headers=headers) as resp,
    ):
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert error_of(resp.status, await resp.json(), 413)["name"] == "frame_too_large"
    assert await hub.app[STORE].head(INTAKE_STREAM) is None


@pytest.mark.asyncio
async def test_without_a_secret_the_route_answers_503(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory()
    payload = stripe_event("evt_unconfigured")
    error = error_of(*await deliver(hub, payload), 503)
    assert error["name"] == "unavailable" and "SOKO_STRIPE_WEBHOOK_SECRET" in error["message"]
    assert await hub.app[STORE].head(INTAKE_STREAM) is None


# ------------------------------------------------------------------------------------ durability


@pytest.mark.asyncio
async def test_an_event_recorded_before_a_stop_is_applied_after_the_restart(hub_factory: Any) -> None:
    first = await stripe_hub(hub_factory)
    # Stop the worker (what a crash right after the 2xx amounts to): the route still records.
    await first.app[STRIPE].close()
    assert ok_data(*await deliver(first, stripe_event("evt_crash")))["duplicate"] is False
    assert await inbox(first, "inbox:u:alice") == []
    await first.stop()

    second = await stripe_hub(hub_factory)
    await drained(second)
    assert [n["id"] for n in await inbox(second, "inbox:u:alice")] == ["stripe.evt_crash.s"]
    assert [n["id"] for n in await inbox(second, "inbox:b:b1")] == ["stripe.evt_crash.b"]
    # Stripe redelivering it after the restart changes nothing.
    assert ok_data(*await deliver(second, stripe_event("evt_crash")))["duplicate"] is True


# ------------------------------------------------------------------------------ service events


@pytest.mark.asyncio
async def test_payment_completed_through_the_events_api(hub_factory: Any) -> None:
    hub: RunningHub = await hub_factory()
    await hub.service("/api/v1/events", ORDER_CREATED)
    paid = {"type": "payment.completed", "event_id": "p-o1", "order_id": "o1", "amount_cents": 4200}
    paid["currency"] = "KES"

    assert await hub.service("/api/v1/events", paid) == {"event_id": "p-o1", "duplicate": False}
    assert await hub.service("/api/v1/events", paid) == {"event_id": "p-o1", "duplicate": True}

    receipts = [n for n in await inbox(hub, "inbox:u:alice") if n["category"] == "payment"]
    assert [(n["id"], n["title"], n["data"]["amount_cents"], n["data"]["currency"]) for n in receipts] == [
        ("p-o1.s", "Payment received", 4200, "KES")
    ]
    staff = [n for n in await inbox(hub, "inbox:b:b1") if n["category"] == "payment"]
    assert [(n["id"], n["title"]) for n in staff] == [("p-o1.b", "New paid order")]
    order = await hub.app[STORE].get_order("o1")
    assert order is not None and order.status == "created"  # a payment never moves the status

    token = hub.token("service", "svc-test")
    unknown_order = {**paid, "event_id": "p-o2", "order_id": "o2"}
    status, body = await hub.post("/api/v1/events", unknown_order, token=token)
    assert status == 404 and body["error"]["name"] == "not_found"
    for bad in ({"currency": "kes"}, {"amount_cents": -1}, {"currency": None}):
        status, body = await hub.post("/api/v1/events", {**paid, "event_id": "p-bad", **bad}, token=token)
        assert status == 400 and body["ok"] is False, (bad, body)


@pytest.mark.asyncio
async def test_a_large_event_within_the_cap_is_read_whole(hub_factory: Any) -> None:
    hub = await stripe_hub(hub_factory)
    payload = stripe_event("evt_large", description="x" * (MAX_BODY_BYTES - 2048))
    assert MAX_BODY_BYTES - 4096 < len(payload) <= MAX_BODY_BYTES
    assert ok_data(*await deliver(hub, payload))["duplicate"] is False


@pytest.mark.asyncio
async def test_on_mongodb_duplicates_collapse_and_a_recorded_event_survives_a_restart(
    hub_factory: Any, mongo_url: str
) -> None:
    first = await stripe_hub(hub_factory, store=mongo_url)
    await first.app[STRIPE].close()
    payload = stripe_event("evt_mongo")
    answers = await asyncio.gather(*(deliver(first, payload) for _ in range(5)))
    assert sorted(ok_data(*a)["duplicate"] for a in answers) == [False, True, True, True, True]
    await first.stop()

    second = await stripe_hub(hub_factory, store=mongo_url)
    await drained(second)
    assert [n["id"] for n in await inbox(second, "inbox:u:alice")] == ["stripe.evt_mongo.s"]
    assert [n["id"] for n in await inbox(second, "inbox:b:b1")] == ["stripe.evt_mongo.b"]
