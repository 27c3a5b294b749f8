"""The one place where exceptions become HTTP answers in the API's error format.

    {"error": {"code": "<stable code>", "message": "<for a person>", "request_id": "...",
               "details": [...]}}          # details: 422 only

Client errors (4xx) carry the exception's own message, cut to a bounded length; server errors
(5xx) carry a fixed message, so no stack trace, DSN or internal address can leave the service.
``details`` never holds the input that failed, only where (``field``) and why.

No code or status is written here: each exception's class carries its own (see the tree in
:mod:`serve_app.errors`), and :func:`api_error` reads it. The engine's exceptions say whether
they are a refusal to retry later (``ExecutorError.retryable``: 503 ``unavailable``) or a fault.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from executors import ExecutorError
from serve_app.errors import (
    InvalidFieldsError,
    InvalidJsonError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PolicyViolationError,
    RateLimitedError,
    ServiceError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "ApiError",
    "ErrorBody",
    "ErrorInfo",
    "api_error",
    "error_response",
    "install_error_handlers",
    "log_error",
    "request_id_of",
    "validation_details",
]

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300
MAX_FIELD_PART_CHARS = 64
MAX_DETAILS = 20
DEFAULT_RETRY_AFTER_S = 1.0

# What a bare status from the framework (routing, FastAPI's own parsing) stands for: its code
# and message are those of the class; a 4xx none of them has is a plain `bad_request`.
_FRAMEWORK_STATUSES: dict[int, type[ServiceError]] = {
    kind.http_status: kind
    for kind in (
        InvalidJsonError,
        UnauthorizedError,
        NotFoundError,
        MethodNotAllowedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        InvalidRequestError,
        RateLimitedError,
        UnavailableError,
    )
}
_PASSED_HEADERS = frozenset({"allow", "retry-after", "www-authenticate"})


class ErrorInfo(BaseModel):
    """The ``error`` object of every error answer (and of ``/v1/ws``'s error events)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(description="The stable code of API.md's error table.")
    message: str = Field(description="For a person; never a stack trace or an address.")
    request_id: str = Field(description="The answer's X-Request-ID.")
    details: list[dict[str, str]] | None = Field(
        default=None,
        description="422 only: where (field, or the module a policy refuses) and why; "
        "never the input itself.",
    )


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error as the API answers it."""

    status: int
    code: str
    message: str
    details: tuple[Mapping[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, Any]:
        details = [dict(detail) for detail in self.details] or None
        error = ErrorInfo(
            code=self.code, message=self.message, request_id=request_id, details=details
        )
        return ErrorBody(error=error).model_dump(exclude_none=True)


def api_error(exc: BaseException) -> ApiError:
    """How the API answers ``exc``: the single mapping from exceptions to statuses and codes.

    A service error answers as its class says (``code``, ``http_status``, ``public_message``:
    see :mod:`serve_app.errors`); an engine refusal (``ExecutorError.retryable``) as
    :class:`UnavailableError`; anything else is a fault: 500 ``internal_error``.
    """
    if isinstance(exc, ExecutorError) and exc.retryable:
        return _service_error(UnavailableError, exc)
    if isinstance(exc, ServiceError):
        # The class, not the instance: ApiErrorResponse's instance holds another server's code.
        return _service_error(type(exc), exc)
    if isinstance(exc, HTTPException):
        return _http_error(exc.status_code, exc.headers)
    if isinstance(exc, RequestValidationError):
        details = validation_details(exc.errors())
        kind = InvalidFieldsError
        return ApiError(kind.http_status, kind.code, "the request failed validation", details)
    return _internal_error()


def error_response(
    error: ApiError, request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON response for ``error``; ``headers`` are added to the error's own."""
    return JSONResponse(
        error.body(request_id),
        status_code=error.status,
        headers={**error.headers, **(headers or {})},
    )


def validation_details(errors: Iterable[Mapping[str, Any]]) -> tuple[dict[str, str], ...]:
    """``details`` entries for pydantic errors: field path, message and type, all bounded."""
    details: list[dict[str, str]] = []
    for error in errors:
        if len(details) == MAX_DETAILS:
            break
        details.append(
            {
                "field": _field_path(error.get("loc", ())),
                "message": _clean(_message(error)),
                "type": _clean(str(error.get("type", "invalid")), MAX_FIELD_PART_CHARS),
            }
        )
    return tuple(details)


def install_error_handlers(app: Starlette) -> None:
    """Answer service and framework errors in the API's format.

    Anything else that escapes a route becomes a generic 500 in
    :class:`~serve_app.api.middleware.RequestContextMiddleware`, which also logs it.
    """
    handled = (ServiceError, HTTPException, RequestValidationError, *_retryable_executor_errors())
    for kind in handled:
        app.add_exception_handler(kind, _handle)


async def _handle(request: Request, exc: Exception) -> Response:
    error = api_error(exc)
    log_error(error, exc)
    return error_response(error, request_id_of(request))


def log_error(error: ApiError, exc: BaseException) -> None:
    """Log what the client cannot see: the trace of a 500, the cause of a 503."""
    if error.status == 500:
        logger.error("internal error: %s", type(exc).__name__, exc_info=exc)
    elif error.status >= 500:
        logger.warning("answered %d %s: %s", error.status, error.code, type(exc).__name__)


def request_id_of(request: Request) -> str:
    """The request id the middleware assigned (a placeholder if it is not installed)."""
    request_id = request.scope.get("state", {}).get("request_id")
    return request_id if isinstance(request_id, str) else "-"


def _service_error(kind: type[ServiceError], exc: BaseException) -> ApiError:
    status = kind.http_status
    if status < 500:
        return ApiError(status, kind.code, _clean(str(exc)), _details(exc), _headers(exc, status))
    if kind.public_message is None:
        return _internal_error()  # a fault, like any other: its own code is for the log only
    # Never the exception's message: it may name a host, a DSN or a file.
    return ApiError(status, kind.code, kind.public_message, headers=_retry_after(exc))


def _internal_error() -> ApiError:
    return ApiError(ServiceError.http_status, ServiceError.code, "internal error")


def _retryable_executor_errors() -> tuple[type[ExecutorError], ...]:
    """The engine's refusals, answered as 503s here; its other errors are faults, left to the
    middleware's last resort, which reports them (Sentry) as well as answering 500."""
    found: list[type[ExecutorError]] = []
    pending: list[type[ExecutorError]] = [ExecutorError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind.retryable:
            found.append(kind)
    return tuple(found)


def _http_error(status: int, headers: Mapping[str, str] | None) -> ApiError:
    kind = _FRAMEWORK_STATUSES.get(status)
    if status >= 500:
        code = kind.code if kind is not None else ServiceError.code
        return ApiError(status, code, "internal error" if status == 500 else "retry later")
    code = kind.code if kind is not None else "bad_request"
    try:
        message = HTTPStatus(status).phrase.lower()
    except ValueError:
        message = "bad request"
    passed = {k: v for k, v in (headers or {}).items() if k.lower() in _PASSED_HEADERS}
    return ApiError(status, code, message, headers=passed)


def _details(exc: BaseException) -> tuple[Mapping[str, str], ...]:
    if isinstance(exc, InvalidFieldsError):
        # Raised anywhere, maybe with a client's key in it: bound and sanitise here, once.
        return tuple(
            {name: _clean(str(value)) for name, value in detail.items()}
            for detail in exc.details[:MAX_DETAILS]
        )
    if isinstance(exc, PolicyViolationError):
        return tuple({"module": _clean(name, MAX_FIELD_PART_CHARS)} for name in exc.modules)
    return ()


def _headers(exc: BaseException, status: int) -> dict[str, str]:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 429:
        return _retry_after(exc)
    return {}


def _retry_after(exc: BaseException) -> dict[str, str]:
    seconds = getattr(exc, "retry_after_s", None)
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        seconds = DEFAULT_RETRY_AFTER_S
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    # pydantic prefixes the text of a validator's ValueError; the field already says where.
    return message.removeprefix("Value error, ")


def _field_path(loc: Sequence[Any]) -> str:
    parts = [_clean(str(part), MAX_FIELD_PART_CHARS) for part in loc]
    return ".".join(parts) or "(body)"


def _clean(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Bounded and always encodable: a lone surrogate must not turn a 4xx into a 500."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
