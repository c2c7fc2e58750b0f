"""Choose a store by URL scheme. Optional drivers are imported lazily."""

from __future__ import annotations

from urllib.parse import urlparse

from storage.base import Store


async def open_store(url: str) -> Store:
    """Open the store named by ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/file.db``
    (SQLAlchemy's convention) or ``sqlite:///:memory:`` for the embedded store;
    ``mongodb://host[:port][,host...]/database?options`` or ``mongodb+srv://host/database``
    for MongoDB (database ``soko`` when the URL names none). pymongo is imported only
    for a MongoDB URL.

    Raises:
        ValueError: for an unknown scheme, or a MongoDB URL without pymongo installed.
        pymongo.errors.PyMongoError: when MongoDB cannot be reached.
    """
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from storage.sqlite import SqliteStore

        return await SqliteStore.open(url.removeprefix("sqlite:///"))
    if scheme in ("mongodb", "mongodb+srv"):
        try:
            from storage.mongo import MongoStore
        except ImportError as exc:
            raise ValueError(
                f"the MongoDB store needs pymongo: pip install 'soko-live[mongo]' ({exc})"
            ) from None
        return await MongoStore.open(url)
    raise ValueError(
        f"unknown store URL scheme {scheme!r}: use sqlite:///path/to/file.db or mongodb://host/database"
    )
