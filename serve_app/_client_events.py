"""What a streamed run gives its client, over SSE or the WebSocket alike: output as it comes,
then the record (API.md, "Streaming output")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from executors import ExecutionRecord
from serve_app._client_http import api_error_response
from serve_app.errors import (
    ApiErrorResponse,
    ServerUnreachableError,
    ServiceError,
)

__all__ = [
    "InteractiveEvent",
    "OutputEvent",
    "RecordEvent",
    "RefusalEvent",
    "StreamEvent",
    "api_error",
    "event_from",
    "parse_json",
]


@dataclass(frozen=True)
class OutputEvent:
    """A chunk of the program's ``stdout`` or ``stderr``, as it wrote it."""

    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True)
class RecordEvent:
    """The run's last event: its record, as the API returns it (``data``) and typed
    (``record``). ``data["stream_dropped_bytes"]``: output the stream left out (the client
    could not keep up); the record's ``stdout``/``stderr`` still hold it."""

    data: dict[str, Any]

    @property
    def record(self) -> ExecutionRecord:
        return ExecutionRecord.model_validate(self.data)


@dataclass(frozen=True)
class RefusalEvent:
    """The WebSocket refused a message of the run (``in_reply_to``: ``stdin`` or
    ``stdin_eof``) and the run goes on: that text was not given to the program (over
    ``WS_MAX_STDIN_BYTES``, say). ``error`` says why."""

    in_reply_to: str
    error: ApiErrorResponse


StreamEvent: TypeAlias = OutputEvent | RecordEvent
"""What a streamed run gives: output events, then its record."""
InteractiveEvent: TypeAlias = OutputEvent | RecordEvent | RefusalEvent
"""What an interactive run gives: a stream's events, and the refusals of what it was sent."""


def event_from(kind: str, payload: Any) -> StreamEvent | None:
    """The event of a message ``kind`` (``stdout``, ``stderr``, ``record``) and its payload
    (the SSE data, or the WebSocket message, as parsed JSON); None for kinds this client does
    not know (a newer server's). An ``error`` raises it."""
    if kind == "error":
        raise api_error(payload)
    if kind in ("stdout", "stderr"):
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise ServerUnreachableError(f"a {kind} event without text")
        return OutputEvent(kind, text)  # type: ignore[arg-type]  # narrowed by the test above
    if kind == "record":
        if not isinstance(payload, dict):
            raise ServerUnreachableError("a record event without a record")
        return RecordEvent(payload)
    return None


def parse_json(text: str, what: str) -> Any:
    """``text`` parsed; not JSON, the stream is broken (``what`` names it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ServerUnreachableError(f"{what} is not JSON") from None


def api_error(payload: Any) -> ApiErrorResponse:
    """An error message of the stream (``{"error": {"code", "message", ...}}``) as the client's
    error, with the HTTP status the API gives its code."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code", "internal_error"))
    message = str(error.get("message", "the server reported an error"))
    return api_error_response(_HTTP_STATUS.get(code, 500), code, message, json.dumps(payload))


def _statuses(base: type[ServiceError]) -> dict[str, int]:
    found = {str(base.code): int(base.http_status)}
    for subclass in base.__subclasses__():
        found = _statuses(subclass) | found  # a parent's status wins for a shared code
    return found


_HTTP_STATUS = _statuses(ServiceError)
"""The API's error table, read from the error classes: code -> HTTP status."""
