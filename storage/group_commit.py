"""Group commit for one SQLite writer connection.

A durable write waits for its ``COMMIT``, and with ``synchronous=FULL`` each commit
is an fsync. One transaction per write made the fsync the ceiling of every durable
path: the chat benchmark spent 28 % of the hub's samples in ``COMMIT`` and peaked at
about 2k messages/s. :class:`GroupCommitter` instead runs every write that arrives
while a commit is in flight in the next shared transaction, each in a savepoint of
its own, and commits them with one fsync.

Contract of :meth:`GroupCommitter.run`:

* Units run one at a time, on the writer thread, in the order ``run`` was called.
  Each sees the writes of the units before it.
* A unit's caller hears back only after the ``COMMIT`` that made its writes durable,
  or with an exception, in which case none of its writes were committed.
* A unit that raises is rolled back alone (each unit runs in a savepoint); the other
  units of its group commit.
* If SQLite rolls the whole transaction back (an I/O error, a full disk), every unit
  of the group that had already run fails with :class:`GroupRolledBack`; none of
  them is reported as committed. The units after it run in a fresh transaction.
* A caller cancelled while its unit is queued or running does not stop the unit
  (as with ``run_in_executor``); its outcome is discarded.
* If the event loop cancels the committer itself (shutdown), callers still waiting get
  a ``RuntimeError``: their writes may or may not have been committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, Final, TypeVar

__all__ = ["DEFAULT_MAX_GROUP", "GroupCommitter", "GroupRolledBack", "unit_of_work"]

T = TypeVar("T")

DEFAULT_MAX_GROUP: Final = 256
"""Most units committed together; a longer queue is committed in several groups."""

_Outcome = tuple[bool, Any]
"""(True, result) or (False, exception)."""


class GroupRolledBack(sqlite3.OperationalError):
    """This unit's writes were rolled back with its group, by an error of a later unit or of the COMMIT."""


@contextmanager
def unit_of_work(conn: sqlite3.Connection) -> Iterator[None]:
    """Make the block atomic: rolled back if it raises, kept otherwise.

    Inside a group's transaction this adds nothing: the group already runs each unit in
    a savepoint of its own (:func:`_run_unit`), made durable by the group's ``COMMIT``.
    Outside one (schema setup) the block is its own ``BEGIN IMMEDIATE`` transaction.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _commit_group(conn: sqlite3.Connection, units: list[Callable[[], Any]]) -> list[_Outcome]:
    """Run ``units`` in as few transactions as possible, on the writer thread (see the module contract).

    Raises only when the connection cannot be brought back to a clean state; then no
    unit of the group may be reported as committed, and the caller fails them all.
    """
    if conn.in_transaction:
        # left open by a failed ROLLBACK of an earlier group: none of it was reported committed
        conn.execute("ROLLBACK")
    outcomes: list[_Outcome] = []
    first_in_transaction = 0
    try:
        for index, unit in enumerate(units):
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
                first_in_transaction = index
            outcomes.append(_run_unit(conn, unit))
            if not conn.in_transaction:
                succeeded, value = outcomes[index]
                _fail_since(outcomes, first_in_transaction, index + 1, None if succeeded else value)
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                _fail_since(outcomes, first_in_transaction, len(outcomes), exc)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    return outcomes


def _run_unit(conn: sqlite3.Connection, unit: Callable[[], Any]) -> _Outcome:
    """Run one unit in a savepoint of the open transaction, so that if it raises it leaves nothing behind.

    If even the savepoint cannot be rolled back, the whole transaction is (the group then
    fails every unit it held); if that fails too, the error propagates.
    """
    conn.execute("SAVEPOINT unit")
    try:
        result = unit()
    except Exception as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
            except Exception:
                conn.execute("ROLLBACK")
        if isinstance(exc, StopIteration):  # a Future cannot carry StopIteration
            return (False, RuntimeError(f"write unit raised {exc!r}"))
        return (False, exc)
    conn.execute("RELEASE unit")
    return (True, result)


def _fail_since(outcomes: list[_Outcome], start: int, stop: int, cause: BaseException | None) -> None:
    """Turn the successes in ``outcomes[start:stop]`` into failures: their transaction is gone."""
    for index in range(start, stop):
        if outcomes[index][0]:
            lost = GroupRolledBack(f"rolled back with its group: {cause!r}")
            lost.__cause__ = cause
            outcomes[index] = (False, lost)


class GroupCommitter:
    """Queues write units from the event loop and commits them in groups on ``executor``'s one thread.

    Args:
        executor: a single-thread executor that owns the connection.
        connection: returns the writer connection (called on the writer thread).
        max_group: most units per transaction.
    """

    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection],
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._executor = executor
        self._connection = connection
        self._max_group = max_group
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, unit: Callable[[], T]) -> T:
        """Run ``unit`` on the writer thread in the next group; return its result once committed."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()
        self._queued.append((unit, outcome))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="sqlite-group-commit")
        return await outcome

    async def drain(self) -> None:
        """Wait until every unit queued so far has been committed or has failed."""
        while self._flusher is not None:
            await asyncio.wait({self._flusher})

    def _commit(self, units: list[Callable[[], Any]]) -> list[_Outcome]:
        return _commit_group(self._connection(), units)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        group: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        try:
            while self._queued:
                group = self._queued[: self._max_group]
                del self._queued[: self._max_group]
                units = [unit for unit, _ in group]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._commit, units)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    outcomes = [(False, exc)] * len(group)
                for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                group = []
        except asyncio.CancelledError:
            # the loop is shutting down; a group already on the writer thread may still commit
            for _, future in [*group, *self._queued]:
                if not future.done():
                    future.set_exception(RuntimeError("the store shut down; this write's outcome is unknown"))
            self._queued.clear()
            raise
        finally:
            self._flusher = None
