"""Database work off the event loop: one short transaction per call, in a worker thread.

On SQLite one thread runs every transaction (SQLite takes one writer at a time: writers in
several threads would meet on its lock and sleep in its busy handler); PostgreSQL uses the
default pool of worker threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from serve_app.db import Database

__all__ = ["Transact", "Transactions"]

_T = TypeVar("_T")


class Transact(Protocol):
    """What the components need of the database: ``work`` in one transaction."""

    async def __call__(self, work: Callable[[Session], _T]) -> _T: ...


class Transactions:
    """The replica's way into its database (:class:`Transact`)."""

    def __init__(self, database: Database) -> None:
        self.database = database  # replaceable (tests swap in an unreachable one)
        self._thread: ThreadPoolExecutor | None = None
        if database.backend == "sqlite":
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def __call__(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in one transaction, off the event loop; raises
        :class:`~serve_app.errors.DatabaseUnavailableError` when the database is unreachable."""

        def in_transaction() -> _T:
            with self.database.session() as session:
                return work(session)

        if self._thread is None:
            return await asyncio.to_thread(in_transaction)
        call = functools.partial(contextvars.copy_context().run, in_transaction)
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def aclose(self) -> None:
        """Release the connections (and the SQLite thread)."""
        await asyncio.to_thread(self.database.dispose)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
