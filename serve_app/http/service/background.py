"""The replica's background runs: started here, counted against its share of the executors'
bounded queue, and drained (or cancelled) when the replica stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["BackgroundTasks"]

_T = TypeVar("_T")


class BackgroundTasks:
    """Tasks that outlive the request that started them (runs, late writes, batches)."""

    def __init__(self, room: int) -> None:
        self.capacity = room
        self.tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        """:meth:`outlive`'s: drained with the others, not counted against the room."""

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        self._keep(work, self.tasks)

    def detach(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """``work`` as a task of its own, kept until it is done and drained like the
        background runs, not counted against their room: a write that must not be lost."""
        return self._keep(work, self._writes)

    async def outlive(self, work: Coroutine[Any, Any, _T]) -> _T:
        """``work``'s result, with ``work`` :meth:`detach`-ed: if the caller is cancelled (its
        client went away), the work still completes.

        >>> record = await background.outlive(results.write(record))  # doctest: +SKIP
        """
        return await asyncio.shield(self.detach(work))

    @staticmethod
    def _keep(work: Coroutine[Any, Any, _T], kept: set[asyncio.Task[Any]]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(work)
        kept.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(kept.discard)
        return task

    def room(self) -> int:
        """How many more background runs this replica takes."""
        return self.capacity - len(self.tasks)

    async def drain(self, timeout_s: float) -> None:
        """Let the tasks finish (up to ``timeout_s``), then cancel the late ones."""
        pending = self.tasks | self._writes
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
