"""Choose a store by URL scheme. Optional drivers are imported lazily."""

from __future__ import annotations

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

        return await SqliteStore.open(url.removeprefix("sqlite:///"))
    raise ValueError(f"unknown store URL scheme {scheme!r}: use sqlite:///path/to/file.db")
