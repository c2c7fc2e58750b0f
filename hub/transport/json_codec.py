"""orjson behind the ``json`` interface python-socketio expects (``dumps`` returning str)."""

from __future__ import annotations

import json
from typing import Any

import orjson


class OrjsonForSocketIO:
    """Pass as ``AsyncServer(json=...)``. python-socketio sets it process-wide."""

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        """Compact JSON; ``separators`` and other stdlib options are accepted and ignored."""
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(s: str | bytes, **_: Any) -> Any:
        """Parse with orjson; what only the stdlib parser accepts (``NaN``, ``Infinity``, numbers
        beyond float range, as Python clients send them) is parsed by it, so such values reach
        the request validators and get a clear error instead of a dropped packet.

        Raises:
            ValueError: when neither parser accepts ``s``; TypeError when it holds a lone surrogate.
        """
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            value = json.loads(s)
        # The stdlib also accepts lone surrogates ("\ud800"), which nothing downstream can encode.
        orjson.dumps(value)  # raises orjson.JSONEncodeError (a TypeError) for them
        return value
