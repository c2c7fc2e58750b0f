"""Durable storage behind narrow Protocols (:mod:`storage.base`); :func:`open_store` picks a backend."""

from storage.base import Store
from storage.factory import open_store

__all__ = ["Store", "open_store"]
