"""Polling: a read repeated until its answer is final or the client's ``wait_s`` is over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["MAX_WAIT_S", "poll"]

MAX_WAIT_S = 60.0
"""API.md: ``wait_s`` is at most 60."""
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5

_T = TypeVar("_T")


async def poll(read: Callable[[], Awaitable[_T]], final: Callable[[_T], bool], wait_s: float) -> _T:
    """``read()`` until ``final`` holds for its answer or ``wait_s`` (at most ``MAX_WAIT_S``)
    has passed, asking again more slowly each time (up to every ``POLL_MAX_S``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
    interval = POLL_FIRST_S
    while True:
        answer = await read()
        remaining = deadline - loop.time()
        if final(answer) or remaining <= 0:
            return answer
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 1.5, POLL_MAX_S)
