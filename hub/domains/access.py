"""Authorization: who may read or write which stream, and who may see which order.

Every decision is made from the verified token (role, sub, boutique) and the
order records that services report; nothing a client sends can widen it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.auth import Principal
from hub.domains.ports import staff_room, stock_room, user_room
from protocol.errors import ErrorCode, SokoError
from protocol.ids import Role, StreamKind, order_chat, parse_stream
from storage.base import OrderRecord, OrderStore


@dataclass(frozen=True, slots=True)
class StreamAccess:
    """Who a stream belongs to: parties that may list it and rooms that receive it live."""

    stream: str
    kind: StreamKind
    members: tuple[str, ...]
    rooms: tuple[str, ...]
    shopper_id: str | None


def can_view_order(principal: Principal, order: OrderRecord) -> bool:
    """Shoppers see their own orders, staff their boutique's, drivers those assigned to them."""
    role = principal.role
    if role in (Role.DISPATCHER, Role.SERVICE):
        return True
    if role is Role.SHOPPER:
        return order.shopper_id == principal.sub
    if role is Role.STAFF:
        return order.boutique_id == principal.boutique
    if role is Role.DRIVER:
        return order.driver_id == principal.sub
    return False


def can_view_stock(principal: Principal, boutique_id: str) -> bool:
    """Stock levels are shown to every signed-in shopper, driver and dispatcher, like a shop
    window; staff and devices work for one boutique and see only its stock."""
    if principal.role in (Role.STAFF, Role.DEVICE):
        return principal.boutique == boutique_id
    return True


def forbidden(what: str) -> SokoError:
    """The one error for every refusal, so a refusal never reveals whether the thing exists."""
    return SokoError(ErrorCode.FORBIDDEN, f"not allowed: {what}")


class AccessPolicy:
    """Resolves stream ids to their parties and checks a principal against them."""

    def __init__(self, orders: OrderStore) -> None:
        self._orders = orders

    async def driver_order_chats(self, driver_id: str, limit: int) -> list[str]:
        """Chat streams of the orders currently assigned to ``driver_id``, newest order first.

        Derived from the orders, not from stream membership, so a driver assigned to an
        order after its chat began still finds the chat.
        """
        orders = await self._orders.orders_for(field="driver_id", value=driver_id, limit=limit)
        return [order_chat(o.order_id) for o in orders]

    async def stream_access(self, principal: Principal, stream: str, *, write: bool) -> StreamAccess:
        """Return the stream's parties when ``principal`` may read it (or write, if ``write``).

        Raises:
            SokoError: INVALID_ID for a malformed stream id, FORBIDDEN otherwise. The
                same FORBIDDEN is raised for streams that do not exist.
        """
        try:
            ref = parse_stream(stream)
        except ValueError as exc:
            raise SokoError(ErrorCode.INVALID_ID, str(exc)) from None
        role, sub = principal.role, principal.sub
        if ref.kind is StreamKind.BOUTIQUE_CHAT:
            assert ref.boutique_id is not None and ref.shopper_id is not None
            allowed = (role is Role.SHOPPER and sub == ref.shopper_id) or (
                role is Role.STAFF and principal.boutique == ref.boutique_id
            )
            if not allowed:
                raise forbidden(stream)
            return StreamAccess(
                stream=stream,
                kind=ref.kind,
                members=(f"user:{ref.shopper_id}", f"boutique:{ref.boutique_id}"),
                rooms=(user_room(ref.shopper_id), staff_room(ref.boutique_id)),
                shopper_id=ref.shopper_id,
            )
        if ref.kind is StreamKind.ORDER_CHAT:
            assert ref.order_id is not None
            order = await self._orders.get_order(ref.order_id)
            if order is None or order.driver_id is None:
                raise forbidden(stream)
            allowed = (role is Role.SHOPPER and sub == order.shopper_id) or (
                role is Role.DRIVER and sub == order.driver_id
            )
            if not allowed:
                raise forbidden(stream)
            return StreamAccess(
                stream=stream,
                kind=ref.kind,
                members=(f"user:{order.shopper_id}", f"user:{order.driver_id}"),
                rooms=(user_room(order.shopper_id), user_room(order.driver_id)),
                shopper_id=order.shopper_id,
            )
        if ref.kind is StreamKind.USER_INBOX:
            assert ref.user_id is not None
            if sub != ref.user_id or write:
                raise forbidden(stream)
            return StreamAccess(
                stream=stream,
                kind=ref.kind,
                members=(f"user:{sub}",),
                rooms=(user_room(sub),),
                shopper_id=None,
            )
        assert ref.boutique_id is not None
        if ref.kind is StreamKind.INVENTORY:
            # Written only by the inventory domain (commit_stock), never through a stream write.
            if write or not can_view_stock(principal, ref.boutique_id):
                raise forbidden(stream)
            return StreamAccess(
                stream=stream,
                kind=ref.kind,
                members=(),
                rooms=(stock_room(ref.boutique_id),),
                shopper_id=None,
            )
        if role is not Role.STAFF or principal.boutique != ref.boutique_id or write:
            raise forbidden(stream)
        return StreamAccess(
            stream=stream,
            kind=ref.kind,
            members=(f"boutique:{ref.boutique_id}",),
            rooms=(staff_room(ref.boutique_id),),
            shopper_id=None,
        )
