"""The lines of ``exec-agent batch``: each input line read into an execution request or an
error in its place, and the output file that a rerun with ``--resume`` carries on.

Usage::

    lines = read_lines(text, skip=0)    # [Line(number=1, body={...}), Line(2, error={...})]
    done = resume_point(Path("out.jsonl"))   # complete lines already written (a partial
                                              # last line, from a kill mid-write, cut off)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from executors import SCIENTIFIC, Limits
from serve_app.api import BatchItem, RequestBounds, validate_body
from serve_app.errors import describe_validation_error

__all__ = ["Line", "error_line", "read_lines", "resume_point"]

_HUGE = 2**53
_NO_LIMIT = Limits(
    wall_timeout_s=_HUGE,
    cpu_time_s=_HUGE,
    memory_bytes=_HUGE,
    max_output_bytes=_HUGE,
    max_processes=_HUGE,
    max_file_bytes=_HUGE,
    disk_bytes=_HUGE,
)
LOOSE_BOUNDS = RequestBounds(
    max_body_bytes=_HUGE,
    max_code_bytes=_HUGE,
    max_batch_items=_HUGE,
    default_limits=Limits(
        wall_timeout_s=1,
        cpu_time_s=1,
        memory_bytes=1,
        max_output_bytes=1,
        max_processes=1,
        max_file_bytes=1,
        disk_bytes=_HUGE,
    ),
    max_limits=_NO_LIMIT,
    default_runtime=SCIENTIFIC,
)
"""The server's request model without its maxima: a line is checked here for what it is (JSON,
an object, the fields and types of an execution request); whether it is within this server's
maxima is the server's to say (a refused item gets its 422 in its place all the same)."""


@dataclass(frozen=True)
class Line:
    """An input line (``number`` from 1): an execution request (``body``, sent as it was
    written) or, refused, the error object written in its place."""

    number: int
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def read_lines(text: str, *, skip: int) -> list[Line]:
    """The lines of ``text`` after the first ``skip`` (already done), each checked."""
    return [_checked(number, raw) for number, raw in enumerate(text.splitlines(), 1)][skip:]


def error_line(number: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    """What the output holds for a refused line: ``{"line": N, "error": {"code", "message",
    "details"?}}``, the API's error format with the line's number."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"line": number, "error": error}


def _checked(number: int, raw: str) -> Line:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Line(number, error=error_line(number, "invalid_json", f"not JSON: {exc}"))
    if not isinstance(body, dict):
        message = f"not a JSON object but {type(body).__name__}"
        return Line(number, error=error_line(number, "invalid_request", message))
    try:
        validate_body(BatchItem, body, LOOSE_BOUNDS)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        message = describe_validation_error(exc)
        return Line(number, error=error_line(number, "invalid_request", message, details))
    return Line(number, body=body)


def resume_point(path: Path) -> int:
    """How many lines ``path`` already holds, complete: a rerun skips that many input lines.
    A last line cut short (the command killed while writing it) is removed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    return complete.count(b"\n")
