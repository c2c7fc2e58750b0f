"""Stable error codes.

A code's number and name never change once published; clients switch on the
number. ``temporary`` tells a client whether retrying the same request later can
succeed (True) or whether the request itself must change (False).
"""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.IntEnum):
    """Wire error codes. 1xxx: bad input, 2xxx: auth, 3xxx: limits, 4xxx: state, 5xxx: server."""

    BAD_REQUEST = 1000
    UNKNOWN_EVENT = 1001
    FRAME_TOO_LARGE = 1002
    INVALID_ID = 1003
    TEXT_TOO_LONG = 1004
    INVALID_POSITION = 1005
    """A coordinate, accuracy, speed or heading that is not finite or out of its range."""
    FUTURE_TIMESTAMP = 1006
    """A device timestamp ahead of the hub's clock by more than the allowed skew."""
    UNAUTHENTICATED = 2001
    TOKEN_EXPIRED = 2002
    FORBIDDEN = 2003
    ORIGIN_NOT_ALLOWED = 2004
    RATE_LIMITED = 3001
    SLOW_CONSUMER = 3002
    SERVER_SHUTDOWN = 3003
    LIMIT_EXCEEDED = 3004
    """A per-user or per-socket bound (watched products, wishlist size) would be exceeded."""
    NOT_FOUND = 4001
    CONFLICT = 4002
    INTERNAL = 5000
    UNAVAILABLE = 5001

    @property
    def temporary(self) -> bool:
        """Whether the same request may succeed if retried later."""
        return self in _TEMPORARY

    @property
    def slug(self) -> str:
        """Lower-case stable name, e.g. ``rate_limited``."""
        return self.name.lower()


_TEMPORARY = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.SLOW_CONSUMER,
        ErrorCode.SERVER_SHUTDOWN,
        ErrorCode.INTERNAL,
        ErrorCode.UNAVAILABLE,
        ErrorCode.TOKEN_EXPIRED,
    }
)


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The error payload: in a failed ack, an ``error`` event, or a ``session.closing`` frame."""

    code: int
    name: str
    message: str
    temporary: bool


class SokoError(Exception):
    """A domain failure that the edge turns into an :class:`ErrorBody`.

    Raised by domain code; transports catch it and never leak other exception text.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> ErrorBody:
        """The wire form of this error."""
        return ErrorBody(
            code=int(self.code), name=self.code.slug, message=self.message, temporary=self.code.temporary
        )
