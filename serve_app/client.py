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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from executors import ExecutionRecord
from serve_app import files as api_files
from serve_app.api import SessionInfo
from serve_app.errors import ApiErrorResponse, ServerUnreachableError

__all__ = [
    "Session",
    "SessionInfo",
    "call_session",
    "create_session",
    "delete_session",
    "execution_body",
    "get_artifact",
    "get_session",
    "list_runtimes",
    "list_sessions",
    "post_execution",
]

# The server holds the answer until the run ends, and its queue may add to that.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0
_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)


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


def _session_route(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def _url(server: str, route: str) -> str:
    return server.rstrip("/") + route


def _call(method: str, url: str, key: str, **options: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    try:
        response = httpx.request(method, url, headers=headers, timeout=_TIMEOUT, **options)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {url}: {exc}") from None
    if response.is_error:
        raise _error_from(response)
    return response


def _object_from(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        answer = response.json()
    except json.JSONDecodeError:
        raise ServerUnreachableError(
            f"HTTP {response.status_code} from {response.url} is not JSON"
        ) from None
    if not isinstance(answer, dict):
        raise ServerUnreachableError(f"HTTP {response.status_code}: not {what}")
    return answer


def _error_from(response: httpx.Response) -> ApiErrorResponse:
    """Read the API's error format, tolerating proxies that answer with something else."""
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return ApiErrorResponse(response.status_code, code, message, response.text)
