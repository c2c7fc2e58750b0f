"""One Socket.IO connection to the hub, as the engine uses it.

Guarantees:

- python-socketio's own reconnection is off: the engine owns reconnecting (with backoff).
- Server frames are handed to ``on_frame(event, data)`` synchronously, in the order they
  arrived, and nothing else is done with them here (no awaits before the hand-over).
- :meth:`Link.call` returns the ack's ``data`` or raises: :class:`RequestRefused` for an
  ``ok: false`` ack, :class:`LinkLostError` when the socket drops before the ack or no ack
  comes within the timeout. A lost link is final: make a new :class:`Link` to reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import socketio

from protocol import events
from protocol.errors import ErrorBody, ErrorCode
from protocol.messages import Welcome

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for the hub to accept the connection, and then for its ``welcome``."""

TOKEN_ERRORS = frozenset({ErrorCode.UNAUTHENTICATED, ErrorCode.TOKEN_EXPIRED, ErrorCode.FORBIDDEN})
"""Refusals of the handshake that are about the token: the UI should offer a new one."""

FRAME_EVENTS = (
    events.CHAT_MESSAGE,
    events.CHAT_READ_FRAME,
    events.CHAT_TYPING_FRAME,
    events.NOTIFICATION,
    events.NOTIFY_BADGE,
    events.ORDER_UPDATED,
    events.SESSION_CLOSING,
    events.RESYNC,
    events.STOCK,
    events.TRACK_POSITION,
    events.TRACK_ENDED,
)
"""Server events handed to ``on_frame`` (``welcome`` is consumed by :meth:`Link.welcome`)."""


class LinkLostError(Exception):
    """The connection dropped, could not be made, or an ack did not come in time."""


class TokenRejectedError(Exception):
    """The hub refused the token at the handshake; ``error`` is its reason."""

    def __init__(self, error: ErrorBody) -> None:
        super().__init__(f"the hub refused the token: {error.name}: {error.message}")
        self.error = error


class RequestRefused(Exception):  # noqa: N818 (a refusal, not a bug)
    """The hub answered a request with ``ok: false``; ``error`` is its ``ErrorBody``."""

    def __init__(self, event: str, error: ErrorBody) -> None:
        super().__init__(f"{event}: {error.name} ({error.code}): {error.message}")
        self.event = event
        self.error = error


_BAD_ACK = ErrorBody(code=int(ErrorCode.INTERNAL), name="bad_ack", message="unreadable ack", temporary=True)


class Link:
    """A Socket.IO client for one connection attempt; see the module docstring."""

    def __init__(self, on_frame: Callable[[str, Any], None]) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.lost = asyncio.Event()
        self._refusal: Any = None
        self._welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on(events.WELCOME, self._on_welcome)
        for event in FRAME_EVENTS:
            self.sio.on(event, _handler(event, on_frame))

    def _on_disconnect(self, *_reason: Any) -> None:
        self.lost.set()

    def _on_connect_error(self, *args: Any) -> None:
        self._refusal = args[0] if args else None

    def _on_welcome(self, data: Any) -> None:
        if not self._welcome.done():
            self._welcome.set_result(data)

    async def connect(self, url: str, token: str) -> Welcome:
        """Connect to ``url`` with ``{"token": token}`` and return the hub's ``welcome``.

        Raises:
            TokenRejectedError: the hub refused the token.
            LinkLostError: the hub could not be reached, refused for another reason, or sent
                no understandable ``welcome`` within ``CONNECT_TIMEOUT_S``.
        """
        try:
            await self.sio.connect(
                url, auth={"token": token}, transports=["websocket"], wait_timeout=CONNECT_TIMEOUT_S
            )
        except socketio.exceptions.ConnectionError as exc:
            error = self._refusal.get("data") if isinstance(self._refusal, dict) else None
            if isinstance(error, dict):
                try:
                    body = msgspec.convert(error, ErrorBody)
                except msgspec.ValidationError:
                    body = None
                if body is not None and body.code in TOKEN_ERRORS:
                    raise TokenRejectedError(body) from None
                if body is not None:
                    raise LinkLostError(
                        f"the hub refused the connection: {body.name}: {body.message}"
                    ) from None
            raise LinkLostError(f"cannot reach the hub at {url}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise LinkLostError(f"cannot reach the hub at {url}: {exc}") from None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                data = await _unless_set(self.lost, self._welcome)
        except TimeoutError:
            raise LinkLostError(f"no welcome from the hub within {CONNECT_TIMEOUT_S:g} s") from None
        try:
            return msgspec.convert(data, Welcome)
        except msgspec.ValidationError as exc:
            raise LinkLostError(f"the hub's welcome was not understood: {exc}") from None

    async def call(self, event: str, payload: Any, ack_timeout: float) -> Any:
        """Emit ``event`` with ``payload`` (JSON-compatible) and return the ack's ``data``.

        Raises:
            RequestRefused: the ack was ``ok: false`` (or not an ack envelope: temporary ``bad_ack``).
            LinkLostError: not connected, the socket dropped before the ack, or no ack in ``ack_timeout``.
        """
        if self.lost.is_set() or not self.sio.connected:
            raise LinkLostError("not connected")
        try:
            reply = await _unless_set(self.lost, self.sio.call(event, payload, timeout=ack_timeout))
        except socketio.exceptions.TimeoutError:
            raise LinkLostError(f"no ack for {event} within {ack_timeout:g} s") from None
        except (socketio.exceptions.BadNamespaceError, socketio.exceptions.DisconnectedError):
            raise LinkLostError("not connected") from None
        if isinstance(reply, dict):
            if reply.get("ok") is True:
                return reply.get("data")
            if reply.get("ok") is False:
                try:
                    raise RequestRefused(event, msgspec.convert(reply.get("error"), ErrorBody))
                except msgspec.ValidationError:
                    pass
        raise RequestRefused(event, _BAD_ACK)

    async def close(self) -> None:
        """Disconnect (idempotent; errors of an already broken socket are ignored)."""
        self.lost.set()
        try:
            await self.sio.disconnect()
        except Exception as exc:  # closing a broken socket: nothing left to do
            log.debug("link: closing the socket: %s", exc)


def _handler(event: str, on_frame: Callable[[str, Any], None]) -> Callable[[Any], None]:
    def handle(data: Any = None) -> None:
        on_frame(event, data)

    return handle


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
