"""Choose a store by URL scheme. Optional drivers are imported lazily."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from storage.base import Store


async def open_store(url: str) -> Store:
    """Open the store named by ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/file.db``
    (SQLAlchemy's convention) or ``sqlite:///:memory:``.

    Raises:
        ValueError: for an unknown scheme.
    """
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from storage.sqlite import SqliteStore

        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await SqliteStore.open(path)
    raise ValueError(f"unknown store URL scheme {scheme!r}: use sqlite:///path/to/file.db")
