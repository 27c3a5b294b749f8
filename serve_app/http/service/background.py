"""The replica's background runs: started here, counted against its share of the executors'
bounded queue, and drained (or cancelled) when the replica stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["BackgroundTasks"]


class BackgroundTasks:
    """Tasks that outlive the request that started them (runs, late writes, batches)."""

    def __init__(self, room: int) -> None:
        self.capacity = room
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def room(self) -> int:
        """How many more background runs this replica takes."""
        return self.capacity - len(self.tasks)

    async def drain(self, timeout_s: float) -> None:
        """Let the tasks finish (up to ``timeout_s``), then cancel the late ones."""
        pending = set(self.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
