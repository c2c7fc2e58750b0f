"""Inventory: stock per SKU whose version never goes backwards, watched live, with alerts.

State and log
    Each SKU of a boutique has a level and a version; every applied change raises the
    version by exactly one and is appended to the boutique's inventory stream
    (``inv:<boutique>``) as one entry. Both are written together by
    :meth:`storage.base.InventoryStore.commit_stock`, a compare-and-set on the version,
    so concurrent writers on any number of nodes serialize per SKU: a writer that loses
    re-reads and recomputes.

Idempotency and order
    A change is applied at most once per ``(boutique, event_id)``; a repeat reports
    ``duplicate`` and changes nothing. A change may carry its source's own ``version``
    (a shelf sensor, the platform's inventory service): it applies only when that
    version is above the last one applied from the same source, otherwise it is
    ``stale`` and ignored. So reordered updates never move a SKU back to an older
    reading. Changes without a source version (staff edits, relative adjustments) apply
    in arrival order. The source is set from the caller's credentials, never from the
    request: ``device:<id>`` for a device token, ``staff:<boutique>`` for staff, and
    ``service`` for the HTTP API and Kafka.

Watching
    Watchers join a room for the whole boutique or one per product, then read the
    current state; a change committed in between reaches them both ways, and clients
    keep, per SKU, the highest version they saw. Every live ``stock`` frame is a
    durable entry (stream, seq, epoch), so ``catchup`` on the stream also works.

Alerts
    Low stock uses hysteresis: when the level falls to the SKU's threshold or below,
    the boutique's staff inbox gets one notification and the SKU is marked ``low``;
    it re-arms only once the level is back at ``clear`` or above. Back in stock: when
    a SKU goes from 0 to a positive level, every shopper who wishlisted it is notified.
    Alerts are decided in the same commit as the change (the entry records them), and
    their notification ids derive from the event id, so a retried event redoes them
    without duplicates.
"""

from __future__ import annotations

from hub.auth import Principal
from hub.domains.access import can_view_stock, forbidden
from hub.domains.entries import StockPayload, encode_payload, stock_frame, stock_payload
from hub.domains.notifications import NotificationService
from hub.domains.ports import Fanout, now_ms, sku_room, stock_room
from protocol import events
from protocol.codec import to_wire
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role, inventory
from protocol.messages import (
    MAX_PAGE,
    StockAdjust,
    StockEvent,
    StockItem,
    StockLevelsRequest,
    StockOutcome,
    StockSet,
    StockSnapshot,
    StockUpdateReply,
    StockUpdateRequest,
    StockWatchRequest,
    ThresholdRequest,
    Wishlist,
    WishlistItem,
    WishlistListRequest,
    WishlistRequest,
)
from storage.base import InventoryStore, StockRecord, StoredEntry, StreamStore, WishlistStore

LOW_STOCK = "low_stock"
BACK_IN_STOCK = "back_in_stock"
SERVICE_SOURCE = "service"
"""Source of changes from the HTTP API and Kafka."""
MAX_COMMIT_ATTEMPTS = 50
"""Compare-and-set rounds before a change on a very contended SKU gives up (UNAVAILABLE, retry)."""
MAX_WISHES = 500
"""Most wishlist entries one shopper may hold."""
WISHER_PAGE = 500


def default_clear(low: int) -> int:
    """Where a low-stock alert re-arms when the staff set no ``clear`` level."""
    return low + max(1, low // 5)


def item_of(record: StockRecord) -> StockItem:
    """The wire form of a SKU's state."""
    return StockItem(
        sku=record.sku,
        level=record.level,
        version=record.version,
        low=record.low,
        threshold=record.threshold,
        updated_ts=record.updated_ts,
    )


def next_state(
    current: StockRecord | None, event: StockEvent, source: str, ts: int
) -> tuple[StockRecord, StockPayload]:
    """The SKU's state after ``event`` and the entry recording it (pure; no stale check)."""
    before = current.level if current is not None else 0
    level = event.level if isinstance(event, StockSet) else max(0, before + event.delta)
    sources = dict(current.sources) if current is not None else {}
    if event.version is not None:
        sources[source] = event.version
    threshold = current.threshold if current is not None else None
    clear = current.clear if current is not None else None
    low = current.low if current is not None else False
    alerts: list[str] = []
    if threshold is None:
        low = False
    elif not low and level <= threshold:
        low = True
        alerts.append(LOW_STOCK)
    elif low and level >= (clear if clear is not None else default_clear(threshold)):
        low = False
    if before == 0 and level > 0:
        alerts.append(BACK_IN_STOCK)
    version = (current.version if current is not None else 0) + 1
    record = StockRecord(
        boutique_id=event.boutique_id,
        sku=event.sku,
        level=level,
        version=version,
        sources=sources,
        low=low,
        threshold=threshold,
        clear=clear,
        updated_ts=ts,
    )
    payload = StockPayload(
        boutique_id=event.boutique_id,
        sku=event.sku,
        level=level,
        version=version,
        delta=level - before,
        source=source,
        alerts=alerts,
    )
    return record, payload


def is_stale(current: StockRecord | None, event: StockEvent, source: str) -> bool:
    """Whether ``event``'s source version is not newer than the last applied from ``source``."""
    if event.version is None or current is None:
        return False
    return event.version <= current.sources.get(source, 0)


def source_of(principal: Principal) -> str:
    """Whose version counter a change's ``version`` belongs to."""
    if principal.role is Role.DEVICE:
        return f"device:{principal.sub}"
    if principal.role is Role.STAFF:
        return f"staff:{principal.boutique}"
    return SERVICE_SOURCE


class InventoryService:
    """Applies stock changes, answers stock and wishlist requests, raises stock alerts."""

    def __init__(
        self,
        stock: InventoryStore,
        streams: StreamStore,
        wishes: WishlistStore,
        notifications: NotificationService,
        fanout: Fanout,
    ) -> None:
        self._stock = stock
        self._streams = streams
        self._wishes = wishes
        self._notifications = notifications
        self._fanout = fanout

    # ------------------------------------------------------------------ changes

    async def update(self, principal: Principal, req: StockUpdateRequest) -> StockUpdateReply:
        """``stock.update``: staff and devices change their own boutique's stock.

        Every item is authorized before any is applied; items are applied in order.

        Raises:
            SokoError: FORBIDDEN for other roles or another boutique's SKU; UNAVAILABLE
                when a SKU stays too contended (items before it are applied; retrying the
                whole request is safe, applied items report ``duplicate``).
        """
        if principal.role not in (Role.STAFF, Role.DEVICE):
            raise forbidden("stock.update")
        for event in req.updates:
            if event.boutique_id != principal.boutique:
                raise forbidden(f"stock of boutique {event.boutique_id}")
        source = source_of(principal)
        return StockUpdateReply(results=[await self.apply(event, source) for event in req.updates])

    async def apply_service(self, event: StockEvent) -> StockOutcome:
        """A change from the HTTP API or Kafka (already authenticated as a service)."""
        return await self.apply(event, SERVICE_SOURCE)

    async def apply(self, event: StockEvent, source: str) -> StockOutcome:
        """Apply one change from ``source`` at most once; see the module docstring.

        Raises:
            SokoError: UNAVAILABLE after :data:`MAX_COMMIT_ATTEMPTS` lost compare-and-sets.
        """
        for _ in range(MAX_COMMIT_ATTEMPTS):
            current = await self._stock.stock(event.boutique_id, event.sku)
            if is_stale(current, event, source):
                assert current is not None
                original = await self._stock.stock_entry(event.boutique_id, event.event_id)
                if original is not None:
                    return await self._repeat(event, original, current)
                return _outcome(event, current, applied=False, duplicate=False, stale=True)
            ts = now_ms()
            record, payload = next_state(current, event, source, ts)
            commit = await self._stock.commit_stock(
                record,
                expected_version=current.version if current is not None else 0,
                event_id=event.event_id,
                payload=encode_payload(payload),
                ts=ts,
            )
            if commit.outcome == "committed":
                assert commit.entry is not None and commit.record is not None
                await self._effects(commit.entry, commit.record)
                return _outcome(event, commit.record, applied=True, duplicate=False, stale=False)
            if commit.outcome == "duplicate":
                assert commit.entry is not None and commit.record is not None
                return await self._repeat(event, commit.entry, commit.record)
        raise SokoError(
            ErrorCode.UNAVAILABLE, f"stock of {event.sku} is changing too fast to apply this now; retry"
        )

    async def _repeat(self, event: StockEvent, original: StoredEntry, now: StockRecord) -> StockOutcome:
        """A change seen before: redo its effects (idempotent), report the SKU as it is now."""
        await self._effects(original, now)
        return _outcome(event, now, applied=False, duplicate=True, stale=False)

    async def _effects(self, entry: StoredEntry, record: StockRecord) -> None:
        """Publish the change and raise the alerts it recorded. Safe to repeat."""
        change = stock_payload(entry)
        frame = to_wire(stock_frame(entry))
        rooms = [stock_room(change.boutique_id), sku_room(change.boutique_id, change.sku)]
        await self._fanout.publish(rooms, events.STOCK, frame)
        key = f"stock.{change.boutique_id}.{entry.client_id}"
        data = {"boutique_id": change.boutique_id, "sku": change.sku, "level": change.level}
        if LOW_STOCK in change.alerts:
            await self._notifications.notify_boutique(
                change.boutique_id,
                "stock",
                f"Low stock: {change.sku}",
                f"{change.level} left",
                {**data, "threshold": record.threshold},
                notification_id=f"{key}.low",
            )
        if BACK_IN_STOCK in change.alerts:
            await self._notify_wishers(change, key, data)

    async def _notify_wishers(self, change: StockPayload, key: str, data: dict[str, object]) -> None:
        after: str | None = None
        while True:
            users = await self._wishes.wishers(change.boutique_id, change.sku, after=after, limit=WISHER_PAGE)
            for user in users:
                await self._notifications.notify_user(
                    user,
                    "stock",
                    f"Back in stock: {change.sku}",
                    f"{change.level} available now",
                    dict(data),
                    notification_id=f"{key}.back.{user}",
                )
            if len(users) < WISHER_PAGE:
                return
            after = users[-1]

    async def set_threshold(self, principal: Principal, req: ThresholdRequest) -> StockItem:
        """``stock.threshold``: the boutique's staff set or remove a SKU's low-stock alert.

        The new threshold is judged from the next change on; setting it does not alert by itself.

        Raises:
            SokoError: FORBIDDEN unless staff of that boutique; BAD_REQUEST when ``clear`` is
                not above ``low``.
        """
        if principal.role is not Role.STAFF or principal.boutique != req.boutique_id:
            raise forbidden(f"stock thresholds of boutique {req.boutique_id}")
        if req.low is not None and req.clear is not None and req.clear <= req.low:
            raise SokoError(ErrorCode.BAD_REQUEST, "clear must be above low")
        if req.low is None and req.clear is not None:
            raise SokoError(ErrorCode.BAD_REQUEST, "clear needs a low threshold")
        record = await self._stock.set_threshold(req.boutique_id, req.sku, req.low, req.clear)
        return item_of(record)

    # ------------------------------------------------------------------ reading and watching

    def watch_rooms(self, principal: Principal, req: StockWatchRequest) -> list[str]:
        """The rooms ``stock.watch`` joins (and ``stock.unwatch`` leaves).

        Raises:
            SokoError: FORBIDDEN when the principal may not see this boutique's stock.
        """
        self._require_view(principal, req.boutique_id)
        if not req.skus:
            return [stock_room(req.boutique_id)]
        return [sku_room(req.boutique_id, sku) for sku in dict.fromkeys(req.skus)]

    async def levels(self, principal: Principal, req: StockLevelsRequest) -> StockSnapshot:
        """A page of current states (also the second half of ``stock.watch``).

        The stream head is read before the states, so ``catchup`` from it misses nothing.

        Raises:
            SokoError: FORBIDDEN when the principal may not see this boutique's stock.
        """
        self._require_view(principal, req.boutique_id)
        stream = inventory(req.boutique_id)
        head = await self._streams.head(stream)
        skus = list(dict.fromkeys(req.skus)) or None
        records = await self._stock.stock_page(
            req.boutique_id, skus=skus, after=req.after, limit=req.limit + 1
        )
        page = records[: req.limit]
        has_more = len(records) > req.limit
        return StockSnapshot(
            boutique_id=req.boutique_id,
            stream=stream,
            epoch=head.epoch if head is not None else "",
            head=head.head if head is not None else 0,
            items=[item_of(r) for r in page],
            has_more=has_more,
            next_after=page[-1].sku if has_more else None,
        )

    async def snapshot(self, principal: Principal, req: StockWatchRequest) -> StockSnapshot:
        """The first page of what ``stock.watch`` covers."""
        return await self.levels(
            principal, StockLevelsRequest(boutique_id=req.boutique_id, skus=req.skus, limit=MAX_PAGE)
        )

    def _require_view(self, principal: Principal, boutique_id: str) -> None:
        if not can_view_stock(principal, boutique_id):
            raise forbidden(f"stock of boutique {boutique_id}")

    # ------------------------------------------------------------------ wishlist

    async def wish(self, principal: Principal, req: WishlistRequest) -> Wishlist:
        """``wishlist.add``: idempotent; returns the wishlist.

        Raises:
            SokoError: FORBIDDEN for non-shoppers; LIMIT_EXCEEDED beyond :data:`MAX_WISHES`.
        """
        self._require_shopper(principal)
        held = await self._wishes.wishes_of(principal.sub, MAX_WISHES)
        known = any(w.boutique_id == req.boutique_id and w.sku == req.sku for w in held)
        if not known and len(held) >= MAX_WISHES:
            raise SokoError(ErrorCode.LIMIT_EXCEEDED, f"a wishlist holds at most {MAX_WISHES} products")
        await self._wishes.add_wish(principal.sub, req.boutique_id, req.sku, now_ms())
        return await self.wishlist(principal, WishlistListRequest())

    async def unwish(self, principal: Principal, req: WishlistRequest) -> Wishlist:
        """``wishlist.remove``: idempotent; returns the wishlist."""
        self._require_shopper(principal)
        await self._wishes.remove_wish(principal.sub, req.boutique_id, req.sku)
        return await self.wishlist(principal, WishlistListRequest())

    async def wishlist(self, principal: Principal, req: WishlistListRequest) -> Wishlist:
        """``wishlist.list``: newest first, each with the SKU's current level."""
        self._require_shopper(principal)
        items: list[WishlistItem] = []
        for wish in await self._wishes.wishes_of(principal.sub, req.limit):
            record = await self._stock.stock(wish.boutique_id, wish.sku)
            items.append(
                WishlistItem(
                    boutique_id=wish.boutique_id,
                    sku=wish.sku,
                    added_ts=wish.added_ts,
                    level=record.level if record is not None else None,
                )
            )
        return Wishlist(items=items)

    def _require_shopper(self, principal: Principal) -> None:
        if principal.role is not Role.SHOPPER:
            raise forbidden("wishlist (shoppers only)")


def _outcome(
    event: StockSet | StockAdjust, record: StockRecord, *, applied: bool, duplicate: bool, stale: bool
) -> StockOutcome:
    return StockOutcome(
        event_id=event.event_id,
        boutique_id=event.boutique_id,
        sku=event.sku,
        applied=applied,
        duplicate=duplicate,
        stale=stale,
        level=record.level,
        version=record.version,
    )
