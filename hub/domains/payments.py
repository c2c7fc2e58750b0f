"""Payments: what a paid, failed or refunded payment does, and a durable intake for payment events.

Effects of one payment event, each at most once per event key (the store's
:class:`~storage.base.EventLedger` plus notification ids derived from the key, so a
crash between the effects and the ledger write followed by a retry duplicates nothing):

- ``succeeded``: a receipt to the shopper's inbox (category ``payment``) and a
  "new paid order" to the boutique's shared staff inbox.
- ``failed``: a notice to the shopper's inbox.
- ``refunded``: a notice to the shopper's inbox.

A payment never changes an order's status. The status lifecycle
(:data:`hub.domains.orders.STATUS_RANK`) is the boutique's fulfilment, reported by
order events; a payment is a separate fact, and Stripe delivers payment events in
any order relative to order events, so letting them move the status would race the
"never backwards" rule for no gain. The order room is therefore not told either:
:class:`~protocol.messages.OrderView` does not change.

When the hub knows the order, an event whose shopper or boutique disagrees with it
has no effect (outcome ``mismatch``): a receipt must never reach someone else's inbox.
When the hub does not know the order yet (the payment arrived before ``order.created``),
the event's own shopper and boutique are used.

The intake (:meth:`PaymentService.receive` / :meth:`PaymentService.process_pending`) is
an append-only stream in the store that no client can name (its id does not match
``STREAM_PATTERN``): ``receive`` is durable on return and dedupes by event key, and
``process_pending`` applies recorded events in order and then marks them done, so an
event recorded before a crash is applied after the restart. Several hub nodes may drain
the same intake at once; the idempotent effects make that harmless.
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from hub.domains.notifications import NotificationService
from hub.domains.ports import now_ms
from storage.base import CursorStore, EventLedger, OrderRecord, OrderStore, StreamStore

log = logging.getLogger(__name__)

PaymentKind = Literal["succeeded", "failed", "refunded"]
PaymentOutcome = Literal["applied", "duplicate", "mismatch", "unreadable"]
"""``applied``: effects done now; ``duplicate``: the key was applied before; ``mismatch``: see the
module doc; ``unreadable``: an intake entry that does not decode (skipped)."""

INTAKE_STREAM = "intake:payments"
"""The durable intake log. Not a client stream: it fails ``STREAM_PATTERN``, so no request can name it."""
_INTAKE_AUTHOR = "hub:payments"
"""Author of intake entries; the colon keeps it apart from every user id (which cannot contain one)."""
INTAKE_PARTY = "hub:payments"
"""The party whose acks mark intake entries as processed."""


class PaymentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One payment fact, already authenticated and validated by the edge that received it.

    ``key`` is the idempotency key, unique across sources (an edge prefixes its own ids,
    e.g. ``stripe.<event id>``). Ids match ``ID_PATTERN``; ``currency`` is ISO 4217 upper case.
    """

    key: str
    kind: PaymentKind
    order_id: str
    shopper_id: str
    boutique_id: str
    amount_cents: int
    currency: str


_RECEIPT_TITLE = {
    "succeeded": "Payment received",
    "failed": "Payment failed",
    "refunded": "Payment refunded",
}


_ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())  # noqa: SIM905
"""Currencies whose Stripe amounts are whole units (Stripe's list)."""
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def _money(amount: int, currency: str) -> str:
    """``amount`` in the currency's minor units (as Stripe counts them), for people to read."""
    if currency in _ZERO_DECIMAL:
        return f"{amount} {currency}"
    decimals = 3 if currency in _THREE_DECIMAL else 2
    return f"{amount / 10**decimals:.{decimals}f} {currency}"


class PaymentService:
    """Applies payment events once each, and keeps the durable intake they arrive through."""

    def __init__(
        self,
        ledger: EventLedger,
        orders: OrderStore,
        notifications: NotificationService,
        intake: StreamStore,
        intake_cursors: CursorStore,
    ) -> None:
        self._ledger = ledger
        self._orders = orders
        self._notifications = notifications
        self._intake = intake
        self._cursors = intake_cursors

    async def apply(self, event: PaymentEvent) -> PaymentOutcome:
        """Apply ``event`` unless its key was applied before. See the module doc for the effects."""
        if await self._ledger.seen(event.key):
            return "duplicate"
        order = await self._orders.get_order(event.order_id)
        people = (event.shopper_id, event.boutique_id)
        if order is not None and (order.shopper_id, order.boutique_id) != people:
            log.warning(
                "payment %s names shopper %s / boutique %s but order %s belongs to %s / %s; ignored",
                event.key,
                event.shopper_id,
                event.boutique_id,
                event.order_id,
                order.shopper_id,
                order.boutique_id,
            )
            outcome: PaymentOutcome = "mismatch"
        else:
            await self._effects(event)
            outcome = "applied"
        await self._ledger.mark_seen(event.key, now_ms())
        return outcome

    async def _effects(self, event: PaymentEvent) -> None:
        """The notifications of ``event``, without the ledger.

        Safe to repeat: notification ids are ``<key>.s`` (shopper) and ``<key>.b`` (boutique).
        """
        data = {
            "order_id": event.order_id,
            "payment": event.kind,
            "amount_cents": event.amount_cents,
            "currency": event.currency,
        }
        body = f"Order {event.order_id}: {_money(event.amount_cents, event.currency)}"
        await self._notifications.notify_user(
            event.shopper_id,
            "payment",
            _RECEIPT_TITLE[event.kind],
            body,
            data,
            notification_id=f"{event.key}.s",
        )
        if event.kind == "succeeded":
            await self._notifications.notify_boutique(
                event.boutique_id,
                "payment",
                "New paid order",
                body,
                data,
                notification_id=f"{event.key}.b",
            )

    async def completed(self, order: OrderRecord, event_id: str, amount_cents: int, currency: str) -> None:
        """The effects of a ``payment.completed`` event for a known order; the caller keeps the ledger."""
        await self._effects(
            PaymentEvent(
                key=event_id,
                kind="succeeded",
                order_id=order.order_id,
                shopper_id=order.shopper_id,
                boutique_id=order.boutique_id,
                amount_cents=amount_cents,
                currency=currency,
            )
        )

    async def receive(self, event: PaymentEvent) -> bool:
        """Record ``event`` in the durable intake; durable on return.

        Returns False when an event with the same key was recorded before (nothing new
        is recorded). Recording applies nothing: :meth:`process_pending` does.
        """
        result = await self._intake.append(
            INTAKE_STREAM,
            author=_INTAKE_AUTHOR,
            client_id=event.key,
            payload=msgspec.msgpack.encode(event),
            ts=now_ms(),
            members=(),
        )
        return not result.duplicate

    async def process_pending(self, limit: int) -> list[PaymentOutcome]:
        """Apply up to ``limit`` recorded, unprocessed events, oldest first, marking each processed.

        An event is marked processed only after :meth:`apply` returned, so if this raises
        (e.g. the store is down) the event stays pending and the next call retries it.
        An entry that cannot be decoded is logged and marked processed, so it cannot
        block the intake. Returns one outcome per entry taken, in order (fewer than ``limit``:
        nothing more is pending).
        """
        outcomes: list[PaymentOutcome] = []
        for entry in await self._cursors.unacked(INTAKE_STREAM, INTAKE_PARTY, limit):
            try:
                event = msgspec.msgpack.decode(entry.payload, type=PaymentEvent)
            except msgspec.DecodeError:
                log.error("payment intake entry %s (seq %d) unreadable; skipped", entry.client_id, entry.seq)
                outcomes.append("unreadable")
            else:
                outcomes.append(await self.apply(event))
            await self._cursors.ack(INTAKE_STREAM, INTAKE_PARTY, [entry.seq])
        return outcomes
