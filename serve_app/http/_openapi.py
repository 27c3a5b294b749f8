"""The OpenAPI document of the API (``GET /openapi.json``; API.md, "Interface description").

Built from the code, never from a copy of it: the routes and what they declare (summaries,
``response_model``, ``responses=`` made with :func:`errors` and the headers here), the request
bodies the handlers take (the model of each ``Annotated[Model, Depends(...)]`` parameter: the
bodies are read by :mod:`serve_app.api.json_body`, so FastAPI alone would not see them), the
error body of :mod:`serve_app.api.errors`, and the server's own maxima (:class:`RequestBounds`:
``MAX_BATCH_ITEMS``, the limits' maxima, ``SESSION_MAX_TTL_S``) where the models cannot say them.
Added to what FastAPI makes of the routes:

- the security schemes (``Authorization: Bearer`` and ``X-API-Key``), required on ``/v1/``;
- the ``RateLimit-*`` headers on every ``/v1/`` answer to a known key;
- ``GET /v1/ws``: FastAPI leaves WebSockets out, so the upgrade is an operation of its own,
  its messages' schemas under ``x-websocket-messages``.

Usage (a route)::

    @router.get("/{id}", response_model=ExecutionRecord, responses=v1_errors(NotFoundError))

and :func:`openapi_document` (``app``) for the document, built once per app.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.params import Depends
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from executors import ExecutionRecord, RuntimeInfo
from serve_app.api import RequestBounds, SessionInfo
from serve_app.api.errors import ErrorBody, ErrorInfo
from serve_app.errors import (
    ConflictError,
    InvalidJsonError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyViolationError,
    RateLimitedError,
    ServiceError,
    SessionInUseError,
    SessionLimitError,
    SessionTerminatedError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from serve_app.http.service.interactive_messages import (
    AuthMessage,
    RunMessage,
    StdinEofMessage,
    StdinMessage,
)

__all__ = [
    "BODY_ERRORS",
    "IDEMPOTENCY_KEY",
    "KEY_REQUIRED",
    "LOCATION",
    "OPTIONAL_KEY",
    "Liveness",
    "ReadinessAnswer",
    "RuntimeList",
    "SessionList",
    "errors",
    "event_stream",
    "openapi_document",
    "v1_errors",
]

SCHEMAS = "#/components/schemas/"
_STATE_DOCUMENT = "openapi_document"
_BEARER, _API_KEY = "bearer", "apiKey"
SECURITY_SCHEMES = {
    _BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <api-key>` (`exec-agent keys create`).",
    },
    _API_KEY: {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_KEY_REQUIRED: list[dict[str, list[str]]] = [{_BEARER: []}, {_API_KEY: []}]
KEY_REQUIRED: dict[str, Any] = {"security": _KEY_REQUIRED}
"""``openapi_extra`` of a route outside ``/v1/`` that requires a key in a header."""
OPTIONAL_KEY: dict[str, Any] = {"security": [{}, *_KEY_REQUIRED]}
"""``openapi_extra`` of a route where a key is optional (then it must be valid)."""

_WHEN: dict[type[ServiceError], str] = {
    InvalidJsonError: "the body is not JSON (or not UTF-8, or nests too deep)",
    UnauthorizedError: "key missing, unknown or revoked",
    NotFoundError: "no such id for this key",
    MethodNotAllowedError: "the path does not take this method (`Allow` lists those it does)",
    ConflictError: "this `Idempotency-Key` was used with a different request body",
    SessionInUseError: "a call is already running in this session",
    SessionTerminatedError: "the session has ended (`message` says why)",
    PayloadTooLargeError: "body over `MAX_BODY_BYTES`, checked before parsing",
    UnsupportedMediaTypeError: "the body is not `application/json` (UTF-8, no Content-Encoding)",
    InvalidRequestError: "validation failed; `details` lists the fields",
    PolicyViolationError: "the code imports a module outside the import policy; `details` names it",
    RateLimitedError: "the key's rate limit (or its address's authentication failures); "
    "`Retry-After` says when to retry",
    SessionLimitError: "the key already has `MAX_SESSIONS_PER_KEY` active sessions",
    OverloadedError: "the executors' queue is full; retry after `Retry-After`",
    UnavailableError: "a dependency is down; retry after `Retry-After`",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
    405: {"Allow": {"schema": {"type": "string"}, "description": "The methods the path takes."}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
}
_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": "Executions the key may start per minute.",
    "RateLimit-Remaining": "What is left of it.",
    "RateLimit-Reset": "Seconds until it is whole again.",
}

LOCATION: dict[str, Any] = {
    "Location": {"schema": {"type": "string"}, "description": "The resource's address."}
}
"""``headers`` of an answer naming what it created (``/v1/executions/{id}``...)."""

IDEMPOTENCY_KEY: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "The same key and body within 24 h answers the first execution "
            "instead of running again.",
            "schema": {"type": "string", "maxLength": 255, "pattern": "^[\\x20-\\x7e]*$"},
        }
    ]
}
"""``openapi_extra`` of ``POST /v1/executions``: the header its dependency reads."""


def errors(*kinds: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """The error answers ``kinds`` as a route's ``responses``: one per status, the body
    :class:`ErrorBody` with ``code`` one of the codes of that status, each described."""
    by_status: dict[int, list[type[ServiceError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.http_status, []).append(kind)
    return {status: _error_answer(status, found) for status, found in sorted(by_status.items())}


V1_ERRORS = (UnauthorizedError, MethodNotAllowedError, RateLimitedError, UnavailableError)
"""What any ``/v1/`` route may answer: a refused key, another method, the key's rate, a
dependency down."""
BODY_ERRORS = (
    InvalidJsonError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    InvalidRequestError,
)
"""What a route with a JSON body may answer about it."""


def v1_errors(*kinds: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """:func:`errors` of ``kinds`` and of :data:`V1_ERRORS`."""
    return errors(*V1_ERRORS, *(kind for kind in kinds if kind not in V1_ERRORS))


def _error_answer(status: int, kinds: list[type[ServiceError]]) -> dict[str, Any]:
    codes = list(dict.fromkeys(kind.code for kind in kinds))
    schema = {
        "allOf": [{"$ref": f"{SCHEMAS}{ErrorBody.__name__}"}],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    }
    examples = {
        kind.code: {
            "value": {"error": {"code": kind.code, "message": _WHEN[kind], "request_id": "…"}}
        }
        for kind in kinds
    }
    answer: dict[str, Any] = {
        "description": "; ".join(f"`{kind.code}`: {_WHEN[kind]}" for kind in kinds),
        "content": {"application/json": {"schema": schema, "examples": examples}},
    }
    if status in _ERROR_HEADERS:
        answer["headers"] = _ERROR_HEADERS[status]
    return answer


def event_stream(what: str) -> dict[str, Any]:
    """``content`` of an answer that is Server-Sent Events with ``Accept: text/event-stream``:
    the schema of one event (``event`` and ``data``, as OpenAPI 3.2's ``itemSchema`` reads
    them), its ``data`` the JSON of :class:`StreamText` or of the final record."""

    def event(names: list[str], data: type[BaseModel]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"enum": names},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": SCHEMAS + data.__name__},
                },
            },
        }

    return {
        "text/event-stream": {
            "schema": {
                "description": f"{what} as Server-Sent Events while the program runs: "
                '`event: stdout` / `event: stderr` with `data: {"text": "..."}`, then one '
                "`event: record` whose data is the final execution record (the JSON of the "
                "synchronous answer), then the stream ends.",
                "oneOf": [
                    event(["stdout", "stderr"], StreamText),
                    event(["record"], ExecutionRecord),
                ],
            }
        }
    }


# --- answers the routes build as plain JSON, documented here


class Liveness(BaseModel):
    """``GET /health``."""

    status: Literal["ok"]


class Check(BaseModel):
    """One check of ``/health/ready``: ``ok`` and, for a caller with a key, its details."""

    model_config = ConfigDict(extra="allow")

    ok: bool


class ReadinessAnswer(BaseModel):
    """``GET /health/ready``."""

    status: Literal["ready", "degraded", "unavailable"]
    checks: dict[str, Check] = Field(
        description="database, redis, executors, sandbox, disk, memory, sessions"
    )


class SessionList(BaseModel):
    """``GET /v1/sessions``: a page of the key's sessions, newest first."""

    items: list[SessionInfo]
    next_cursor: str | None


class RuntimeList(BaseModel):
    """``GET /v1/runtimes``."""

    items: list[RuntimeInfo]


class StreamText(BaseModel):
    """The data of a streamed ``stdout`` or ``stderr`` event: output as the program wrote it."""

    text: str


class StreamOutput(BaseModel):
    """``/v1/ws``: output of the running program, as it writes it."""

    type: Literal["stdout", "stderr"]
    text: str


class StreamRecord(BaseModel):
    """``/v1/ws``: the run's final record; a new ``run`` may follow."""

    type: Literal["record"]
    record: ExecutionRecord


class StreamErrorInfo(ErrorInfo):
    """An error event's error: the API's, with the ``Retry-After`` of HTTP in seconds."""

    retry_after: int | None = None


class StreamError(BaseModel):
    """``/v1/ws``: a refusal; ``in_reply_to`` is the type of the message refused (``run``: that
    run is over, no record follows)."""

    type: Literal["error"]
    error: StreamErrorInfo
    in_reply_to: str | None


_CLIENT_MESSAGES = (AuthMessage, RunMessage, StdinMessage, StdinEofMessage)
_SERVER_MESSAGES = (StreamOutput, StreamRecord, StreamError)
_WEBSOCKET_DESCRIPTION = """\
A WebSocket for interactive programs. The client sends JSON text frames: `{"type": "run",
"request": {...}}` (an execution request; with `"session_id"` beside `request`, a session
call), then any number of `{"type": "stdin", "text": "..."}` and at most one
`{"type": "stdin_eof"}`. The service sends `{"type": "stdout"|"stderr", "text": "..."}` and
finally `{"type": "record", "record": {...}}`, after which a new `run` may follow. Errors are
`{"type": "error", "error": {...}}` with the codes of the HTTP routes. Authentication: the
`Authorization` (or `X-API-Key`) header, or for browsers `{"type": "auth", "api_key": "..."}` as
the first message. The schemas of the messages are under `x-websocket-messages`."""


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes under its request bounds (built once)."""
    document = getattr(app.state, _STATE_DOCUMENT, None)
    if not isinstance(document, dict):
        document = _build(app)
        setattr(app.state, _STATE_DOCUMENT, document)
    return document


def _build(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        separate_input_output_schemas=False,
    )
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    paths: dict[str, dict[str, Any]] = document["paths"]
    bodies: dict[tuple[str, str], type[BaseModel]] = {}
    websockets: list[tuple[str, APIWebSocketRoute]] = []
    for context in iter_route_contexts(app.routes):  # included routers' routes, whole paths
        route, path = context.original_route, context.path_format or ""
        if isinstance(route, APIRoute) and (model := _body_model(route)) is not None:
            for method in context.methods or ():
                bodies[(path, method.lower())] = model
        elif isinstance(route, APIWebSocketRoute):
            websockets.append((path, route))
    extra: list[type[BaseModel]] = [*bodies.values(), ErrorBody, StreamText]
    if websockets:
        extra += [*_CLIENT_MESSAGES, *_SERVER_MESSAGES]
    _add_schemas(schemas, extra)
    for (path, method), model in bodies.items():
        paths[path][method]["requestBody"] = _request_body(model, schemas)
    for path, route in websockets:
        paths.setdefault(path, {})["get"] = _websocket_operation(route)
    _drop_framework_validation_errors(document)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, _, operation in _operations(paths):
        if path.startswith("/v1/"):
            operation.setdefault("security", _KEY_REQUIRED)
            _add_rate_limit_headers(operation)
    _apply_bounds(schemas, _request_bounds(app))
    return document


def _request_bounds(app: FastAPI) -> RequestBounds:
    """The bounds the edge keeps on ``app`` (:func:`serve_app.api.install_edge`)."""
    bounds = getattr(app.state, "request_bounds", None)
    if not isinstance(bounds, RequestBounds):
        raise TypeError("no request bounds on the app: call install_edge(app, settings)")
    return bounds


def _body_model(route: APIRoute) -> type[BaseModel] | None:
    """The model of the handler's body parameter: ``Annotated[Model, Depends(...)]`` (the
    body read by :func:`serve_app.api.body_parser` or the like), if it has one."""
    hints = typing.get_type_hints(route.endpoint, include_extras=True)
    for name in inspect.signature(route.endpoint).parameters:
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        model, *metadata = typing.get_args(hint)
        if (
            inspect.isclass(model)
            and issubclass(model, BaseModel)
            and any(isinstance(item, Depends) for item in metadata)
        ):
            return model
    return None


def _add_schemas(schemas: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """``models`` (and the models they use) into ``schemas``. A name FastAPI used already
    keeps FastAPI's schema (it differs only in leaving out null defaults), but must be the same
    model: two models of one name would be one schema."""
    _, found = models_json_schema(
        [(model, "validation") for model in dict.fromkeys(models)],
        ref_template=SCHEMAS + "{model}",
    )
    for name, schema in found.get("$defs", {}).items():
        kept = schemas.setdefault(name, schema)
        if set(kept.get("properties", ())) != set(schema.get("properties", ())):
            raise ValueError(f"two models named {name} in the OpenAPI document")


def _request_body(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    # A body every field of which is optional may be left out (POST /v1/sessions).
    required = bool(schemas[model.__name__].get("required"))
    content = {"application/json": {"schema": {"$ref": SCHEMAS + model.__name__}}}
    return {"required": required, "content": content}


def _websocket_operation(route: APIWebSocketRoute) -> dict[str, Any]:
    def refs(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
        return {"oneOf": [{"$ref": SCHEMAS + model.__name__} for model in models]}

    return {
        "tags": ["streaming"],
        "summary": "Interactive programs (WebSocket)",
        "description": _WEBSOCKET_DESCRIPTION,
        "operationId": f"{route.name}_websocket",
        "security": [{}, *_KEY_REQUIRED],  # the key may come in the first message instead
        "parameters": [
            {
                "name": "Upgrade",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": ["websocket"]},
            }
        ],
        "responses": {
            "101": {"description": "Switching Protocols: the conversation of the description."}
        },
        "x-websocket-messages": {
            "client": refs(_CLIENT_MESSAGES),
            "server": refs(_SERVER_MESSAGES),
        },
    }


def _operations(paths: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in paths.items():
        for method, operation in item.items():
            yield path, method, operation


def _drop_framework_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 of its own (``HTTPValidationError``) on every route with a
    parameter; the API answers its own error body, declared by the routes that can refuse."""
    framework = {f"{SCHEMAS}HTTPValidationError"}
    for _, _, operation in _operations(document["paths"]):
        answer = operation.get("responses", {}).get("422", {})
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("$ref") in framework:
            del operation["responses"]["422"]
    schemas = document["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_rate_limit_headers(operation: dict[str, Any]) -> None:
    for status, answer in operation.get("responses", {}).items():
        if status in ("101", "401"):
            continue  # no HTTP answer, or no key to count against
        headers = answer.setdefault("headers", {})
        for name, description in _RATE_LIMIT_HEADERS.items():
            headers.setdefault(name, {"schema": {"type": "integer"}, "description": description})


def _apply_bounds(schemas: dict[str, Any], bounds: RequestBounds) -> None:
    """The server's maxima on the request schemas, where the models leave them to settings."""
    maxima = bounds.max_limits.to_api()
    for name in ("LimitsRequest", "SessionLimits", "SessionCallLimits"):
        for field, schema in schemas.get(name, {}).get("properties", {}).items():
            _set(schema, "maximum", maxima[field])
    if "BatchCreate" in schemas:
        _set(schemas["BatchCreate"]["properties"]["items"], "maxItems", bounds.max_batch_items)
    for field in ("idle_timeout_s", "ttl_s"):
        if "SessionCreate" in schemas:
            properties = schemas["SessionCreate"]["properties"]
            _set(properties[field], "maximum", bounds.session_max_ttl_s)
    for name in ("ExecutionCreate", "BatchItem", "SessionCall"):
        if name in schemas:
            code = schemas[name]["properties"]["code"]
            code["description"] = f"Python source, at most {bounds.max_code_bytes} bytes of UTF-8."


def _set(schema: dict[str, Any], keyword: str, value: Any) -> None:
    """``keyword: value`` on ``schema``, or on its non-null branch (``X | None``)."""
    branches = [branch for branch in schema.get("anyOf", ()) if branch.get("type") != "null"]
    for branch in branches or [schema]:
        branch[keyword] = value
