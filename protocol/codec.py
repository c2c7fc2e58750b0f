"""Pure encode/decode between wire JSON-compatible values and Structs.

Decoding never raises anything but :class:`protocol.errors.SokoError`, whose code
says what was wrong (bad shape, bad id, too long). Encoding to bytes uses orjson.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import orjson

from protocol.errors import ErrorCode, SokoError
from protocol.ids import ID_CHARS

T = TypeVar("T")

_to_builtins_enc = msgspec.json.Encoder()


def decode_value(value: Any, kind: type[T]) -> T:
    """Convert an already-parsed JSON value (as Socket.IO hands it over) into ``kind``.

    Raises:
        SokoError: BAD_REQUEST for a wrong shape or type, INVALID_ID for an id or
            stream that does not match its pattern.
    """
    try:
        return msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        # msgspec names the failed regex; ids and stream ids share the id character class.
        code = ErrorCode.INVALID_ID if ID_CHARS in text else ErrorCode.BAD_REQUEST
        raise SokoError(code, text) from None


def decode_json(raw: bytes | str, kind: type[T]) -> T:
    """Parse JSON bytes (an HTTP body, a Kafka record) into ``kind``.

    Raises:
        SokoError: BAD_REQUEST when the bytes are not JSON or have the wrong shape,
            INVALID_ID as in :func:`decode_value`.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SokoError(ErrorCode.BAD_REQUEST, "body is not valid JSON") from None
    return decode_value(value, kind)


def to_wire(frame: msgspec.Struct | None) -> Any:
    """Convert a Struct to JSON-compatible builtins (dicts, lists, str, int...)."""
    if frame is None:
        return None
    return msgspec.to_builtins(frame)


def encode_json(value: Any) -> bytes:
    """Serialize a Struct or builtins to compact JSON bytes."""
    if isinstance(value, msgspec.Struct):
        return _to_builtins_enc.encode(value)
    return orjson.dumps(value)
