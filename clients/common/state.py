"""What the engine reports to the UI: its connection state and what changed in the store.

Both are small immutable values. The UI never reads the network: it renders
:class:`SyncState` and, on each :class:`Change`, re-reads what it shows from the
:class:`~clients.common.store.LocalStore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["offline", "connecting", "syncing", "live"]
"""``offline``: not connected (never tried yet, backing off, or switched off by ``set_online(False)``);
``connecting``: opening the socket and waiting for ``welcome``; ``syncing``: connected, catching up
(``done``/``total`` entries); ``live``: connected, every stream caught up, following live frames."""

ChangeKind = Literal[
    "state",
    "entries",
    "outbox",
    "stock",
    "position",
    "order",
    "typing",
    "read",
    "badge",
    "job",
    "wishlist",
    "conversations",
]
"""What a :class:`Change` is about; see :class:`Change` for the fields each kind sets."""


@dataclass(frozen=True, slots=True)
class SyncState:
    """The engine's connection state, replaced (never mutated) on every change.

    ``done``/``total`` count entries of the current catch-up ("syncing 120/2000"): ``total``
    is the sum of ``head - cursor`` over the streams found behind, ``done`` the entries
    applied so far; both are 0 outside ``syncing``. ``error`` is the text of the last
    failure (unreachable hub, refused or expired token, a request the hub refused), kept
    until the next successful ``welcome``; ``token_error`` is True while that failure is
    about the token (``unauthenticated``, ``token_expired``, ``forbidden``), so the UI can
    ask for a new one (:meth:`SyncEngine.set_token`). ``user``/``role`` come from the
    last ``welcome`` (None before the first).
    """

    phase: Phase = "offline"
    done: int = 0
    total: int = 0
    error: str | None = None
    token_error: bool = False
    user: str | None = None
    role: str | None = None

    @property
    def label(self) -> str:
        """Short human text: ``offline``, ``connecting``, ``syncing 3/10`` or ``live``."""
        if self.phase == "syncing":
            return f"syncing {self.done}/{self.total}"
        return self.phase


OutboxStatus = Literal["pending", "acked", "failed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One thing that changed, announced after it was committed to the store.

    Fields set per ``kind`` (the others are None):

    - ``state``: ``state`` (the new :class:`SyncState`).
    - ``entries``: ``stream`` (chat messages or notifications of that stream were added,
      replaced or dropped by a resync).
    - ``outbox``: ``client_id``, ``status`` (``pending`` when queued, ``acked`` when the
      hub acknowledged it, ``failed`` when the hub refused it for good), and ``stream``
      for chat messages and read marks, ``order_id`` for delivery steps.
    - ``stock``: ``boutique_id``, ``sku`` (None: the whole boutique was refreshed).
    - ``position``: ``order_id`` (a new driver position, or tracking ended).
    - ``order``: ``order_id`` (None: the order list was refreshed).
    - ``typing``: ``stream``, ``user`` (ephemeral; nothing is stored).
    - ``read``: ``stream`` (a read mark moved, ours or the peer's).
    - ``badge``: ``stream`` (an inbox's unread count changed).
    - ``job``: ``order_id`` (the driver's job list or a job's step changed).
    - ``wishlist``: nothing else.
    - ``conversations``: nothing else (the conversation list was refreshed).
    """

    kind: ChangeKind
    stream: str | None = None
    client_id: str | None = None
    status: OutboxStatus | None = None
    boutique_id: str | None = None
    sku: str | None = None
    order_id: str | None = None
    user: str | None = None
    state: SyncState | None = None
