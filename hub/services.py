"""The domain services of one hub, wired to one store and one fan-out."""

from __future__ import annotations

from dataclasses import dataclass

from hub.config import Settings
from hub.domains.access import AccessPolicy
from hub.domains.chat import ChatService
from hub.domains.devices import DeviceService
from hub.domains.geo import FilterConfig
from hub.domains.inventory import InventoryService
from hub.domains.location import LocationConfig, LocationService, PositionBook
from hub.domains.notifications import NotificationService
from hub.domains.orders import OrderService
from hub.domains.payments import PaymentService
from hub.domains.ports import Fanout
from hub.domains.presence import PresenceLedger, PresenceRegistry
from hub.domains.sync import SyncService
from hub.metrics import HubMetrics
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
    inventory: InventoryService
    location: LocationService
    devices: DeviceService


def location_config(settings: Settings) -> LocationConfig:
    """The GPS filters, track sampling and ETA tunables from ``SOKO_GPS_*``."""
    return LocationConfig(
        filter=FilterConfig(
            max_accuracy_m=settings.gps_max_accuracy_m,
            min_distance_m=settings.gps_min_distance_m,
            min_period_s=settings.gps_min_period_s,
            max_speed_kmh=settings.gps_max_speed_kmh,
            heartbeat_s=settings.gps_heartbeat_s,
        ),
        position_ttl_s=settings.gps_position_ttl_s,
        track_sample_s=settings.gps_track_sample_s,
        future_skew_s=settings.gps_future_skew_s,
    )


def build_services(
    store: Store,
    fanout: Fanout,
    presence: PresenceLedger,
    positions: PositionBook,
    settings: Settings,
    metrics: HubMetrics,
) -> Services:
    """Construct every domain service over ``store``, publishing through ``fanout``."""
    access = AccessPolicy(store)
    notifications = NotificationService(store, store, store, access, fanout, settings.redelivery_batch)
    payments = PaymentService(store, store, notifications, store, store)
    location = LocationService(
        store,
        store,
        store,
        positions,
        notifications,
        fanout,
        location_config(settings),
        on_fix=lambda outcome: metrics.gps_fixes.labels(outcome).inc(),
    )
    return Services(
        access=access,
        chat=ChatService(store, store, access, fanout, settings.typing_interval),
        notifications=notifications,
        orders=OrderService(store, store, notifications, payments, fanout, store, location),
        payments=payments,
        sync=SyncService(store, access, notifications),
        presence=PresenceRegistry(fanout, presence),
        inventory=InventoryService(store, store, store, notifications, fanout),
        location=location,
        devices=DeviceService(notifications),
    )
