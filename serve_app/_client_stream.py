"""Streamed runs over Server-Sent Events: ``POST`` with ``Accept: text/event-stream``, the
output as the program writes it, then the record (API.md, "Streaming output"), for the sync
and the asyncio client alike (``http``: the client's ``httpx`` pool, its base URL and key set).

Usage::

    for event in stream_events(http, "/v1/executions", execution_body("print('a')")):
        if isinstance(event, OutputEvent):
            print(event.text, end="", flush=True)
        else:
            record = event.record                      # a RecordEvent, always the last
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from typing import Any

import httpx

from serve_app._client_events import RecordEvent, StreamEvent, event_from, parse_json
from serve_app._client_http import error_from, object_from
from serve_app._sse import SseParser
from serve_app.errors import ServerUnreachableError

__all__ = ["astream_events", "stream_events"]

EVENT_STREAM = "text/event-stream"
HEADERS = {"Accept": EVENT_STREAM}


def stream_events(
    http: httpx.Client, route: str, body: dict[str, Any]
) -> Generator[StreamEvent, None, None]:
    """``POST route`` streamed: :class:`OutputEvent` s as the program writes, then one
    :class:`RecordEvent`. A refusal before the run raises :class:`ApiErrorResponse` (at the
    first ``next``). Closing the generator (``close()``, or its collection once a loop left it
    early) closes the stream, which cancels a run (a session call runs on to its limits)."""
    try:
        with http.stream("POST", route, json=body, headers=HEADERS) as response:
            if response.is_error:
                response.read()
                raise error_from(response)
            if not _is_stream(response):  # a server that does not stream: the record at once
                response.read()
                yield RecordEvent(object_from(response, "an execution record"))
                return
            parser = SseParser()
            for chunk in response.iter_bytes():
                for event in _events(parser, chunk):
                    yield event
                    if isinstance(event, RecordEvent):
                        return
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {http.base_url}: {exc}") from None
    raise ServerUnreachableError("the event stream ended before the record")


async def astream_events(
    http: httpx.AsyncClient, route: str, body: dict[str, Any]
) -> AsyncGenerator[StreamEvent, None]:
    """:func:`stream_events` over asyncio (``aclose()`` the generator to leave early)."""
    try:
        async with http.stream("POST", route, json=body, headers=HEADERS) as response:
            if response.is_error:
                await response.aread()
                raise error_from(response)
            if not _is_stream(response):
                await response.aread()
                yield RecordEvent(object_from(response, "an execution record"))
                return
            parser = SseParser()
            async for chunk in response.aiter_bytes():
                for event in _events(parser, chunk):
                    yield event
                    if isinstance(event, RecordEvent):
                        return
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {http.base_url}: {exc}") from None
    raise ServerUnreachableError("the event stream ended before the record")


def _is_stream(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith(EVENT_STREAM)


def _events(parser: SseParser, chunk: bytes) -> Iterable[StreamEvent]:
    for message in parser.feed(chunk):
        event = event_from(message.event, parse_json(message.data, f"a {message.event} event"))
        if event is not None:
            yield event
