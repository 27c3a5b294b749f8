"""A streamed run's events, and the bounded buffer they wait in for a slower reader.

A streamed run yields plain dicts ("events"), in order: ``{"type": "stdout" | "stderr",
"text": ...}`` as the program writes, then exactly one ``{"type": "record", "record": {...}}``
(the record in API form; a session call's also carries ``"state"``). Between the program, which
must never wait for its client, and a client that may read slowly, every hop holds a
:class:`StreamBuffer`: bounded in bytes, it drops the output chunks that do not fit (never the
record) and counts them into the record's ``stream_dropped_bytes``. Chunks of one stream that
wait together are merged, so a slow reader gets fewer, larger events rather than a backlog.

    buffer = StreamBuffer(max_bytes=1 << 20)
    buffer.put_output("stdout", "hello\\n")      # any thread, never blocks
    buffer.finish(record_event(record))          # last: the record
    async for event in buffer.events(): ...      # or, on a thread: for event in buffer.iter()

:func:`buffered` puts such a buffer between an upstream of events (an executor's stream, read
as fast as it comes) and its reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from executors._models import ExecutionRecord

__all__ = [
    "OUTPUT_EVENTS",
    "STREAM_BUFFER_BYTES",
    "StreamBuffer",
    "buffered",
    "output_event",
    "record_event",
]

STREAM_BUFFER_BYTES = 1024 * 1024
"""Undelivered output one hop of a stream holds (the executor's, the API replica's)."""
OUTPUT_EVENTS = ("stdout", "stderr")

Event = dict[str, Any]


def output_event(stream: str, text: str) -> Event:
    return {"type": stream, "text": text}


def record_event(record: ExecutionRecord, **extra: Any) -> Event:
    """The last event of a stream: ``record`` in API form (and e.g. a session's ``state``)."""
    return {"type": "record", "record": record.to_api(), **extra}


class StreamBuffer:
    """Output events waiting for their reader: at most ``max_bytes`` (UTF-8) of text, then the
    record. Thread-safe; one reader (async with :meth:`events`, on a thread with :meth:`iter`)."""

    def __init__(self, max_bytes: int = STREAM_BUFFER_BYTES) -> None:
        self.max_bytes = max_bytes
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: deque[Event] = deque()
        self._bytes = 0
        self._gap = False
        """Whether chunks were dropped since the last one queued (the next is not merged)."""
        self._last: Event | None = None
        self._error: BaseException | None = None
        self._wakers: list[Callable[[], None]] = []

    # --- the writer

    def put_output(self, stream: str, text: str) -> None:
        """Queue a chunk of ``stream``'s output, or drop it if it does not fit."""
        size = len(text.encode("utf-8", errors="surrogatepass"))
        with self._lock:
            if self._bytes + size > self.max_bytes:
                self.dropped_bytes += size
                self._gap = True
                return
            self._bytes += size
            # Never merged across a gap: a chunk is text the program wrote in one piece.
            if self._items and self._items[-1]["type"] == stream and not self._gap:
                self._items[-1]["text"] += text
            else:
                self._items.append(output_event(stream, text))
            self._gap = False
        self._wake()

    def finish(self, last: Event) -> None:
        """The stream's last event (the record); the drops counted so far go into its record."""
        with self._lock:
            self._last = last
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The stream ends with ``error`` instead (raised to the reader after the output)."""
        with self._lock:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._ready.notify_all()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    # --- the reader

    def _take(self) -> tuple[list[Event], bool]:
        """What waits now, and whether that is the end (the last event or the error among it,
        which raises)."""
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        if self._last is not None:
            last = self._last
            record = last.get("record")
            if isinstance(record, dict):
                record = {
                    **record,
                    "stream_dropped_bytes": (record.get("stream_dropped_bytes") or 0)
                    + self.dropped_bytes,
                }
                last = {**last, "record": record}
            return [*items, last], True
        if self._error is not None:
            if items:
                return items, False  # the output first, the error on the next take
            raise self._error
        return items, False

    def iter(self, poll_s: float | None = None) -> Iterator[Event]:
        """The events, waiting on this thread (``poll_s``: wake at least that often)."""
        while True:
            with self._lock:
                while not (self._items or self._last or self._error):
                    self._ready.wait(poll_s)
                items, done = self._take()
            for item in items:  # noqa: UP028 - Ray sends values into generators: no yield from
                yield item
            if done:
                return

    async def events(self) -> AsyncIterator[Event]:
        """The events, waiting on the running event loop."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(ready.set)

        with self._lock:
            self._wakers.append(wake)
        try:
            while True:
                ready.clear()
                with self._lock:
                    items, done = self._take()
                for item in items:
                    yield item
                if done:
                    return
                if not items:
                    await ready.wait()
        finally:
            with self._lock:
                self._wakers.remove(wake)


async def buffered(
    upstream: AsyncIterator[Event], max_bytes: int = STREAM_BUFFER_BYTES
) -> AsyncGenerator[Event]:
    """``upstream``'s events through a :class:`StreamBuffer` of ``max_bytes``: upstream is read
    as fast as it comes whatever the pace of this iterator's reader; chunks that do not fit are
    dropped, and the record's ``stream_dropped_bytes`` gains them. Closing this iterator (or
    cancelling its reader) stops reading upstream and closes it."""
    buffer = StreamBuffer(max_bytes)

    async def pump() -> None:
        try:
            async for event in upstream:
                if event.get("type") in OUTPUT_EVENTS:
                    buffer.put_output(event["type"], event["text"])
                else:
                    buffer.finish(event)
                    return
            buffer.fail(RuntimeError("the stream ended without its record"))
        except BaseException as exc:
            buffer.fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    task = asyncio.ensure_future(pump())
    try:
        async for event in buffer.events():
            yield event
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
