"""A minimal client of the HTTP API, as the command line uses it.

Usage::

    body = execution_body("print(open('in.bin', 'rb').read())", files={"in.bin": b"\\x00"},
                          runtime="minimal")
    record = post_execution("http://127.0.0.1:8000", key, body)
    png = get_artifact("http://127.0.0.1:8000", key, record["id"], "out/plot.png")
    names = [runtime["name"] for runtime in list_runtimes("http://127.0.0.1:8000", key)]

    with Session.create("http://127.0.0.1:8000", key, runtime="scientific") as session:
        session.run("import pandas as pd; df = pd.DataFrame({'a': [1, 2]})")
        session.run("df.a.sum()").result                   # '3': the session kept df

Streaming (API.md, "Streaming output"): output as the program writes it, then the record::

    for event in stream_execution("http://127.0.0.1:8000", key, execution_body(code)):
        if isinstance(event, OutputEvent):
            print(event.text, end="", flush=True)   # event.stream: 'stdout' or 'stderr'
        else:
            record = event.record                     # a RecordEvent, always the last

    with run_interactive("http://127.0.0.1:8000", key, execution_body("print(input())")) as run:
        run.send_stdin("hello\n")                    # what the program's input() returns
        for event in run: ...

    session.stream("for i in range(3): print(i)")   # a session call, streamed over SSE
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from executors import ExecutionRecord
from serve_app import files as api_files
from serve_app._client_events import (
    InteractiveEvent,
    OutputEvent,
    RecordEvent,
    RefusalEvent,
    StreamEvent,
)
from serve_app._client_http import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from serve_app._client_http import call as _call
from serve_app._client_http import object_from as _object_from
from serve_app._client_http import session_route as _session_route
from serve_app._client_http import url as _url
from serve_app._client_stream import stream_execution, stream_session_call
from serve_app._client_ws import ExecutionSocket, InteractiveRun, run_interactive
from serve_app.api import SessionInfo
from serve_app.errors import ServerUnreachableError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "ExecutionSocket",
    "InteractiveEvent",
    "InteractiveRun",
    "OutputEvent",
    "RecordEvent",
    "RefusalEvent",
    "Session",
    "SessionInfo",
    "StreamEvent",
    "call_session",
    "create_session",
    "delete_session",
    "execution_body",
    "get_artifact",
    "get_session",
    "list_runtimes",
    "list_sessions",
    "post_execution",
    "run_interactive",
    "stream_execution",
    "stream_session_call",
]


def execution_body(
    code: str,
    *,
    stdin: str = "",
    files: Mapping[str, str | bytes] | None = None,
    runtime: str | None = None,
    limits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/executions``: ``files`` as text or bytes (sent as
    ``{"base64": ...}``); ``runtime`` None: the server's ``DEFAULT_RUNTIME``."""
    body: dict[str, Any] = {"code": code, "stdin": stdin}
    if files:
        body["files"] = api_files.to_api(files)
    if runtime is not None:
        body["runtime"] = runtime
    if limits:
        body["limits"] = dict(limits)
    return body


def post_execution(server: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``{server}/v1/executions`` and return the execution record."""
    response = _call("POST", _url(server, "/v1/executions"), key, json=body)
    return _object_from(response, "an execution record")


def list_runtimes(server: str, key: str) -> list[dict[str, Any]]:
    """``GET /v1/runtimes``: each runtime's name, Python version, packages, preloaded modules
    and whether it is the default."""
    answer = _object_from(_call("GET", _url(server, "/v1/runtimes"), key), "a runtime list")
    items = answer.get("items")
    if not isinstance(items, list):
        raise ServerUnreachableError("the runtime list has no items")
    return items


def get_artifact(server: str, key: str, execution_id: str, path: str) -> bytes:
    """The bytes of the artifact ``path`` (``out/plot.png``) of execution ``execution_id``."""
    route = f"/v1/executions/{quote(execution_id, safe='')}/artifacts/{quote(path, safe='/')}"
    return _call("GET", _url(server, route), key).content


# --- sessions (API.md, Sessions)


def create_session(
    server: str,
    key: str,
    *,
    runtime: str | None = None,
    limits: Mapping[str, Any] | None = None,
    idle_timeout_s: float | None = None,
    ttl_s: float | None = None,
) -> SessionInfo:
    """``POST /v1/sessions``: a new live interpreter; what is left out, the server's defaults
    (``limits``: ``memory_mb``, ``max_processes``, ``max_file_bytes`` of the whole session)."""
    body: dict[str, Any] = {}
    for name, value in (
        ("runtime", runtime),
        ("limits", None if limits is None else dict(limits)),
        ("idle_timeout_s", idle_timeout_s),
        ("ttl_s", ttl_s),
    ):
        if value is not None:
            body[name] = value
    response = _call("POST", _url(server, "/v1/sessions"), key, json=body)
    return SessionInfo.model_validate(_object_from(response, "a session"))


def call_session(
    server: str,
    key: str,
    session_id: str,
    code: str,
    *,
    stdin: str = "",
    files: Mapping[str, str | bytes] | None = None,
    limits: Mapping[str, Any] | None = None,
) -> ExecutionRecord:
    """``POST /v1/sessions/{id}/executions``: run ``code`` in the session; its record (``result``:
    the ``repr`` of a final expression's value). ``limits``: ``wall_timeout_s``, ``cpu_time_s``,
    ``max_output_bytes`` of this call. Raises :class:`ApiErrorResponse` with ``session_busy``
    (409), ``session_terminated`` (410)."""
    body = execution_body(code, stdin=stdin, files=files, limits=limits)
    response = _call(
        "POST", _url(server, f"{_session_route(session_id)}/executions"), key, json=body
    )
    return ExecutionRecord.model_validate(_object_from(response, "an execution record"))


def get_session(server: str, key: str, session_id: str) -> SessionInfo:
    """``GET /v1/sessions/{id}``: the session as its host says it is now."""
    response = _call("GET", _url(server, _session_route(session_id)), key)
    return SessionInfo.model_validate(_object_from(response, "a session"))


def list_sessions(
    server: str, key: str, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[SessionInfo], str | None]:
    """``GET /v1/sessions``: a page of the key's sessions, newest first, and the next cursor."""
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    answer = _object_from(_call("GET", _url(server, "/v1/sessions"), key, params=params), "a page")
    items, next_cursor = answer.get("items"), answer.get("next_cursor")
    if not isinstance(items, list) or not isinstance(next_cursor, str | None):
        raise ServerUnreachableError("the session list has no items")
    return [SessionInfo.model_validate(item) for item in items], next_cursor


def delete_session(server: str, key: str, session_id: str) -> None:
    """``DELETE /v1/sessions/{id}``: its interpreter killed at once (an ended one: nothing)."""
    _call("DELETE", _url(server, _session_route(session_id)), key)


class Session:
    """A session as an object: ``run`` calls, ``close`` (or the ``with`` block's end) deletes.

    >>> with Session.create(server, key) as session:  # doctest: +SKIP
    ...     session.run("x = 1")
    ...     session.run("x + 1").result
    '2'
    """

    def __init__(self, server: str, key: str, info: SessionInfo) -> None:
        self.server = server
        self.key = key
        self.info = info

    @classmethod
    def create(cls, server: str, key: str, **options: Any) -> Session:
        """A new session (``options``: those of :func:`create_session`)."""
        return cls(server, key, create_session(server, key, **options))

    @property
    def id(self) -> str:
        return str(self.info.id)

    def run(self, code: str, **options: Any) -> ExecutionRecord:
        """Run ``code`` in the session (``options``: those of :func:`call_session`)."""
        return call_session(self.server, self.key, self.id, code, **options)

    def stream(self, code: str, **options: Any) -> Generator[StreamEvent, None, None]:
        """Run ``code`` in the session, streamed (:func:`stream_session_call`; ``options``:
        ``stdin``, ``files``, ``limits``)."""
        body = execution_body(code, **options)
        return stream_session_call(self.server, self.key, self.id, body)

    def interactive(
        self, code: str, **options: Any
    ) -> contextlib.AbstractContextManager[InteractiveRun]:
        """Run ``code`` in the session over the WebSocket, its standard input interactive
        (:func:`run_interactive`)."""
        body = execution_body(code, **options)
        return run_interactive(self.server, self.key, body, session_id=self.id)

    def refresh(self) -> SessionInfo:
        """The session as it is now (ended by the server, perhaps: ``status``)."""
        self.info = get_session(self.server, self.key, self.id)
        return self.info

    def close(self) -> None:
        """End the session (nothing if it had ended)."""
        delete_session(self.server, self.key, self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
