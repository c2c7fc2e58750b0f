"""The uplink: drains the outbox to the hub over Socket.IO with the gateway's ``device`` token.

Guarantees:

- Order: items are sent in outbox order with one request in flight at a time: a run of
  consecutive stock events as one ``stock.update`` (up to ``batch``), a health event as
  one ``device.health``.
- Events are sent only on a connection whose ``welcome`` shows a ``device`` token of the
  outbox's boutique. Any other token (another boutique's, a staff token) is logged at
  ERROR and the link is closed before anything is sent.
- An item leaves the outbox only after the hub acknowledged it (``ok``: removed, the
  hub's ``duplicate``/``stale`` answers counted in the outbox totals, ``stale`` also
  logged at WARNING) or refused the request itself (``bad_request``, ``invalid_id`` or
  any other error that is neither ``temporary`` nor about the token: moved to the
  outbox's dead letters and logged at ERROR, so one poison batch cannot stall the
  queue). An error about the connection or the token (``unauthenticated``,
  ``token_expired``, ``forbidden``) keeps the items: the uplink reconnects.
- At least once, never applied twice: when an ack is lost (no ack in time, the socket
  dropped, the gateway died between the hub's commit and :meth:`Outbox.remove`), the
  same items, with the same event ids, are sent again. That is harmless: the hub applies
  a stock event at most once per ``(boutique, event_id)`` and answers ``duplicate``,
  ignores a source ``version`` not newer than the last it applied (``stale``), and
  makes one staff notification per health ``event_id``.
- Never dies silently: every failure is logged and retried after a capped, fully
  jittered backoff (:mod:`edge.backoff`: 0.5 s doubling to 30 s), reset by every
  acknowledged delivery. Temporary errors (rate limit, hub busy, connection closing) back
  off on the same connection; a lost connection, a missing ack or welcome, a refused
  token or a token of the wrong device reconnect. ``CancelledError`` propagates.
- ``token()`` is called at every connect, so a fixed or rotated token file takes effect
  at the next reconnect, and nothing is lost while the token is wrong.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import msgspec
import socketio

from edge.backoff import jittered_backoff
from edge.outbox import Outbox, OutboxItem
from protocol import events
from protocol.codec import to_wire
from protocol.errors import ErrorBody, ErrorCode
from protocol.messages import (
    DeviceHealthAccepted,
    DeviceHealthReport,
    StockSet,
    StockUpdateReply,
    StockUpdateRequest,
    Welcome,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for the hub to accept the Socket.IO connection, and then for its welcome."""


class LinkLostError(Exception):
    """The connection dropped, or an ack did not come in time: reconnect, then resend."""


class TokenRejectedError(Exception):
    """The token cannot carry this gateway's events: the hub refused it at the handshake
    (missing, invalid, expired) or refused an event as ``unauthenticated``,
    ``token_expired`` or ``forbidden``, or its ``welcome`` names another role or boutique.
    Reconnect after a backoff with ``token()`` read again; keep every item.

    ``level`` is the logging level the failure deserves.
    """

    def __init__(self, message: str, level: int = logging.ERROR) -> None:
        super().__init__(message)
        self.level = level


class _Link:
    """One Socket.IO connection to the hub (python-socketio's own reconnection is off)."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.lost = asyncio.Event()
        self._refusal: Any = None
        self._welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on(events.WELCOME, self._on_welcome)

    async def _on_disconnect(self, *_reason: Any) -> None:
        self.lost.set()

    async def _on_connect_error(self, *args: Any) -> None:
        self._refusal = args[0] if args else None

    async def _on_welcome(self, data: Any) -> None:
        if not self._welcome.done():
            self._welcome.set_result(data)

    async def welcome(self) -> Welcome:
        """The hub's ``welcome`` frame (the first it sends on a connection).

        Raises:
            LinkLostError: the socket dropped, no welcome within ``CONNECT_TIMEOUT_S``, or one
                not understood.
        """
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                data = await _unless_set(self.lost, self._welcome)
        except TimeoutError:
            raise LinkLostError(f"no welcome from the hub within {CONNECT_TIMEOUT_S:g} s") from None
        try:
            return msgspec.convert(data, Welcome)
        except msgspec.ValidationError as exc:
            raise LinkLostError(f"the hub's welcome was not understood: {exc}") from None

    async def connect(self, url: str, token: str) -> None:
        """Raises:
        TokenRejectedError: the hub refused the token.
        socketio.exceptions.ConnectionError: the hub could not be reached.
        """
        try:
            await self.sio.connect(
                url, auth={"token": token}, transports=["websocket"], wait_timeout=CONNECT_TIMEOUT_S
            )
        except socketio.exceptions.ConnectionError:
            error = self._refusal.get("data") if isinstance(self._refusal, dict) else None
            if isinstance(error, dict) and error.get("code") in _TOKEN_ERRORS:
                raise TokenRejectedError(
                    f"hub rejected the device token: {error.get('name')}: {error.get('message')}"
                ) from None
            raise

    async def call(self, event: str, data: Any, ack_timeout: float) -> Any:
        """Emit ``event`` and return the hub's ack.

        Raises:
            LinkLostError: the socket dropped before the ack, or no ack within ``ack_timeout``.
        """
        if self.lost.is_set() or not self.sio.connected:
            raise LinkLostError("not connected")
        try:
            return await _unless_set(self.lost, self.sio.call(event, data, timeout=ack_timeout))
        except socketio.exceptions.TimeoutError:
            raise LinkLostError(f"no ack for {event} within {ack_timeout:g} s") from None
        except socketio.exceptions.BadNamespaceError:
            raise LinkLostError("not connected") from None

    async def close(self) -> None:
        try:
            await self.sio.disconnect()
        except Exception as exc:  # closing a broken socket: nothing left to do
            log.debug("uplink: closing the socket: %s", exc)


_TOKEN_ERRORS = frozenset({ErrorCode.UNAUTHENTICATED, ErrorCode.TOKEN_EXPIRED, ErrorCode.FORBIDDEN})
"""Refusals about the connection or its token, not the request: keep the items, reconnect."""
_PAYLOAD_TYPES: dict[str, type[StockSet] | type[DeviceHealthReport]] = {
    "stock": StockSet,
    "health": DeviceHealthReport,
}


async def _unless_set(event: asyncio.Event, work: Awaitable[Any]) -> Any:
    """``await work``, but raise :class:`LinkLostError` as soon as ``event`` is set."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, waiter):
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
    if task.done() and not task.cancelled():
        return task.result()
    raise LinkLostError("the connection to the hub dropped")


class Uplink:
    """Drains an :class:`Outbox` to the hub at ``url``; see the module docstring.

    ``state`` is told ``"connecting"``, ``"offline"``, ``"draining <depth>"`` or ``"idle"``
    (everything delivered, waiting for new events) whenever that changes.
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        token: Callable[[], str],
        batch: int,
        state: Callable[[str], None] | None = None,
        call_timeout: float = 30.0,
    ) -> None:
        if not 1 <= batch <= 100:
            raise ValueError(f"batch must be in 1..100, not {batch}")
        self._outbox = outbox
        self._url = url
        self._token = token
        self._batch = batch
        self._on_state = state
        self._call_timeout = call_timeout
        self._state = ""
        self._failures = 0
        self.outcomes: Counter[str] = Counter()
        """Stock events the hub acknowledged, by outcome: ``applied``, ``duplicate``, ``stale``."""

    def _report(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self._on_state is not None:
                self._on_state(state)

    async def run(self) -> None:
        """Connect, drain, wait for more, reconnect after any failure; until cancelled."""
        while True:
            self._report("connecting")
            link = _Link()
            try:
                failure = await self._attempt(link)
            finally:
                await link.close()
            await self._outbox.record_uplink(False, failure)
            self._report("offline")
            self._failures += 1
            await jittered_backoff(self._failures)

    async def _attempt(self, link: _Link) -> str:
        """Connect and serve until the link fails; returns (and has logged) why it failed."""
        try:
            token = self._token()
        except Exception as exc:
            log.error("uplink: cannot read the device token: %s", exc)
            return f"cannot read the device token: {exc}"
        try:
            await link.connect(self._url, token)
            self._check(await link.welcome())
            log.info("uplink: connected to %s", self._url)
            await self._serve(link)
        except TokenRejectedError as exc:
            log.log(exc.level, "uplink: %s", exc)
            return str(exc)
        except LinkLostError as exc:
            log.warning("uplink: %s", exc)
            return str(exc)
        except (socketio.exceptions.ConnectionError, OSError) as exc:
            log.warning("uplink: cannot reach the hub at %s: %s", self._url, exc)
            return f"cannot reach the hub: {exc}"
        except Exception as exc:
            log.exception("uplink: unexpected failure")
            return f"unexpected failure: {exc!r}"

    def _check(self, welcome: Welcome) -> None:
        """Raises :class:`TokenRejectedError` unless ``welcome`` shows a device token of our boutique."""
        boutique = self._outbox.boutique
        if welcome.role != "device" or welcome.boutique != boutique:
            raise TokenRejectedError(
                f"the hub knows this token as {welcome.role} {welcome.user!r} of boutique "
                f"{welcome.boutique}, but this gateway is boutique {boutique}: sending nothing "
                f"until the token file holds a device token of {boutique}"
            )

    async def _serve(self, link: _Link) -> NoReturn:
        """Drain, then wait for new items, forever; raises :class:`LinkLostError` when the link fails."""
        while True:
            items = await self._outbox.peek(self._batch)
            if not items:
                self._failures = 0
                self._report("idle")
                await _unless_set(link.lost, self._outbox.wait_for_items())
                continue
            self._report(f"draining {await self._outbox.depth()}")
            await self._deliver(link, items)

    async def _deliver(self, link: _Link, items: list[OutboxItem]) -> None:
        """Send the run of items at the head of ``items`` and settle them by the hub's ack.

        Raises:
            LinkLostError: no ack (the items stay).
            TokenRejectedError: the hub refused the connection's token (the items stay).
        """
        head = items[0]
        if head.kind == "health":
            run, event = [head], events.DEVICE_HEALTH
        else:
            run = list(itertools.takewhile(lambda item: item.kind == "stock", items))
            event = events.STOCK_UPDATE
        decoded: list[StockSet | DeviceHealthReport] = []
        for item in run:
            try:
                decoded.append(msgspec.json.decode(item.payload, type=_PAYLOAD_TYPES[item.kind]))
            except msgspec.DecodeError as exc:
                if not decoded:  # the item at the head can never be sent
                    await self._refused([item], f"unreadable outbox payload: {exc}")
                    return
                break
        run = run[: len(decoded)]
        if event == events.STOCK_UPDATE:
            request: msgspec.Struct = StockUpdateRequest(
                updates=[d for d in decoded if isinstance(d, StockSet)]
            )
        else:
            request = decoded[0]
        reply = await link.call(event, to_wire(request), self._call_timeout)
        ok, data, error = _parse_ack(reply)
        if ok:
            duplicate, stale = self._count(event, data, decoded)
            await self._outbox.remove([item.id for item in run], duplicate=duplicate, stale=stale)
            await self._outbox.record_uplink(True)
            self._failures = 0  # a hub that throttles a long backlog must not push the waits to the cap
            return
        assert error is not None
        text = f"{event}: {error.name} ({error.code}): {error.message}"
        if error.code in _TOKEN_ERRORS:
            raise TokenRejectedError(
                f"the hub refused the token for {text}; keeping the {len(run)} event(s), "
                "reconnecting with the token read again",
                logging.WARNING if error.code == ErrorCode.TOKEN_EXPIRED else logging.ERROR,
            )
        if error.temporary:
            log.warning("uplink: the hub deferred %d event(s), will retry: %s", len(run), text)
            await self._outbox.record_uplink(False, text)
            self._failures += 1
            await jittered_backoff(self._failures)
            return
        await self._refused(run, text)

    async def _refused(self, run: list[OutboxItem], text: str) -> None:
        events_text = (
            ", ".join(item.event_id for item in run)
            if len(run) <= 3
            else f"{run[0].event_id} .. {run[-1].event_id}"
        )
        log.error(
            "uplink: the hub refused %d event(s); moved to the dead letters: %s (events %s)",
            len(run),
            text,
            events_text,
        )
        await self._outbox.reject([item.id for item in run], text)
        await self._outbox.record_uplink(False, text)

    def _count(self, event: str, data: Any, sent: list[StockSet | DeviceHealthReport]) -> tuple[int, int]:
        """``(duplicate, stale)`` among the events the hub acknowledged with ``data``; logs each stale one."""
        if event == events.DEVICE_HEALTH:
            try:
                return int(msgspec.convert(data, DeviceHealthAccepted).duplicate), 0
            except msgspec.ValidationError as exc:
                log.warning("uplink: unexpected %s ack data: %s", event, exc)
                return 0, 0
        try:
            reply = msgspec.convert(data, StockUpdateReply)
        except msgspec.ValidationError as exc:
            log.warning("uplink: unexpected %s ack data: %s", event, exc)
            return 0, 0
        versions = {event.event_id: event.version for event in sent if isinstance(event, StockSet)}
        outcomes: Counter[str] = Counter()
        for result in reply.results:
            outcome = "applied" if result.applied else "duplicate" if result.duplicate else "stale"
            outcomes[outcome] += 1
            if outcome == "stale":
                log.warning(
                    "uplink: the hub ignored a stale stock event for %s: version %s is not newer than "
                    "the hub's version %d (event %s)",
                    result.sku,
                    versions.get(result.event_id),
                    result.version,
                    result.event_id,
                )
        self.outcomes.update(outcomes)
        return outcomes["duplicate"], outcomes["stale"]


_UNREADABLE_ACK = ErrorBody(
    code=0, name="bad_ack", message="the hub's ack was not understood", temporary=True
)


def _parse_ack(reply: Any) -> tuple[bool, Any, ErrorBody | None]:
    """``(ok, data, error)`` of an ack envelope; an ack that is not one counts as a temporary error."""
    if isinstance(reply, dict):
        if reply.get("ok") is True:
            return True, reply.get("data"), None
        if reply.get("ok") is False:
            try:
                return False, None, msgspec.convert(reply.get("error"), ErrorBody)
            except msgspec.ValidationError:
                pass
    log.warning("uplink: unexpected ack %r", reply)
    return False, None, _UNREADABLE_ACK
