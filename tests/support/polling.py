"""Waiting for a condition: the first good answer of a check tried again until a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually", "eventually_async", "polled"]

T = TypeVar("T")
INTERVAL_S = 0.2


def polled(
    check: Callable[[], T],
    timeout_s: float,
    *,
    until: Callable[[T], object] = bool,
    interval_s: float = INTERVAL_S,
) -> T:
    """``check()``'s first result that ``until`` accepts (by default: a truthy one) within
    ``timeout_s``; its last result otherwise, for the caller to judge or show."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)


@overload
def eventually(
    check: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = ...
) -> T: ...


@overload
def eventually(
    check: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    until: Callable[[T], object],
    interval_s: float = ...,
) -> T: ...


def eventually(
    check: Callable[[], Any],
    timeout_s: float,
    what: str,
    *,
    until: Callable[[Any], object] = bool,
    interval_s: float = INTERVAL_S,
) -> Any:
    """``check()``'s first result that ``until`` accepts (by default: a truthy one, so never
    None) within ``timeout_s``; raise AssertionError saying ``what`` otherwise."""
    result = polled(check, timeout_s, until=until, interval_s=interval_s)
    if not until(result):
        raise AssertionError(f"not within {timeout_s} s: {what}")
    return result


async def eventually_async(
    check: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = INTERVAL_S
) -> T:
    """As :func:`eventually` (a truthy result), in an event loop: it sleeps there between
    tries, so that the loop's other tasks (those the check waits for) run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(interval_s)
