"""One log format for every process of the service: JSON lines on standard error (or, for a
person at a terminal, the same fields as short text lines: :class:`TextLogFormatter`).

Each record is one line, a JSON object::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "WARNING", "component": "ingress",
     "logger": "serve_app.http.service.runner", "event": "execution 3f2c... failed in the executors",
     "request_id": "9b1e...", "execution_id": "3f2c...", "pid": 4242}

- ``ts`` is ISO 8601 in UTC (milliseconds); ``event`` is the formatted message.
- ``request_id`` comes from the ``context`` function given to :func:`configure_json_logging`
  (the service passes its request-id context variable); by default, from Ray Serve's request
  context, which a deployment handle call carries from the ingress to the executor replica.
- ``execution_id``, ``batch_id`` and ``key_name`` are taken from ``extra=`` when given; no other
  ``extra`` is written, so a careless ``extra={"code": ...}`` never reaches a log.
- An exception is ``exc_type``, ``exc_message`` (its first line, cut short) and ``exc_at`` (the
  innermost frames as ``file:line:function``): never its locals, never a full message (a
  database error's later lines hold the statement's parameters).
- :func:`json.dumps` escapes every control character (``ensure_ascii``: also U+2028 and the C1
  controls), so no message can start a line of its own; ``event`` is cut at
  ``MAX_EVENT_CHARS``, and anything shaped like an API key (``ea_...``), a URL's credentials
  or the key segment of a compatibility path (``/compat/<api>/k/<key>/...``, where any
  string, a wrong key too, is a key) is masked (:func:`redact`) as a last line of defence:
  callers must still never log keys, user code or outputs.

``LOG_FORMAT`` (``json``, ``text`` or ``auto``: text when standard error is a terminal) chooses
between the two (:func:`resolve_log_format`); ``exec-agent serve`` passes its choice on to the
replicas of a Ray it starts, as it passes ``LOG_LEVEL``.

Only the root logger gets the handler: Ray's own loggers (``ray``, ``ray.serve``) do not
propagate to it and keep their own handlers, files and format, so nothing is written twice.
This module imports nothing of ``serve_app``: the executor replicas configure it themselves,
and ``serve_app.observability`` wraps it with the service's request-id context.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "EXTRA_FIELDS",
    "LOG_FORMAT_VARIABLE",
    "LOG_LEVEL_VARIABLE",
    "JsonLogFormatter",
    "JsonLogHandler",
    "LogContext",
    "TextLogFormatter",
    "configure_json_logging",
    "exception_fields",
    "redact",
    "resolve_log_format",
    "serve_request_id",
]

LOG_LEVEL_VARIABLE = "LOG_LEVEL"
"""Read when :func:`configure_json_logging` is given no level (the executor replicas)."""
LOG_FORMAT_VARIABLE = "LOG_FORMAT"
"""Read when :func:`configure_json_logging` is given no format, and by ``auto``."""
EXTRA_FIELDS = ("execution_id", "batch_id", "key_name")
"""The ``extra=`` attributes a line carries; every other extra is left out."""
MAX_EVENT_CHARS = 4096
MAX_EXC_MESSAGE_CHARS = 300
MAX_EXC_FRAMES = 5
MAX_ID_CHARS = 128
TRUNCATED = "...[truncated]"

LogContext = Callable[[], Mapping[str, str | None]]
"""Fields of the context a record is logged in (``request_id``), ``None`` when unknown."""

_API_KEY = re.compile(r"\bea_[A-Za-z0-9_-]{8,}")
# The segment after /k/ of a compatibility path (serve_app.api.path_key), its percent-encoded
# form included: whatever stands there was presented as a key, even when it is not shaped
# like one.
_PATH_KEY = re.compile(r"(?i)(/compat/[^/\s]+/k/)[^/\s?#\"'<>]+")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:]*(?::[^\s@]*)?@")
_STANDARD_LEVELS = frozenset(logging.getLevelNamesMapping())
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact(text: str) -> str:
    """``text`` with anything shaped like an API key, the key segment of a compatibility path
    (``/compat/sandbox-fusion/k/[redacted]/run_code``) and the credentials of any URL
    (``scheme://user:password@`` and a DSN's ``public@``), masked."""
    text = _PATH_KEY.sub(r"\1[redacted]", text)
    text = _API_KEY.sub("ea_[redacted]", text)
    return _URL_CREDENTIALS.sub(r"\1[redacted]@", text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED


def serve_request_id() -> str | None:
    """The id of the Ray Serve request being handled here, if any.

    In an executor replica this is the ingress request's id: Serve carries it on the handle
    call. ``None`` outside Serve, or when Serve is not even imported.
    """
    context = sys.modules.get("ray.serve.context")
    if context is None:
        return None
    try:
        request_id = context._get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - a private API of Ray's; a log line must not fail over it
        return None
    return request_id if isinstance(request_id, str) and request_id else None


def _serve_context() -> Mapping[str, str | None]:
    return {"request_id": serve_request_id()}


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring)."""

    def __init__(self, component: str, context: LogContext | None = None) -> None:
        super().__init__()
        self.component = component
        self.context = context or _serve_context

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            self.fields(record), ensure_ascii=True, separators=(",", ":"), default=str
        )

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line's fields, in the order they are written."""
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad format string still gives a line
            message = f"{record.msg!s} (unformattable arguments: {type(exc).__name__})"
        fields: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "event": redact(_cut(message, MAX_EVENT_CHARS)),
        }
        context = self._context()
        request_id = context.get("request_id") or _own_request_id(record)
        if request_id:
            fields["request_id"] = _cut(str(request_id), MAX_ID_CHARS)
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                fields[name] = redact(_cut(str(value), MAX_ID_CHARS))
        fields["pid"] = record.process
        if record.exc_info and record.exc_info[1] is not None:
            fields.update(exception_fields(record.exc_info[1]))
        return fields

    def _context(self) -> Mapping[str, str | None]:
        try:
            return self.context()
        except Exception:  # noqa: BLE001 - a broken context must not lose the line
            return {}


class TextLogFormatter(JsonLogFormatter):
    """The same fields as one short line for people: local time, level, component, logger,
    the event, then ``request_id=...`` and the known extras when set, and an exception's type,
    first line and innermost frame. Control characters are escaped (``\\x0a``), so a message
    still cannot start a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        moment = datetime.fromtimestamp(record.created).astimezone()
        line = (
            f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d} {fields['level']:<7} "
            f"{fields['component']} {fields['logger']}: {fields['event']}"
        )
        for name in ("request_id", *EXTRA_FIELDS):
            if name in fields:
                line += f" {name}={fields[name]}"
        if "exc_type" in fields:
            line += f" | {fields['exc_type']}: {fields['exc_message']}"
            if fields.get("exc_at"):
                line += f" (at {fields['exc_at'][-1]})"
        return _CONTROL.sub(_escape, line)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """``exc_type``, ``exc_message`` (first line, cut, redacted) and ``exc_at``."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # noqa: BLE001 - a broken __str__ still leaves the type
        lines = []
    fields: dict[str, Any] = {
        "exc_type": name,
        "exc_message": redact(_cut(lines[0], MAX_EXC_MESSAGE_CHARS)) if lines else "",
    }
    frames = _frames(exc.__traceback__)
    if frames:
        fields["exc_at"] = frames
    return fields


def _frames(tb: TracebackType | None) -> list[str]:
    # Only where: file name, line and function; no source line, no locals.
    summary = traceback.extract_tb(tb)[-MAX_EXC_FRAMES:]
    return [f"{PurePath(frame.filename).name}:{frame.lineno}:{frame.name}" for frame in summary]


def _own_request_id(record: logging.LogRecord) -> str | None:
    # RequestIdLogFilter (or Serve's context filter) may have put one on the record.
    value = record.__dict__.get("request_id")
    return value if isinstance(value, str) and value not in ("", "-") else None


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLogHandler(logging.Handler):
    """Writes each record as one line to the process's standard error, resolved when the
    record is written (so a test's captured ``sys.stderr``, or a replaced one, is honoured).

    Where Ray Serve has replaced ``sys.stderr`` with its own logger
    (``RAY_SERVE_LOG_TO_STDERR=0``), the line goes to the real standard error instead of being
    wrapped into a Serve log line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = _stderr()
            stream.write(line + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


def _stderr() -> TextIO:
    stream = sys.stderr
    if type(stream).__module__.startswith("ray.") and sys.__stderr__ is not None:
        return sys.__stderr__
    return stream


def resolve_log_format(requested: str | None = None, stream: TextIO | None = None) -> str:
    """``json`` or ``text``: ``requested`` (``None`` reads ``LOG_FORMAT``) when it names one;
    for ``auto`` (or nothing), ``LOG_FORMAT`` when it names one (the choice of the process
    that started this one), else ``text`` when ``stream`` (default: standard error) is a
    terminal, else ``json``."""
    for choice in (requested, os.environ.get(LOG_FORMAT_VARIABLE)):
        name = (choice or "").strip().lower()
        if name in ("json", "text"):
            return name
    stream = _stderr() if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream: not a person
        terminal = False
    return "text" if terminal else "json"


def configure_json_logging(
    level: str | int | None = None,
    *,
    component: str,
    context: LogContext | None = None,
    log_format: str | None = None,
) -> JsonLogHandler:
    """Make the root logger write JSON lines (see the module docstring), or text lines when
    :func:`resolve_log_format` of ``log_format`` says ``text``; idempotent.

    ``level``: a level name or number; ``None`` reads ``LOG_LEVEL`` (default ``INFO``).
    ``component`` names the process's role in each line (``driver``, ``ingress``,
    ``executor``). ``context`` gives the request id of the current context (default: Ray
    Serve's request context). ``log_format``: ``json``, ``text`` or ``auto``; ``None`` reads
    ``LOG_FORMAT`` (the executor replicas).

    Calling it again reconfigures the one handler. Other handlers that write to standard
    error or output (``logging.basicConfig``'s, Ray's ``LoggingConfig``'s) would print every
    line a second time in another format, and are removed; handlers writing elsewhere (files,
    test capture) stay.
    """
    resolved = _level(level)
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, JsonLogHandler)]
    for handler in list(root.handlers):
        if handler in ours[1:] or _writes_to_console(handler):
            root.removeHandler(handler)
    handler = ours[0] if ours else JsonLogHandler()
    text = resolve_log_format(log_format) == "text"
    handler.setFormatter((TextLogFormatter if text else JsonLogFormatter)(component, context))
    handler.setLevel(resolved)
    if not ours:
        root.addHandler(handler)
    root.setLevel(resolved)
    return handler


def _level(level: str | int | None) -> int:
    if isinstance(level, int):
        return level
    name = (level or os.environ.get(LOG_LEVEL_VARIABLE) or "INFO").strip().upper()
    return logging.getLevelNamesMapping()[name] if name in _STANDARD_LEVELS else logging.INFO


def _writes_to_console(handler: logging.Handler) -> bool:
    if isinstance(handler, JsonLogHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    if isinstance(handler, logging.FileHandler):
        return False
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(handler.stream is console for console in consoles if console is not None)
