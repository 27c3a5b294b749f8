"""Every request of the API as a :class:`Call`: its route, body and how its answer reads into
the server's own models. The sync and the asyncio client send these and nothing else.

Usage::

    call = calls.create_execution(execution_body("print(1)"), wait=True)
    record = call.answer(http.request(call.method, call.route, **call.options()))
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from executors import ExecutionRecord, RuntimeInfo
from serve_app import files as api_files
from serve_app._client_http import Call, object_from, session_route
from serve_app.api import SessionInfo
from serve_app.api.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.errors import ServerUnreachableError, describe_validation_error

__all__ = [
    "MAX_WAIT_S",
    "CallOptions",
    "RunOptions",
    "SessionOptions",
    "artifact",
    "batch",
    "create_batch",
    "create_execution",
    "create_session",
    "delete_session",
    "execution",
    "execution_body",
    "executions_page",
    "health",
    "runtimes",
    "session",
    "session_call",
    "sessions_page",
]

_M = TypeVar("_M", bound=BaseModel)

MAX_WAIT_S = 60.0
"""The longest ``?wait_s=`` the API takes; a longer wait is several such reads."""


class RunOptions(TypedDict, total=False):
    """The fields of an execution request besides ``code`` (API.md, "Run one snippet" and
    "Evaluation"); left out, the server's defaults."""

    stdin: str
    files: Mapping[str, str | bytes]
    """Path -> text, or bytes (sent as ``{"base64": ...}``)."""
    runtime: str
    limits: Mapping[str, Any]
    cache: bool
    test_code: str
    cases: Sequence[Mapping[str, str]]
    judge: Literal["isolated", "in_process"]


class CallOptions(TypedDict, total=False):
    """The fields of a call in a session besides ``code``; ``limits``: ``wall_timeout_s``,
    ``cpu_time_s``, ``max_output_bytes`` of this call."""

    stdin: str
    files: Mapping[str, str | bytes]
    limits: Mapping[str, Any]


class SessionOptions(TypedDict, total=False):
    """The fields of ``POST /v1/sessions``; left out, the server's defaults."""

    runtime: str
    limits: Mapping[str, Any]
    idle_timeout_s: float
    ttl_s: float


def execution_body(code: str, **options: Any) -> dict[str, Any]:
    """The JSON body of an execution (``options``: :class:`RunOptions`; ``files`` as text or
    bytes). Also a batch item, or (with ``stdin``, ``files``, ``limits`` alone) a session call."""
    body: dict[str, Any] = {"code": code}
    for name, value in options.items():
        if name == "files":
            value = api_files.to_api(value)
        elif name == "limits":
            value = dict(value)
        elif name == "cases":
            value = [dict(case) for case in value]
        body[name] = value
    return body


def create_execution(
    body: Mapping[str, Any], *, wait: bool, idempotency_key: str | None = None
) -> Call[ExecutionRecord]:
    """``POST /v1/executions``: a fresh ``Idempotency-Key`` unless given, so that sending it
    again after a lost connection finds the first execution instead of running another."""
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    json = dict(body) if wait else {**body, "wait": False}  # true: the API's default
    return Call("POST", "/v1/executions", _record, json, headers=headers)


def execution(execution_id: str | uuid.UUID, wait_s: float = 0.0) -> Call[ExecutionRecord]:
    """``GET /v1/executions/{id}``, held up to ``wait_s`` (at most :data:`MAX_WAIT_S`) until
    the execution is terminal."""
    params = {"wait_s": min(wait_s, MAX_WAIT_S)} if wait_s > 0 else None
    return Call(
        "GET", f"/v1/executions/{quote(str(execution_id), safe='')}", _record, params=params
    )


def executions_page(limit: int, cursor: str | None) -> Call[ExecutionPage]:
    """``GET /v1/executions``: a page of the key's records, newest first."""
    return Call("GET", "/v1/executions", _execution_page, params=_page(limit, cursor))


def artifact(execution_id: str | uuid.UUID, path: str) -> Call[bytes]:
    """``GET /v1/executions/{id}/artifacts/{path}``: the file's bytes."""
    route = f"/v1/executions/{quote(str(execution_id), safe='')}/artifacts/{quote(path, safe='/')}"
    return Call("GET", route, lambda response: response.content)


def create_batch(items: Iterable[Mapping[str, Any]]) -> Call[BatchAccepted]:
    """``POST /v1/batches`` (not idempotent: the API takes no ``Idempotency-Key`` there)."""
    body = {"items": [dict(item) for item in items]}
    read = _model(BatchAccepted, "a batch")
    return Call("POST", "/v1/batches", read, body, idempotent=False)


def batch(batch_id: str, wait_s: float = 0.0) -> Call[BatchAnswer]:
    """``GET /v1/batches/{id}``, held up to ``wait_s`` until the batch is done."""
    params = {"wait_s": min(wait_s, MAX_WAIT_S)} if wait_s > 0 else None
    route = f"/v1/batches/{quote(batch_id, safe='')}"
    return Call("GET", route, _model(BatchAnswer, "a batch"), params=params)


def runtimes() -> Call[list[RuntimeInfo]]:
    """``GET /v1/runtimes``."""
    return Call("GET", "/v1/runtimes", lambda response: _items(response, RuntimeInfo))


def health(*, ready: bool = False) -> Call[dict[str, Any]]:
    """``GET /health`` (liveness) or ``/health/ready`` (whose 503 is an answer: not ready)."""
    route, answered = ("/health/ready", frozenset({503})) if ready else ("/health", frozenset())
    return Call("GET", route, lambda r: object_from(r, "a health answer"), answered=answered)


def create_session(options: SessionOptions) -> Call[SessionInfo]:
    body: dict[str, Any] = dict(options)
    if "limits" in options:
        body["limits"] = dict(options["limits"])
    return Call("POST", "/v1/sessions", _session, body, idempotent=False)


def session(session_id: str) -> Call[SessionInfo]:
    return Call("GET", session_route(session_id), _session)


def sessions_page(limit: int, cursor: str | None) -> Call[tuple[list[SessionInfo], str | None]]:
    """``GET /v1/sessions``: a page of the key's sessions, newest first, and the next cursor."""

    def read(response: httpx.Response) -> tuple[list[SessionInfo], str | None]:
        cursor = object_from(response, "a page").get("next_cursor")
        if not isinstance(cursor, str | None):
            raise ServerUnreachableError("a page whose next_cursor is not a string")
        return _items(response, SessionInfo), cursor

    return Call("GET", "/v1/sessions", read, params=_page(limit, cursor))


def delete_session(session_id: str) -> Call[None]:
    return Call("DELETE", session_route(session_id), lambda _response: None)


def session_call(session_id: str, body: Mapping[str, Any]) -> Call[ExecutionRecord]:
    """``POST /v1/sessions/{id}/executions``: never sent twice (the session's state would be)."""
    route = f"{session_route(session_id)}/executions"
    return Call("POST", route, _record, dict(body), idempotent=False)


def _page(limit: int, cursor: str | None) -> dict[str, Any]:
    return {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}


def _model(model: type[_M], what: str) -> Callable[[httpx.Response], _M]:
    return lambda response: _validated(model, object_from(response, what), what)


def _validated(model: type[_M], data: Any, what: str) -> _M:
    """``data`` as ``model``; an answer that is not one (a server of another version, or not
    this API) is the server's failure to answer, not a crash of the caller."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ServerUnreachableError(f"not {what}: {describe_validation_error(exc)}") from None


_record = _model(ExecutionRecord, "an execution record")
_session = _model(SessionInfo, "a session")
_execution_page = _model(ExecutionPage, "a page")


def _items(response: httpx.Response, model: type[_M]) -> list[_M]:
    items = object_from(response, "a list").get("items")
    if not isinstance(items, list):
        raise ServerUnreachableError("a list answer without items")
    return [_validated(model, item, f"a {model.__name__}") for item in items]
