"""A session send queue that costs next to nothing while it is empty (DESIGN.md principle 6).

engineio gives every session an ``asyncio.Queue``. Each one allocates four deques up
front (its items, its getters, its putters and its ``join`` event's waiters), about
3 KB, which an idle connection carries for its whole life: measured with tracemalloc
on a hub holding 5000 idle WebSocket connections, they were the largest single item
per connection after aiohttp's request. :class:`SendQueue` keeps the part of the API
that engineio and the hub use and allocates only while it holds packets or someone
waits on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["SendQueue"]


class SendQueue:
    """An unbounded FIFO with ``asyncio.Queue``'s semantics for the methods it has.

    ``put_nowait``, ``get``/``get_nowait`` (raising ``asyncio.QueueEmpty``),
    ``task_done``/``join``, ``empty`` and ``qsize`` behave as in ``asyncio.Queue``
    without a ``maxsize``: a cancelled ``get`` takes nothing, and a packet put while
    several ``get`` calls wait goes to the one that waited longest. Bounding a
    session's backlog is the fan-out's job (``FanoutManager.max_queue``). There is no
    ``put``: engineio awaits one only in ``AsyncSocket.send``, which ``HubSocket`` replaces.

    While empty with nobody waiting it holds no container: the deque of packets exists
    from the first ``put_nowait`` until the queue is empty again, and the lists of waiters only
    while someone waits. One event loop; not thread-safe.
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0

    def qsize(self) -> int:
        """Packets in the queue."""
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        """True when the queue holds no packet."""
        return self._items is None

    def put_nowait(self, item: Any) -> None:
        """Append ``item`` and wake the longest-waiting ``get``; never blocks."""
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        self._unfinished += 1
        self._wake_getter()

    def get_nowait(self) -> Any:
        """Remove and return the oldest packet.

        Raises:
            asyncio.QueueEmpty: the queue is empty.
        """
        items = self._items
        if items is None:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> Any:
        """Remove and return the oldest packet, waiting for one if the queue is empty."""
        while self._items is None:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                self._getters = _without(self._getters, getter)
                if self._items is not None and not getter.cancelled():
                    self._wake_getter()  # the packet that woke this getter goes to the next one
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        """Mark one packet taken by ``get`` as handled; :meth:`join` returns once all are.

        Raises:
            ValueError: called more times than packets were put.
        """
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners is not None:
            joiners, self._joiners = self._joiners, None
            for joiner in joiners:
                if not joiner.done():
                    joiner.set_result(None)

    async def join(self) -> None:
        """Wait until every packet put so far has been marked with :meth:`task_done`."""
        if self._unfinished:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            try:
                await joiner
            except BaseException:
                self._joiners = _without(self._joiners, joiner)
                raise

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None


def _without(
    waiters: list[asyncio.Future[None]] | None, waiter: asyncio.Future[None]
) -> list[asyncio.Future[None]] | None:
    """``waiters`` without ``waiter``; None once empty (the lists exist only while someone waits)."""
    if waiters is not None and waiter in waiters:
        waiters.remove(waiter)
    return waiters or None
