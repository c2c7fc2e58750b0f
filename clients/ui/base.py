"""The Kivy App base both apps share, and running it with the sync engine on one loop.

The UI reads only the local store and writes only through the engine, so it never waits on
the network. Engine changes mark parts of the UI dirty; one refresher task re-reads them from
the store, one part at a time, so a burst of changes costs one re-read per part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from kivy.app import App
from kivy.core.window import Window
from kivy.metrics import dp
from kivy.utils import platform

from clients.common.engine import SyncEngine
from clients.common.state import Change
from clients.common.store import LocalStore
from clients.ui.widgets import TopBar

log = logging.getLogger(__name__)

PHONE_SIZE = (400, 760)
"""The desktop window, in dp: about a phone's portrait screen."""


class SokoApp(App):  # type: ignore[misc]
    """Base of the shopper and driver apps.

    Subclasses build ``self.body`` in :meth:`build_body`, map engine changes to the parts to
    refresh in :meth:`parts_for`, and implement ``async def refresh_<part>()`` for each part.
    """

    app_title = "Soko"

    def __init__(
        self,
        engine: SyncEngine,
        store: LocalStore,
        *,
        me: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.store = store
        self.me = me
        self.title = self.app_title
        self.top_bar: Any = None
        self._dirty: list[str] = []
        self._shown: dict[str, object] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.idle = asyncio.Event()
        """Set whenever no refresh is waiting or running (tests wait on it)."""
        self.idle.set()

    # ------------------------------------------------------------------ building

    def build(self) -> Any:
        from kivy.factory import Factory

        if platform not in ("android", "ios"):
            Window.size = (dp(PHONE_SIZE[0]), dp(PHONE_SIZE[1]))
        root = Factory.Screenful()
        self.top_bar = TopBar(title=self.app_title)
        root.add_widget(self.top_bar)
        root.add_widget(self.build_body())
        self._show_state()
        self._unsubscribe = self.engine.subscribe(self._on_change)
        self.refresh(*self.all_parts())
        return root

    def build_body(self) -> Any:
        raise NotImplementedError

    def all_parts(self) -> Iterable[str]:
        raise NotImplementedError

    def parts_for(self, change: Change) -> Iterable[str]:
        raise NotImplementedError

    def on_stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        if self._refresher is not None:
            self._refresher.cancel()

    # ------------------------------------------------------------------ engine -> UI

    def _on_change(self, change: Change) -> None:
        if change.kind == "state":
            self._show_state()
        self.on_change(change)
        self.refresh(*self.parts_for(change))

    def on_change(self, change: Change) -> None:
        """Hook for changes handled without the store (typing)."""

    def _show_state(self) -> None:
        state = self.engine.state
        self.top_bar.phase = state.phase
        self.top_bar.sync_label = state.label

    def refresh(self, *parts: str) -> None:
        """Re-read these parts from the store soon (each at most once per burst)."""
        for part in parts:
            if part not in self._dirty:
                self._dirty.append(part)
        if self._dirty and (self._refresher is None or self._refresher.done()):
            self.idle.clear()
            self._refresher = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        try:
            while self._dirty:
                part = self._dirty.pop(0)
                try:
                    await getattr(self, f"refresh_{part}")()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("ui: refreshing %s failed", part)
        finally:
            self.idle.set()

    def unchanged(self, part: str, content: object) -> bool:
        """True when ``part`` already shows exactly ``content`` (a comparable value of what it
        renders), so the refresher can skip rebuilding it; else remember ``content``.

        Rebuilding a list swaps its widgets, and a tap whose touch-up lands on a swapped-out
        button is lost (a ScrollView delivers touch-ups 0.2 s late): never rebuild for nothing.
        """
        if self._shown.get(part, self) == content:
            return True
        self._shown[part] = content
        return False

    # ------------------------------------------------------------------ UI -> engine

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a UI action (a write through the engine) without blocking the UI; failures are
        logged, never lost silently."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ui: an action failed", exc_info=task.exception())


async def run_with_engine(app: SokoApp, engine: SyncEngine, store: LocalStore) -> None:
    """Run the app's window and the engine's sync loop on the current event loop until the
    window closes; then stop the engine and close the store (queued writes stay queued)."""
    sync = asyncio.create_task(engine.run(), name="soko-sync")
    try:
        await app.async_run(async_lib="asyncio")
    finally:
        await engine.close()
        with contextlib.suppress(asyncio.CancelledError):
            await sync
        await store.close()
