"""Server-Sent Events at the edge (API.md, "Streaming output"): who asks for them, and a
stream's events framed as they go out.

    event: stdout
    data: {"text":"hello\\n"}

    event: record
    data: {"id":"...","status":"ok",...}

Each event is one ``data`` line: its JSON has no raw line break (JSON escapes them in strings),
and the record's is the very JSON of the synchronous answer. The response closes its stream
whatever ends it (the last event sent, the client gone, the replica stopping), so that the
stream's own end (a run cancelled, a lease given back) always happens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serve_app.http.service.streams import EventStream

__all__ = ["EVENT_STREAM", "EventStreamResponse", "frame", "wants_event_stream"]

EVENT_STREAM = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Nothing on the way may keep or hold back the events (``X-Accel-Buffering``: nginx's
buffering off). The edge turns ``Cache-Control`` into its ``no-store`` on ``/v1/``."""


def wants_event_stream(request: Request) -> bool:
    """Whether the request's ``Accept`` names ``text/event-stream`` (with a non-zero ``q``)."""
    for accepted in request.headers.getlist("accept"):
        for media_range in accepted.split(","):
            media_type, *parameters = media_range.split(";")
            if media_type.strip().lower() == EVENT_STREAM and not _refused(parameters):
                return True
    return False


def _refused(parameters: list[str]) -> bool:
    """Whether a media range's parameters say ``q=0`` (not acceptable)."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False
    return False


def _json(value: Any) -> str:
    # As JSONResponse renders: the record's data is the synchronous answer's JSON.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def frame(event: Mapping[str, Any]) -> bytes:
    """One event as Server-Sent Events: ``record`` carries the record itself, an output event
    ``{"text": ...}``."""
    kind = event["type"]
    data = event["record"] if kind == "record" else {"text": event["text"]}
    return f"event: {kind}\ndata: {_json(data)}\n\n".encode()


async def _framed(events: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield frame(event)


class EventStreamResponse(StreamingResponse):
    """``200 text/event-stream`` of an opened stream; ``headers`` added to
    :data:`STREAM_HEADERS`. The stream is closed when the response ends, however it ends."""

    def __init__(self, stream: EventStream, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(
            _framed(stream), headers={**STREAM_HEADERS, **(headers or {})}, media_type=EVENT_STREAM
        )
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The events' finally (cancel the run, end its row, give the lease back) runs now,
            # not whenever the collector finds the abandoned generator.
            await self._stream.aclose()
