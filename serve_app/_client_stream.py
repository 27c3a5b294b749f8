"""Streamed runs over Server-Sent Events: ``POST`` with ``Accept: text/event-stream``, the
output as the program writes it, then the record (API.md, "Streaming output").

Usage::

    body = execution_body("import time\\nprint('a')\\ntime.sleep(1)\\nprint('b')")
    for event in stream_execution(server, key, body):
        if isinstance(event, OutputEvent):
            print(event.text, end="", flush=True)    # 'a' a second before 'b'
        else:
            record = event.record                      # the stored record, stdout 'a\\nb\\n'
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx

from serve_app._client_events import RecordEvent, StreamEvent, event_from, parse_json
from serve_app._client_http import (
    TIMEOUT,
    auth_headers,
    error_from,
    object_from,
    session_route,
    url,
)
from serve_app._sse import SseParser
from serve_app.errors import ServerUnreachableError

__all__ = ["stream_execution", "stream_session_call"]

EVENT_STREAM = "text/event-stream"


def stream_execution(
    server: str, key: str, body: dict[str, Any], *, client: httpx.Client | None = None
) -> Generator[StreamEvent, None, None]:
    """``POST /v1/executions`` streamed: :class:`OutputEvent` s as the program writes, then one
    :class:`RecordEvent`. A refusal before the run raises :class:`ApiErrorResponse` (at the
    first ``next``). Closing the generator (``close()``, or its collection once a loop left it
    early) closes the stream, which cancels the run.
    ``client``: an ``httpx.Client`` to reuse (its connections kept alive); else one of its own.
    """
    return _stream(url(server, "/v1/executions"), key, body, client)


def stream_session_call(
    server: str,
    key: str,
    session_id: str,
    body: dict[str, Any],
    *,
    client: httpx.Client | None = None,
) -> Generator[StreamEvent, None, None]:
    """``POST /v1/sessions/{id}/executions`` streamed, as :func:`stream_execution`. Leaving
    early does not interrupt the call (it runs to its limits, as a session call does)."""
    return _stream(url(server, f"{session_route(session_id)}/executions"), key, body, client)


def _stream(
    address: str, key: str, body: dict[str, Any], client: httpx.Client | None
) -> Generator[StreamEvent, None, None]:
    own = client is None
    http = httpx.Client(timeout=TIMEOUT) if client is None else client
    try:
        yield from _events(http, address, key, body)
    finally:
        if own:
            http.close()


def _events(
    http: httpx.Client, address: str, key: str, body: dict[str, Any]
) -> Generator[StreamEvent, None, None]:
    headers = {**auth_headers(key), "Accept": EVENT_STREAM}
    try:
        with http.stream("POST", address, json=body, headers=headers) as response:
            if response.is_error:
                response.read()
                raise error_from(response)
            if not response.headers.get("content-type", "").startswith(EVENT_STREAM):
                # A server that does not stream answers the record at once.
                response.read()
                yield RecordEvent(object_from(response, "an execution record"))
                return
            yield from _parsed(response)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {address}: {exc}") from None


def _parsed(response: httpx.Response) -> Generator[StreamEvent, None, None]:
    parser = SseParser()
    for chunk in response.iter_bytes():
        for message in parser.feed(chunk):
            event = event_from(message.event, parse_json(message.data, f"a {message.event} event"))
            if event is not None:
                yield event
            if isinstance(event, RecordEvent):
                return
    raise ServerUnreachableError("the event stream ended before the record")
