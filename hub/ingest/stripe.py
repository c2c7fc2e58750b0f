"""``POST /webhooks/stripe``: Stripe payment events, verified, recorded durably, applied off the request path.

Configuration. The signing secret is ``Settings.stripe_webhook_secret``
(``SOKO_STRIPE_WEBHOOK_SECRET``). Without it the route is still mounted and answers
503 ``unavailable`` naming the variable: Stripe retries 5xx answers for up to three
days, so events sent before the secret is configured still arrive, and the Stripe
dashboard shows why they failed (a 404 would look like a wrong URL). With a secret,
the ``stripe`` SDK must be installed; the hub refuses to start otherwise, naming the
extra (``soko-live[stripe]``). This module is the only one importing the SDK.

Verification. ``stripe.Webhook.construct_event`` over the raw body, tolerance
:data:`TOLERANCE_SECONDS`. A missing, wrong or stale signature, or a body that is not
an event, answers 400 ``bad_request`` (code 1000) and records nothing. A body above
:data:`MAX_BODY_BYTES` answers 413 ``frame_too_large`` unread.

Durability: record first, answer, then apply. An accepted event is appended to the
payments intake (:meth:`PaymentService.receive`, one store write, durable on return)
*before* the 2xx, and a background worker applies it afterwards. So the 2xx is fast
(no notification fan-out on the request path), and an event is never lost once Stripe
saw a 2xx: if the hub stops between the 2xx and the work, the event is still pending
in the store and the worker applies it when the hub starts again (or the sweep of any
other node sharing the store applies it sooner). If the hub stops before the record,
there was no 2xx and Stripe delivers again. If the store fails while recording, the
answer is 503 and Stripe delivers again.

Dedupe. The intake is keyed by ``stripe.<event.id>``: a redelivery (sequential or
concurrent) answers 200 with ``duplicate: true`` and records nothing; the effects are
also guarded by the event ledger, so two nodes draining the same intake duplicate
nothing. Order between events does not matter: each event's effect stands alone.

Mapping. ``payment_intent.succeeded`` (amount_received), ``payment_intent.payment_failed``
(amount) and ``charge.refunded`` (amount_refunded) find their people through the
object's ``metadata``: ``order_id``, ``shopper_id``, ``boutique_id``, each matching
``ID_PATTERN``. For ``charge.refunded`` that is the Charge's metadata, which Stripe
copies from the PaymentIntent when it creates the charge. Answered 200, ignored, logged
and counted, because a retry could never fix them: any other event type
(``ignored_type``), metadata missing or malformed (``ignored_metadata``), an amount or
currency that makes no sense (``ignored_payload``).

Answers use the service API envelope: ``{"ok": true, "data": {"event_id", "duplicate",
"ignored"}}`` or ``{"ok": false, "error": ErrorBody}``. Every delivery increments
``soko_stripe_webhooks_total{outcome}``.

Worker. One task per hub, no in-memory queue: it drains the intake in pages of
:data:`DRAIN_PAGE` when woken by an accepted event, at start, and every
:data:`SWEEP_SECONDS`. A failed pass is logged, counted and retried with capped
exponential backoff; the events stay pending meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from hub.domains.payments import PaymentEvent, PaymentKind, PaymentService
from hub.metrics import HubMetrics
from hub.transport.http import error_response, read_capped
from protocol.codec import encode_json
from protocol.errors import ErrorCode, SokoError
from protocol.messages import Id

log = logging.getLogger(__name__)

PATH = "/webhooks/stripe"
TOLERANCE_SECONDS = 300
"""Oldest signature timestamp accepted, in seconds (Stripe's default; limits replays)."""
MAX_BODY_BYTES = 256 * 1024
"""Largest body read; Stripe payment events are a few KiB."""
DRAIN_PAGE = 100
"""Intake entries applied per store read."""
SWEEP_SECONDS = 30.0
"""Longest wait of a recorded event when no delivery wakes this node (e.g. recorded by a node that died)."""
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0

_KINDS: dict[str, PaymentKind] = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.payment_failed": "failed",
    "charge.refunded": "refunded",
}
_AMOUNT_FIELD: dict[PaymentKind, Literal["amount_received", "amount", "amount_refunded"]] = {
    "succeeded": "amount_received",
    "failed": "amount",
    "refunded": "amount_refunded",
}

Cents = Annotated[int, msgspec.Meta(ge=0)]


class _Metadata(msgspec.Struct):
    """What the marketplace's checkout puts in the PaymentIntent's metadata (other keys are allowed)."""

    order_id: Id
    shopper_id: Id
    boutique_id: Id


class _Amounts(msgspec.Struct):
    currency: Annotated[str, msgspec.Meta(pattern="^[a-zA-Z]{3}$")]
    amount: Cents = 0
    amount_received: Cents = 0
    amount_refunded: Cents = 0


class _Verified(msgspec.Struct, frozen=True):
    """The parts of a verified Stripe event this module reads."""

    event_id: str
    type: str
    obj: dict[str, Any]


Verifier = Callable[[bytes, str | None], _Verified]


def _verifier(secret: str) -> Verifier:
    """Signature verification with the stripe SDK, imported here so it stays optional.

    Raises:
        ValueError: the SDK is not installed (with the install hint).
    """
    try:
        import stripe
    except ImportError as exc:
        raise ValueError(
            f"SOKO_STRIPE_WEBHOOK_SECRET is set but the stripe SDK is missing: "
            f"pip install 'soko-live[stripe]' ({exc})"
        ) from None

    def verify(body: bytes, header: str | None) -> _Verified:
        try:
            event: stripe.Event = stripe.Webhook.construct_event(
                body, header, secret, tolerance=TOLERANCE_SECONDS
            )
            obj: dict[str, Any] = event.data.object.to_dict()
            return _Verified(event_id=event.id, type=event.type, obj=obj)
        except stripe.SignatureVerificationError as exc:
            raise SokoError(ErrorCode.BAD_REQUEST, f"Stripe signature verification failed: {exc}") from None
        except (ValueError, AttributeError, KeyError):
            raise SokoError(ErrorCode.BAD_REQUEST, "signed body is not a Stripe event") from None

    return verify


class _IgnoredError(Exception):
    """A verified event that no retry could make applicable; answered 200 and counted."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


def _payment_event(verified: _Verified) -> PaymentEvent:
    """Map a verified Stripe event to a :class:`PaymentEvent`.

    Raises:
        _IgnoredError: the event type is not handled, or its metadata or amounts are unusable.
    """
    kind = _KINDS.get(verified.type)
    if kind is None:
        raise _IgnoredError("ignored_type", f"event type {verified.type!r} is not handled")
    try:
        meta = msgspec.convert(verified.obj.get("metadata") or {}, _Metadata, strict=True)
    except msgspec.ValidationError as exc:
        raise _IgnoredError("ignored_metadata", f"metadata: {exc}") from None
    try:
        amounts = msgspec.convert(verified.obj, _Amounts, strict=True)
        key = msgspec.convert(verified.event_id, Id)
    except msgspec.ValidationError as exc:
        raise _IgnoredError("ignored_payload", str(exc)) from None
    return PaymentEvent(
        key=f"stripe.{key}",
        kind=kind,
        order_id=meta.order_id,
        shopper_id=meta.shopper_id,
        boutique_id=meta.boutique_id,
        amount_cents=getattr(amounts, _AMOUNT_FIELD[kind]),
        currency=amounts.currency.upper(),
    )


def _ok(event_id: str, *, duplicate: bool = False, ignored: str | None = None) -> web.Response:
    data = {"event_id": event_id, "duplicate": duplicate, "ignored": ignored}
    return web.Response(body=encode_json({"ok": True, "data": data}), content_type="application/json")


class StripeWebhook:
    """The ``/webhooks/stripe`` route and the worker that applies what it records."""

    def __init__(self, secret: str, metrics: HubMetrics) -> None:
        """Raises ValueError when ``secret`` is set and the stripe SDK is missing."""
        self._verify = _verifier(secret) if secret else None
        self._metrics = metrics
        self._payments: PaymentService | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    def start(self, payments: PaymentService) -> None:
        """Bind the payments service and start the worker (which first drains what is pending)."""
        self._payments = payments
        self._wake.set()
        self._worker = asyncio.create_task(self._drain_forever(payments), name="stripe-intake")

    async def close(self) -> None:
        """Stop the worker. Events it has not applied stay pending and are applied after the next start.

        The route keeps recording until the store closes (then it answers 503), so a
        delivery racing shutdown is either recorded or retried by Stripe.
        """
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def handle(self, request: web.Request) -> web.Response:
        """One delivery from Stripe; see the module doc for every answer."""
        outcome, response = await self._answer(request)
        self._metrics.stripe_webhooks.labels(outcome).inc()
        return response

    async def _answer(self, request: web.Request) -> tuple[str, web.Response]:
        if self._verify is None:
            missing = "Stripe webhooks are not configured: set SOKO_STRIPE_WEBHOOK_SECRET"
            return "unconfigured", error_response(SokoError(ErrorCode.UNAVAILABLE, missing))
        payments = self._payments
        if payments is None:
            return "unavailable", error_response(SokoError(ErrorCode.UNAVAILABLE, "the hub is starting"))
        too_large = SokoError(ErrorCode.FRAME_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return "too_large", error_response(too_large)
        body = await read_capped(request, MAX_BODY_BYTES)
        if body is None:
            return "too_large", error_response(too_large)
        try:
            verified = self._verify(body, request.headers.get("Stripe-Signature"))
        except SokoError as exc:
            log.warning("rejected Stripe webhook: %s", exc.message)
            return "bad_signature", error_response(exc)
        try:
            event = _payment_event(verified)
        except _IgnoredError as ignored:
            log.warning("ignored Stripe event %s (%s): %s", verified.event_id, verified.type, ignored)
            return ignored.outcome, _ok(verified.event_id, ignored=ignored.outcome)
        try:
            recorded = await payments.receive(event)
        except Exception:
            log.exception("could not record Stripe event %s; Stripe will retry", verified.event_id)
            return "unavailable", error_response(SokoError(ErrorCode.UNAVAILABLE, "store unavailable; retry"))
        if recorded:
            self._wake.set()
            return "accepted", _ok(verified.event_id)
        return "duplicate", _ok(verified.event_id, duplicate=True)

    async def _drain_forever(self, payments: PaymentService) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SWEEP_SECONDS)
            self._wake.clear()
            try:
                while True:
                    outcomes = await payments.process_pending(DRAIN_PAGE)
                    for outcome in outcomes:
                        self._metrics.payment_effects.labels(outcome).inc()
                    if len(outcomes) < DRAIN_PAGE:
                        break
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                self._metrics.payment_intake_failures.inc()
                delay = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** min(failures, 10))
                log.exception("payment intake pass failed (%d in a row); retrying in %.1f s", failures, delay)
                self._wake.set()
                await asyncio.sleep(delay)
