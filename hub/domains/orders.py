"""Orders as the hub sees them: the facts authorization rests on.

Services report order events (HTTP now, Kafka later, through the same
:meth:`OrderService.apply`). ``payment.completed`` is handed to the payments domain
(:class:`~hub.domains.payments.PaymentService`), which owns what a payment does; it
never changes the order's status. Each event is applied at most once by ``event_id``:
its notifications carry ids derived from the event id, so a crash between the
effects and :meth:`mark_seen` followed by a retry has no duplicate effect.
A status never moves backwards through the lifecycle (cancelled is terminal);
a stale status is ignored and reported as such.

The assigned driver reports its own progress with ``delivery.update``
(:meth:`OrderService.delivery_update`): ``picked_up`` and ``delivered`` take the same
status path as a service's ``order.status_updated``; ``accepted`` is no status and is
remembered only as the shopper's notification, one per order and driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec

from hub.auth import Principal
from hub.domains.access import can_view_order, forbidden
from hub.domains.notifications import NotificationService
from hub.domains.payments import PaymentService
from hub.domains.ports import Fanout, now_ms, order_room, user_room
from protocol import events
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role
from protocol.messages import (
    DeliveryAssigned,
    DeliveryUpdate,
    DeliveryUpdated,
    EventAccepted,
    OrderCreated,
    OrderEvent,
    OrderList,
    OrderStatusUpdated,
    OrderUpdatedFrame,
    OrderView,
    PaymentCompleted,
)
from storage.base import EventLedger, OrderRecord, OrderStore, PlaceStore

ENDED = frozenset({"delivered", "cancelled"})


class OrderObserver(Protocol):
    """Told about order changes as they are applied (the location domain, for tracking)."""

    async def order_changed(self, order: OrderRecord) -> None:
        """After every stored change of ``order`` (created, status, driver)."""
        ...

    async def order_ended(self, order: OrderRecord) -> None:
        """Once ``order`` reached ``delivered`` or ``cancelled``; again if its event is retried."""
        ...


STATUS_RANK = {
    "created": 0,
    "confirmed": 1,
    "preparing": 2,
    "ready": 3,
    "picked_up": 4,
    "in_transit": 5,
    "delivered": 6,
    "cancelled": 7,
}

_SHOPPER_TEXT = {
    "confirmed": "Your order was confirmed",
    "preparing": "Your order is being prepared",
    "ready": "Your order is ready",
    "picked_up": "Your order was picked up",
    "in_transit": "Your order is on its way",
    "delivered": "Your order was delivered",
    "cancelled": "Your order was cancelled",
}


def driver_event_key(driver_id: str, event_id: str) -> str:
    """The ledger key of a driver's ``delivery.update``.

    Scoped to the driver, and disjoint from service event ids (ids contain no dots), so a
    driver can neither pre-empt a service's event nor another driver's by reusing its id.
    """
    return f"driver.{driver_id}.{event_id}"


def acceptance_id(order_id: str, driver_id: str) -> str:
    """The shopper's notification that ``driver_id`` accepted the order: one per order and driver."""
    return f"accepted.{order_id}.{driver_id}"


def view(order: OrderRecord) -> OrderView:
    """The wire form of an order."""
    return OrderView(
        order_id=order.order_id,
        shopper_id=order.shopper_id,
        boutique_id=order.boutique_id,
        status=order.status,
        driver_id=order.driver_id,
        updated_ts=order.updated_ts,
    )


class OrderService:
    """Applies order events and answers order queries with authorization."""

    def __init__(
        self,
        orders: OrderStore,
        ledger: EventLedger,
        notifications: NotificationService,
        payments: PaymentService,
        fanout: Fanout,
        places: PlaceStore,
        observer: OrderObserver,
    ) -> None:
        self._orders = orders
        self._places = places
        self._observer = observer
        self._ledger = ledger
        self._notifications = notifications
        self._payments = payments
        self._fanout = fanout

    async def apply(self, event: OrderEvent) -> EventAccepted:
        """Apply one order event exactly once per ``event_id``.

        Raises:
            SokoError: NOT_FOUND when a status, delivery or payment event names an unknown order.
        """
        if await self._ledger.seen(event.event_id):
            return EventAccepted(event_id=event.event_id, duplicate=True)
        if isinstance(event, OrderCreated):
            await self._created(event)
        elif isinstance(event, OrderStatusUpdated):
            await self._status(event)
        elif isinstance(event, DeliveryAssigned):
            await self._assigned(event)
        else:
            await self._paid(event)
        await self._ledger.mark_seen(event.event_id, now_ms())
        return EventAccepted(event_id=event.event_id, duplicate=False)

    async def _created(self, event: OrderCreated) -> None:
        existing = await self._orders.get_order(event.order_id)
        if existing is None:
            pickup = (
                (event.pickup.lat, event.pickup.lon)
                if event.pickup is not None
                else await self._places.boutique_location(event.boutique_id)
            )
            existing = await self._orders.upsert_order(
                OrderRecord(
                    order_id=event.order_id,
                    shopper_id=event.shopper_id,
                    boutique_id=event.boutique_id,
                    status="created",
                    driver_id=None,
                    updated_ts=now_ms(),
                    pickup=pickup,
                    dropoff=(event.dropoff.lat, event.dropoff.lon) if event.dropoff is not None else None,
                )
            )
        order = existing
        data = {"order_id": order.order_id, "status": order.status}
        await self._notifications.notify_user(
            order.shopper_id,
            "order",
            "Order placed",
            f"Order {order.order_id} was placed",
            data,
            notification_id=f"{event.event_id}.s",
        )
        await self._notifications.notify_boutique(
            order.boutique_id,
            "order",
            "New order",
            f"Order {order.order_id} was placed",
            data,
            notification_id=f"{event.event_id}.b",
        )
        await self._publish(order)

    async def _require(self, order_id: str) -> OrderRecord:
        order = await self._orders.get_order(order_id)
        if order is None:
            raise SokoError(ErrorCode.NOT_FOUND, f"unknown order {order_id}")
        return order

    async def _status(self, event: OrderStatusUpdated) -> None:
        await self._advance(await self._require(event.order_id), event.status, event.event_id)

    async def _advance(self, order: OrderRecord, status: str, key: str) -> tuple[OrderRecord, bool]:
        """Move ``order`` to ``status`` with its notifications (ids derived from ``key``).

        Returns the order afterwards and whether it moved: a status the order already
        reached or passed (or any after ``cancelled``) changes nothing.
        """
        if order.status == "cancelled" or STATUS_RANK[status] <= STATUS_RANK.get(order.status, -1):
            if order.status == status in ENDED:
                await self._observer.order_ended(order)  # a retry after a crash may have missed it
            return order, False  # stale or repeated: the order already moved past this status
        order = await self._orders.upsert_order(
            msgspec.structs.replace(order, status=status, updated_ts=now_ms())
        )
        data = {"order_id": order.order_id, "status": order.status}
        title = _SHOPPER_TEXT.get(status, f"Order {status}")
        category = "delivery" if status in ("picked_up", "in_transit", "delivered") else "order"
        await self._notifications.notify_user(
            order.shopper_id,
            category,
            title,
            f"Order {order.order_id}",
            data,
            notification_id=f"{key}.s",
        )
        if status == "cancelled":
            await self._notifications.notify_boutique(
                order.boutique_id,
                "order",
                "Order cancelled",
                f"Order {order.order_id}",
                data,
                notification_id=f"{key}.b",
            )
        await self._publish(order)
        if status in ENDED:
            await self._observer.order_ended(order)
        return order, True

    async def delivery_update(self, principal: Principal, req: DeliveryUpdate) -> DeliveryUpdated:
        """``delivery.update``: the order's assigned driver reports a step of the job.

        Applied at most once per ``(driver, event_id)`` (the ledger key
        :func:`driver_event_key`, marked after the effects, whose notification ids derive
        from it): a repeat answers ``duplicate=True`` with the current status and changes
        nothing. ``picked_up``/``delivered`` act exactly as ``order.status_updated``
        (rank rules, notifications, tracking end, geofences); ``accepted`` leaves the status
        alone and sends the shopper one ``delivery`` notification per order and driver
        (:func:`acceptance_id`), unless the order is already picked up or ended. A step the
        order already passed is not an error: ``applied=False``.

        Raises:
            SokoError: FORBIDDEN unless the caller is a driver and, for a known order, the
                one assigned to it; NOT_FOUND when a driver names an unknown order.
        """
        if principal.role is not Role.DRIVER:
            raise forbidden(f"delivery updates of order {req.order_id}")
        order = await self._require(req.order_id)
        if order.driver_id != principal.sub:
            raise forbidden(f"delivery updates of order {req.order_id}")
        key = driver_event_key(principal.sub, req.event_id)
        if await self._ledger.seen(key):
            return DeliveryUpdated(
                order_id=order.order_id, status=order.status, applied=False, duplicate=True
            )
        if req.step == "accepted":
            applied = await self._accepted(order, principal.sub)
        else:
            order, applied = await self._advance(order, req.step, key)
        await self._ledger.mark_seen(key, now_ms())
        return DeliveryUpdated(order_id=order.order_id, status=order.status, applied=applied, duplicate=False)

    async def _accepted(self, order: OrderRecord, driver_id: str) -> bool:
        """Tell the shopper that ``driver_id`` took the job; False when moot or already told."""
        if STATUS_RANK.get(order.status, -1) >= STATUS_RANK["picked_up"]:
            return False  # picked up, delivered or cancelled: past the point of accepting
        created = await self._notifications.notify_user(
            order.shopper_id,
            "delivery",
            "Your driver accepted the delivery",
            f"Order {order.order_id}",
            {"order_id": order.order_id, "driver_id": driver_id},
            notification_id=acceptance_id(order.order_id, driver_id),
        )
        return not created.duplicate

    async def _assigned(self, event: DeliveryAssigned) -> None:
        order = await self._require(event.order_id)
        previous = order.driver_id
        order = await self._orders.upsert_order(
            msgspec.structs.replace(order, driver_id=event.driver_id, updated_ts=now_ms())
        )
        if previous is not None and previous != event.driver_id:
            # The old driver loses the order: its sockets stop receiving the order's updates.
            await self._fanout.evict([order_room(order.order_id)], user_room(previous))
        data = {"order_id": order.order_id, "driver_id": event.driver_id}
        await self._notifications.notify_user(
            order.shopper_id,
            "delivery",
            "A driver is assigned",
            f"Order {order.order_id}",
            data,
            notification_id=f"{event.event_id}.s",
        )
        await self._notifications.notify_user(
            event.driver_id,
            "delivery",
            "New delivery job",
            f"Order {order.order_id}",
            data,
            notification_id=f"{event.event_id}.d",
        )
        await self._publish(order)

    async def _paid(self, event: PaymentCompleted) -> None:
        order = await self._require(event.order_id)
        await self._payments.completed(order, event.event_id, event.amount_cents, event.currency)

    async def _publish(self, order: OrderRecord) -> None:
        await self._observer.order_changed(order)
        frame = OrderUpdatedFrame(order=view(order))
        await self._fanout.publish([order_room(order.order_id)], events.ORDER_UPDATED, to_wire(frame))

    async def watchable(self, principal: Principal, order_id: str) -> OrderView:
        """The order, if ``principal`` may watch it.

        Raises:
            SokoError: FORBIDDEN, also for orders that do not exist.
        """
        order = await self._orders.get_order(order_id)
        if order is None or not can_view_order(principal, order):
            raise forbidden(f"order {order_id}")
        return view(order)

    async def revoked_watchers(self, order_id: str, watchers: Mapping[str, Principal]) -> list[str]:
        """The keys of ``watchers`` that may no longer watch the order (reassigned, or unknown).

        Used to re-check rooms after evictions may have been lost between nodes.
        """
        order = await self._orders.get_order(order_id)
        return [key for key, p in watchers.items() if order is None or not can_view_order(p, order)]

    async def list_for(self, principal: Principal, limit: int) -> OrderList:
        """The caller's own orders, newest first. Roles without own orders get an empty list."""
        if principal.role is Role.SHOPPER:
            found = await self._orders.orders_for(field="shopper_id", value=principal.sub, limit=limit)
        elif principal.role is Role.STAFF and principal.boutique is not None:
            found = await self._orders.orders_for(field="boutique_id", value=principal.boutique, limit=limit)
        elif principal.role is Role.DRIVER:
            found = await self._orders.orders_for(field="driver_id", value=principal.sub, limit=limit)
        else:
            found = []
        return OrderList(orders=[view(o) for o in found])
