"""Polling: a read repeated until its answer is final or the client's ``wait_s`` is over.

A run that ends on the replica that polls wakes its pollers at once (:class:`Wakers`): the
back-off between reads (up to ``POLL_MAX_S``) would otherwise add up to half a second to every
answer; work that ends elsewhere (another replica) is seen by the reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["MAX_WAIT_S", "Wakers", "poll"]

MAX_WAIT_S = 60.0
"""API.md: ``wait_s`` is at most 60."""
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5

_T = TypeVar("_T")


class Wakers:
    """The events of the runs (executions, batches) going on in this replica, by id: set when
    the run has stored its end."""

    def __init__(self) -> None:
        self._events: dict[uuid.UUID, asyncio.Event] = {}

    def add(self, run_id: uuid.UUID) -> None:
        self._events[run_id] = asyncio.Event()

    def get(self, run_id: uuid.UUID) -> asyncio.Event | None:
        return self._events.get(run_id)

    def wake(self, run_id: uuid.UUID) -> None:
        event = self._events.pop(run_id, None)
        if event is not None:
            event.set()


async def poll(
    read: Callable[[], Awaitable[_T]],
    final: Callable[[_T], bool],
    wait_s: float,
    wake: asyncio.Event | None = None,
) -> _T:
    """``read()`` until ``final`` holds for its answer or ``wait_s`` (at most ``MAX_WAIT_S``)
    has passed, asking again more slowly each time (up to every ``POLL_MAX_S``), and at once
    when ``wake`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
    interval = POLL_FIRST_S
    while True:
        answer = await read()
        remaining = deadline - loop.time()
        if final(answer) or remaining <= 0:
            return answer
        pause = min(interval, remaining)
        if wake is None:
            await asyncio.sleep(pause)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
            if wake.is_set():
                wake = None  # once: then back to reading at intervals
        interval = min(interval * 1.5, POLL_MAX_S)
