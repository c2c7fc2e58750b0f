"""Chat between shoppers and boutique staff, and between shoppers and drivers.

Messages are durable stream entries: ``send`` acks only after the store has the
entry, and a retried ``client_id`` returns the original ack. Typing indicators are
ephemeral and rate-limited per connection and stream.
"""

from __future__ import annotations

import time

from hub.auth import Principal
from hub.domains.access import AccessPolicy, forbidden
from hub.domains.entries import ChatPayload, chat_frame, encode_payload, frame_of
from hub.domains.ports import Fanout, now_ms
from protocol import events
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role, StreamKind
from protocol.messages import (
    MAX_TEXT_CHARS,
    ChatSend,
    ChatSent,
    Conversation,
    ConversationList,
    HistoryPage,
    HistoryRequest,
    ReadFrame,
    ReadRequest,
    TypingFrame,
    TypingRequest,
)
from storage.base import CursorStore, StreamHead, StreamStore

_CONTROL = {c: None for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A, 0x0D)}
"""C0 and C1 control characters and DEL, except tab, line feed and carriage return."""


def clean_text(text: str) -> str:
    """Strip C0/C1 control characters and DEL (keeping tab and newlines) and enforce the length cap.

    Text is stored and returned as inert text: it is never interpreted as markup here,
    and clients must render it as text.

    Raises:
        SokoError: TEXT_TOO_LONG beyond MAX_TEXT_CHARS, BAD_REQUEST when nothing is left.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise SokoError(ErrorCode.TEXT_TOO_LONG, f"text longer than {MAX_TEXT_CHARS} characters")
    cleaned = text.translate(_CONTROL)
    if not cleaned.strip():
        raise SokoError(ErrorCode.BAD_REQUEST, "text is empty")
    return cleaned


class ChatService:
    """Conversations: send, history, read receipts, typing and the conversation list."""

    def __init__(
        self,
        store: StreamStore,
        cursors: CursorStore,
        access: AccessPolicy,
        fanout: Fanout,
        typing_interval: float,
    ) -> None:
        self._store = store
        self._cursors = cursors
        self._access = access
        self._fanout = fanout
        self._typing_interval = typing_interval
        self._last_typing: dict[tuple[str, str], float] = {}

    async def send(self, principal: Principal, req: ChatSend) -> ChatSent:
        """Append a message and deliver it live to both parties' sockets.

        Raises:
            SokoError: FORBIDDEN, TEXT_TOO_LONG, BAD_REQUEST.
        """
        access = await self._access.stream_access(principal, req.stream, write=True)
        text = clean_text(req.text)
        result = await self._store.append(
            req.stream,
            author=principal.sub,
            client_id=req.client_id,
            payload=encode_payload(ChatPayload(author_role=str(principal.role), text=text)),
            ts=now_ms(),
            members=access.members,
        )
        entry = result.entry
        if entry.stream != req.stream:
            raise SokoError(ErrorCode.CONFLICT, "client_id was already used for another stream")
        if not result.duplicate:
            await self._fanout.publish(access.rooms, events.CHAT_MESSAGE, to_wire(chat_frame(entry)))
        return ChatSent(
            stream=entry.stream,
            seq=entry.seq,
            epoch=entry.epoch,
            ts=entry.ts,
            client_id=entry.client_id,
            duplicate=result.duplicate,
        )

    async def history(self, principal: Principal, req: HistoryRequest) -> HistoryPage:
        """Up to ``limit`` messages older than ``before``, ascending."""
        await self._access.stream_access(principal, req.stream, write=False)
        head = await self._store.head(req.stream)
        if head is None:
            return HistoryPage(stream=req.stream, epoch="", entries=[], has_more=False)
        entries = await self._store.read_before(req.stream, req.before, req.limit)
        return HistoryPage(
            stream=req.stream,
            epoch=head.epoch,
            entries=[frame_of(e) for e in entries],
            has_more=bool(entries) and entries[0].seq > 1,
        )

    async def mark_read(self, principal: Principal, req: ReadRequest) -> None:
        """Advance the caller's side's read position and tell both parties.

        Raises:
            SokoError: FORBIDDEN for streams that are not conversations (inboxes use
                ``notify.read``; inventory streams have no readers to tell).
        """
        access = await self._access.stream_access(principal, req.stream, write=False)
        if access.kind not in (StreamKind.BOUTIQUE_CHAT, StreamKind.ORDER_CHAT):
            raise forbidden(req.stream)
        head = await self._store.head(req.stream)
        seq = min(req.seq, head.head if head else 0)
        party = principal.party
        position = await self._cursors.advance_read(req.stream, party, seq)
        await self._fanout.publish(
            access.rooms,
            events.CHAT_READ_FRAME,
            to_wire(ReadFrame(stream=req.stream, party=party, seq=position)),
        )

    async def typing(self, principal: Principal, conn_id: str, req: TypingRequest) -> None:
        """Relay a typing indicator to the other sockets of the conversation.

        Indicators more frequent than the typing interval are dropped silently: they
        are ephemeral hints, not requests.
        """
        access = await self._access.stream_access(principal, req.stream, write=True)
        key = (conn_id, req.stream)
        now = time.monotonic()
        if now - self._last_typing.get(key, -1e9) < self._typing_interval:
            return
        self._last_typing[key] = now
        frame = TypingFrame(stream=req.stream, user=principal.sub, role=str(principal.role))
        await self._fanout.publish(access.rooms, events.CHAT_TYPING_FRAME, to_wire(frame), skip=conn_id)

    def forget_connection(self, conn_id: str) -> None:
        """Drop per-connection typing state when a socket goes away."""
        for key in [k for k in self._last_typing if k[0] == conn_id]:
            del self._last_typing[key]

    async def conversations(self, principal: Principal, limit: int) -> ConversationList:
        """The caller's conversations, newest activity first, with unread counts."""
        heads: list[StreamHead] = []
        if principal.role is Role.STAFF:
            heads = await self._store.streams_of(principal.party, "chat:b:", limit)
        elif principal.role is Role.SHOPPER:
            heads = await self._store.streams_of(principal.party, "chat:", limit)
        elif principal.role is Role.DRIVER:
            for stream in await self._access.driver_order_chats(principal.sub, limit):
                head = await self._store.head(stream)
                if head is not None:
                    heads.append(head)
            heads.sort(key=lambda h: h.last_ts, reverse=True)
        result: list[Conversation] = []
        for head in heads:
            try:
                access = await self._access.stream_access(principal, head.stream, write=False)
            except SokoError:
                continue  # e.g. a driver no longer assigned to the order
            positions = await self._cursors.read_positions(head.stream)
            mine = positions.get(principal.party, 0)
            peer = max((s for p, s in positions.items() if p != principal.party), default=0)
            if access.kind is StreamKind.BOUTIQUE_CHAT and principal.role is Role.STAFF:
                unread = await self._cursors.count_after(head.stream, mine, by=access.shopper_id)
            else:
                unread = await self._cursors.count_after(head.stream, mine, not_by=principal.sub)
            result.append(
                Conversation(
                    stream=head.stream,
                    epoch=head.epoch,
                    head=head.head,
                    last_ts=head.last_ts,
                    unread=unread,
                    read_seq=mine,
                    peer_read_seq=peer,
                )
            )
        return ConversationList(conversations=result)
