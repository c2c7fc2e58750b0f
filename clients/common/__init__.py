"""The shared, Kivy-free sync engine of the shopper and driver apps.

- :class:`~clients.common.store.LocalStore`: the local SQLite store the UI reads.
- :class:`~clients.common.engine.SyncEngine`: the background sync loop and the UI's writes.
- :class:`~clients.common.state.SyncState` / :class:`~clients.common.state.Change`: what the
  engine reports.
"""

from clients.common.engine import SyncEngine
from clients.common.state import Change, SyncState
from clients.common.store import LocalStore

__all__ = ["Change", "LocalStore", "SyncEngine", "SyncState"]
