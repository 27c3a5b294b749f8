"""What streamed executions and session calls share: the opened stream, its first event, and
the stream of a record that needs no run (a replay, a cache hit).

A stream is opened by its service (:meth:`Executions.open_stream`,
:meth:`Sessions.open_call_stream`) once everything that can refuse it has been checked and its
first event has arrived (:func:`primed`): a refusal is then the service's ordinary error, and
the edge answers it as JSON before anything is streamed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Self

from executors import ExecutionRecord, record_event
from serve_app.http.service.runner import Event

__all__ = ["EventStream", "aclose", "closing", "primed", "replayed"]


class EventStream:
    """An opened stream: the id of its execution and its events, the last a ``record`` event.
    Closing it before that (its client went away) ends the execution (each service says how).

    >>> stream = await service.stream_execution(key, body)  # doctest: +SKIP
    >>> async for event in stream: ...  # doctest: +SKIP
    """

    def __init__(
        self,
        execution_id: uuid.UUID,
        events: AsyncGenerator[Event, None],
        first: Event | None = None,
    ) -> None:
        self.execution_id = execution_id
        self._events = events
        self._first = first

    @classmethod
    async def open(cls, execution_id: uuid.UUID, events: AsyncGenerator[Event, None]) -> Self:
        """The stream of ``events`` once its first event has arrived: what refuses the run is
        raised here. A generator that started runs its ``finally`` when closed, so what it
        holds (a lease, a running execution) is always given back."""
        first = await anext(events)
        return cls(execution_id, events, first)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()


async def aclose(events: AsyncIterator[Event]) -> None:
    """Close ``events`` if it can be closed (an async generator, an :class:`EventStream`)."""
    close: Callable[[], Awaitable[None]] | None = getattr(events, "aclose", None)
    if close is not None:
        await close()


async def primed(events: AsyncIterator[Event]) -> AsyncGenerator[Event, None]:
    """``events``, once its first event has arrived: what refuses the run (the executors'
    back-pressure, a busy session) is raised here, before the stream is answered. Closing the
    result closes ``events``; so does a failure to get the first event."""
    try:
        first = await anext(events)
    except BaseException:
        await aclose(events)
        raise
    return _chained(first, events)


async def _chained(first: Event, events: AsyncIterator[Event]) -> AsyncGenerator[Event, None]:
    try:
        yield first
        async for event in events:
            yield event
    finally:
        await aclose(events)


async def replayed(
    record: ExecutionRecord | Callable[[], Awaitable[ExecutionRecord]],
) -> AsyncGenerator[Event, None]:
    """The stream of a record that needs no run: its stdout, then its stderr, as one chunk
    each (if not empty), then the record. A callable is awaited first (a replayed execution
    still running: its terminal record)."""
    if not isinstance(record, ExecutionRecord):
        record = await record()
    for name, text in (("stdout", record.stdout), ("stderr", record.stderr)):
        if text:
            yield {"type": name, "text": text}
    yield record_event(record)


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[Event]) -> AsyncGenerator[AsyncIterator[Event], None]:
    """``events``, closed on leaving (``contextlib.aclosing`` for any iterator)."""
    try:
        yield events
    finally:
        await aclose(events)
