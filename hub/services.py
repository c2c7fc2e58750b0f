"""The domain services of one hub, wired to one store and one fan-out."""

from __future__ import annotations

from dataclasses import dataclass

from hub.config import Settings
from hub.domains.access import AccessPolicy
from hub.domains.chat import ChatService
from hub.domains.notifications import NotificationService
from hub.domains.orders import OrderService
from hub.domains.payments import PaymentService
from hub.domains.ports import Fanout
from hub.domains.presence import PresenceLedger, PresenceRegistry
from hub.domains.sync import SyncService
from storage.base import Store


@dataclass(frozen=True, slots=True)
class Services:
    access: AccessPolicy
    chat: ChatService
    notifications: NotificationService
    orders: OrderService
    payments: PaymentService
    sync: SyncService
    presence: PresenceRegistry


def build_services(store: Store, fanout: Fanout, presence: PresenceLedger, settings: Settings) -> Services:
    """Construct every domain service over ``store``, publishing through ``fanout``."""
    access = AccessPolicy(store)
    notifications = NotificationService(store, store, store, access, fanout, settings.redelivery_batch)
    payments = PaymentService(store, store, notifications, store, store)
    return Services(
        access=access,
        chat=ChatService(store, store, access, fanout, settings.typing_interval),
        notifications=notifications,
        orders=OrderService(store, store, notifications, payments, fanout),
        payments=payments,
        sync=SyncService(store, access, notifications),
        presence=PresenceRegistry(fanout, presence),
    )
