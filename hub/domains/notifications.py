"""Notification inboxes: durable, at-least-once until acked, with badges and muting.

Each user has an inbox stream (``inbox:u:<user>``); each boutique has a shared staff
inbox (``inbox:b:<boutique>``). A notification is appended durably, then pushed live
to the recipient's sockets. Every connect pushes the entries that user has not acked
yet, so a notification is redelivered until a device acks it. Muted categories still
land in the inbox, with ``alert`` False.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ulid import ULID

from hub.auth import Principal
from hub.domains.access import AccessPolicy, forbidden
from hub.domains.entries import NotificationPayload, encode_payload, notification_frame
from hub.domains.ports import Fanout, now_ms, staff_room, user_room
from protocol import events
from protocol.codec import to_wire
from protocol.ids import Role, StreamKind, boutique_inbox, parse_stream, user_inbox
from protocol.messages import (
    BadgeFrame,
    NotificationCreate,
    NotificationCreated,
    NotificationFrame,
    NotifyAckRequest,
    NotifyReadRequest,
    PrefsReply,
    PrefsRequest,
)
from storage.base import CursorStore, PreferenceStore, StreamStore

SYSTEM_AUTHOR = "soko"
"""Author of every notification entry; with the notification id it forms the idempotency key."""

SendToConnection = Callable[[str, str, Any], Awaitable[None]]
"""Deliver one frame to one local connection: (conn_id, event, data)."""


class NotificationService:
    """Creates, delivers, acks and counts notifications."""

    def __init__(
        self,
        store: StreamStore,
        cursors: CursorStore,
        prefs: PreferenceStore,
        access: AccessPolicy,
        fanout: Fanout,
        redelivery_batch: int,
    ) -> None:
        self._store = store
        self._cursors = cursors
        self._prefs = prefs
        self._access = access
        self._fanout = fanout
        self._redelivery_batch = redelivery_batch

    async def notify_user(
        self,
        user: str,
        category: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
        notification_id: str | None = None,
    ) -> NotificationCreated:
        """Append to the user's inbox and push it live. A repeated ``notification_id`` has no new effect."""
        return await self._create(user_inbox(user), user, category, title, body, data or {}, notification_id)

    async def notify_boutique(
        self,
        boutique: str,
        category: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
        notification_id: str | None = None,
    ) -> NotificationCreated:
        """Append to the boutique's shared staff inbox and push it to its staff sockets."""
        return await self._create(
            boutique_inbox(boutique), None, category, title, body, data or {}, notification_id
        )

    async def create(self, req: NotificationCreate) -> NotificationCreated:
        """The ``POST /api/v1/notifications`` effect."""
        return await self.notify_user(req.user, req.category, req.title, req.body, req.data, req.id)

    async def _create(
        self,
        stream: str,
        user: str | None,
        category: str,
        title: str,
        body: str,
        data: dict[str, Any],
        notification_id: str | None,
    ) -> NotificationCreated:
        nid = notification_id or str(ULID())
        ref = parse_stream(stream)
        members = (f"user:{user}",) if user is not None else (f"boutique:{ref.boutique_id}",)
        result = await self._store.append(
            stream,
            author=SYSTEM_AUTHOR,
            client_id=nid,
            payload=encode_payload(NotificationPayload(category=category, title=title, body=body, data=data)),
            ts=now_ms(),
            members=members,
        )
        entry = result.entry
        if not result.duplicate:
            if user is not None:
                alert = category not in await self._prefs.muted(user)
                badge = await self._badge(stream, f"user:{user}")
                room = user_room(user)
            else:
                assert ref.boutique_id is not None
                alert, badge, room = (
                    True,
                    await self._badge(stream, f"boutique:{ref.boutique_id}"),
                    staff_room(ref.boutique_id),
                )
            frame = notification_frame(entry, alert=alert, badge=badge)
            await self._fanout.publish([room], events.NOTIFICATION, to_wire(frame))
        return NotificationCreated(
            id=entry.client_id,
            stream=entry.stream,
            seq=entry.seq,
            epoch=entry.epoch,
            duplicate=result.duplicate,
        )

    async def _badge(self, stream: str, party: str) -> int:
        positions = await self._cursors.read_positions(stream)
        return await self._cursors.count_after(stream, positions.get(party, 0))

    def inboxes_of(self, principal: Principal) -> list[str]:
        """The inbox streams a principal may read."""
        streams = [user_inbox(principal.sub)]
        if principal.role is Role.STAFF and principal.boutique is not None:
            streams.append(boutique_inbox(principal.boutique))
        return streams

    async def pending_for(self, principal: Principal) -> list[NotificationFrame]:
        """Notifications this user has not acked yet, per inbox in seq order (bounded per inbox)."""
        muted = set(await self._prefs.muted(principal.sub))
        frames: list[NotificationFrame] = []
        for stream in self.inboxes_of(principal):
            for entry in await self._cursors.unacked(stream, principal.sub, self._redelivery_batch):
                frame = notification_frame(entry)
                frame.alert = frame.category not in muted
                frames.append(frame)
        return frames

    async def ack(self, principal: Principal, req: NotifyAckRequest) -> None:
        """Stop redelivering these entries to this user."""
        await self._require_inbox(principal, req.stream)
        await self._cursors.ack(req.stream, principal.sub, req.seqs)

    async def mark_read(self, principal: Principal, req: NotifyReadRequest) -> BadgeFrame:
        """Advance the read position; the new badge goes to all the user's sockets too."""
        await self._require_inbox(principal, req.stream)
        head = await self._store.head(req.stream)
        await self._cursors.advance_read(req.stream, principal.party, min(req.seq, head.head if head else 0))
        badge = BadgeFrame(stream=req.stream, badge=await self._badge(req.stream, principal.party))
        ref = parse_stream(req.stream)
        room = (
            user_room(principal.sub)
            if ref.kind is StreamKind.USER_INBOX
            else staff_room(ref.boutique_id or "")
        )
        await self._fanout.publish([room], events.NOTIFY_BADGE, to_wire(badge))
        return badge

    async def badge(self, principal: Principal, stream: str) -> int:
        """Unread count of one inbox for this principal."""
        return await self._badge(stream, principal.party)

    async def preferences(self, principal: Principal, req: PrefsRequest) -> PrefsReply:
        """Read, or replace when given, the muted categories."""
        if req.muted is not None:
            await self._prefs.set_muted(principal.sub, list(req.muted))
        return PrefsReply(muted=await self._prefs.muted(principal.sub))

    async def _require_inbox(self, principal: Principal, stream: str) -> None:
        access = await self._access.stream_access(principal, stream, write=False)
        if access.kind not in (StreamKind.USER_INBOX, StreamKind.BOUTIQUE_INBOX):
            raise forbidden(stream)
