"""orjson behind the ``json`` interface python-socketio expects (``dumps`` returning str)."""

from __future__ import annotations

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
        return orjson.loads(s)
