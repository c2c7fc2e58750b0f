"""Devices: shelf sensors (through their store's edge gateway) report their own health.

A gateway that sees a sensor go silent, report impossible readings or recover sends
``device.health``. The hub turns each report into one durable notification in the
boutique's shared staff inbox (``inbox:b:<boutique>``), category ``device``, pushed
live to the boutique's staff sockets and kept for ``sync``/``catchup`` like every
other inbox entry. Reports change no stock: the gateway never turns a bad reading
into a stock change, and the hub does not either.
"""

from __future__ import annotations

from hub.auth import Principal
from hub.domains.access import forbidden
from hub.domains.notifications import NotificationService
from protocol.ids import Role
from protocol.messages import DeviceHealthAccepted, DeviceHealthReport

CATEGORY = "device"
"""Notification category of every device-health notification (staff may mute it per user)."""

_TITLES = {
    "silent": "stopped reporting",
    "invalid": "reports impossible readings",
    "ok": "is working again",
}


def notification_id(boutique: str, event_id: str) -> str:
    """The inbox entry a report becomes: one per ``(boutique, event_id)``."""
    return f"device.{boutique}.{event_id}"


def title_of(req: DeviceHealthReport) -> str:
    """A title a shop assistant understands, e.g. "Shelf sensor a1/s1 (mug) stopped reporting"."""
    return f"Shelf sensor {req.shelf}/{req.sensor} ({req.sku}) {_TITLES[req.state]}"


class DeviceService:
    """Turns device health reports into staff notifications."""

    def __init__(self, notifications: NotificationService) -> None:
        self._notifications = notifications

    async def report(self, principal: Principal, req: DeviceHealthReport) -> DeviceHealthAccepted:
        """``device.health``: a device of the boutique reports a sensor's new health.

        The boutique's staff inbox gets exactly one ``device`` notification per
        ``(boutique_id, event_id)``, durable before this returns. A repeated ``event_id``
        creates nothing and pushes nothing; it answers ``duplicate=True`` with the
        original notification's id, whatever the repeat's other fields say. The
        notification's ``data`` is ``{shelf, sensor, sku, state, device, ts}``, where
        ``device`` is the reporting token's subject and ``ts`` the gateway's time.

        Raises:
            SokoError: FORBIDDEN unless the caller is a device token of ``req.boutique_id``.
        """
        if principal.role is not Role.DEVICE or principal.boutique != req.boutique_id:
            raise forbidden(f"device health of boutique {req.boutique_id}")
        created = await self._notifications.notify_boutique(
            req.boutique_id,
            CATEGORY,
            title_of(req),
            req.detail,
            {
                "shelf": req.shelf,
                "sensor": req.sensor,
                "sku": req.sku,
                "state": req.state,
                "device": principal.sub,
                "ts": req.ts,
            },
            notification_id=notification_id(req.boutique_id, req.event_id),
        )
        return DeviceHealthAccepted(notification_id=created.id, duplicate=created.duplicate)
