"""Catch-up: which streams a principal sees, where they stand, and pages of missed entries.

Recovery is all-or-nothing per stream. A cursor is valid when its epoch equals the
stream's epoch and its seq is not past the head (a cursor with no epoch is valid
only at seq 0). For an invalid cursor the reply says ``recovered: false`` and pages
restart at seq 0 of the current epoch. There is no time window: every entry stays
in the store.
"""

from __future__ import annotations

from hub.auth import Principal
from hub.domains.access import AccessPolicy
from hub.domains.entries import frame_of
from hub.domains.notifications import NotificationService
from protocol.errors import SokoError
from protocol.ids import Role
from protocol.messages import CatchupPage, CatchupRequest, StreamStatus, SyncReply, SyncRequest
from storage.base import StreamHead, StreamStore

MAX_VISIBLE_CONVERSATIONS = 1000


def cursor_valid(head: StreamHead | None, epoch: str | None, seq: int) -> bool:
    """Whether a client's cursor continues the server's stream."""
    if head is None:
        return seq == 0
    if epoch is None:
        return seq == 0
    return epoch == head.epoch and seq <= head.head


class SyncService:
    """Answers ``sync`` and ``catchup``."""

    def __init__(self, store: StreamStore, access: AccessPolicy, notifications: NotificationService) -> None:
        self._store = store
        self._access = access
        self._notifications = notifications

    async def visible_streams(self, principal: Principal) -> list[str]:
        """Inboxes plus conversations the principal may read, deduplicated."""
        streams = self._notifications.inboxes_of(principal)
        if principal.role is Role.DRIVER:
            streams += await self._access.driver_order_chats(principal.sub, MAX_VISIBLE_CONVERSATIONS)
        prefix = {Role.STAFF: "chat:b:", Role.SHOPPER: "chat:"}.get(principal.role)
        if prefix is not None:
            for head in await self._store.streams_of(principal.party, prefix, MAX_VISIBLE_CONVERSATIONS):
                try:
                    await self._access.stream_access(principal, head.stream, write=False)
                except SokoError:
                    continue
                streams.append(head.stream)
        return list(dict.fromkeys(streams))

    async def sync(self, principal: Principal, req: SyncRequest) -> SyncReply:
        """Status of every visible stream against the client's cursors.

        Cursors for streams the principal may not read are ignored: they are simply
        absent from the reply, and the client drops them.
        """
        cursors = {c.stream: c for c in req.cursors}
        statuses: list[StreamStatus] = []
        for stream in await self.visible_streams(principal):
            head = await self._store.head(stream)
            cursor = cursors.get(stream)
            epoch, seq = (cursor.epoch, cursor.seq) if cursor else (None, 0)
            valid = cursor_valid(head, epoch, seq)
            head_seq = head.head if head else 0
            statuses.append(
                StreamStatus(
                    stream=stream,
                    epoch=head.epoch if head else "",
                    head=head_seq,
                    behind=(head_seq > seq) if valid else head_seq > 0,
                    recovered=valid,
                    unread=await self._notifications.badge(principal, stream)
                    if stream.startswith("inbox:")
                    else 0,
                )
            )
        return SyncReply(streams=statuses)

    async def catchup(self, principal: Principal, req: CatchupRequest) -> CatchupPage:
        """One page of entries after the client's cursor (or from 0 when it is invalid).

        Raises:
            SokoError: FORBIDDEN or INVALID_ID for a stream the principal may not read.
        """
        await self._access.stream_access(principal, req.stream, write=False)
        head = await self._store.head(req.stream)
        valid = cursor_valid(head, req.epoch, req.after)
        if head is None:
            return CatchupPage(
                stream=req.stream, epoch="", recovered=valid, entries=[], next_after=0, head=0, has_more=False
            )
        after = req.after if valid else 0
        entries = await self._store.read_after(req.stream, after, req.limit)
        next_after = entries[-1].seq if entries else after
        return CatchupPage(
            stream=req.stream,
            epoch=head.epoch,
            recovered=valid,
            entries=[frame_of(e) for e in entries],
            next_after=next_after,
            head=head.head,
            has_more=next_after < head.head,
        )
