"""Exceptions of the serve_app package.

    ServiceError                  base of everything raised here; ``code`` is a stable string
    ├── ConfigurationError        the settings are invalid or unsafe; the service refuses to start
    ├── InvalidRequestError       a request (or command line) asks for something not allowed
    │   ├── InvalidFieldsError      fields of a request body failed validation; ``details`` names them
    │   ├── InvalidJsonError        the body is not JSON (malformed, not UTF-8, a BOM, too deep)
    │   ├── PayloadTooLargeError    the body is over the size cap
    │   ├── UnsupportedMediaTypeError  the body is not ``application/json``, or is encoded
    │   └── PolicyViolationError    the code imports a module outside the import policy
    ├── UnauthorizedError         no API key, or an unknown or revoked one
    ├── RateLimitedError          over the key's request rate; ``retry_after_s``
    ├── OverloadedError           the executors' queue is full; ``retry_after_s``
    ├── UnavailableError          a dependency is down; ``retry_after_s``
    │   ├── DatabaseUnavailableError  the database cannot be reached (down, restarting, pool full)
    │   └── (ratelimit) StoreUnavailableError  the limiter's Redis is down or backing off
    ├── NotFoundError             no such record for this caller (another key's id included)
    ├── ConflictError             the record's state forbids the change (finished twice, name taken)
    ├── DatabaseNotReadyError     the database schema is missing or not at this version's revision
    └── ApiClientError            the command line's HTTP client could not get a record
        ├── ServerUnreachableError  no answer from the server (connection, timeout, not JSON)
        └── ApiErrorResponse        the server answered with an error in the API's error format

HTTP statuses appear only at the edges: the API's handlers map service errors to them, and
:class:`ApiErrorResponse` carries the status a server sent back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

__all__ = [
    "ApiClientError",
    "ApiErrorResponse",
    "ConfigurationError",
    "ConflictError",
    "DatabaseNotReadyError",
    "DatabaseUnavailableError",
    "InvalidFieldsError",
    "InvalidJsonError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PolicyViolationError",
    "RateLimitedError",
    "ServerUnreachableError",
    "ServiceError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "describe_validation_error",
]


class ServiceError(Exception):
    """Base class of the serve_app package's exceptions."""

    code = "service_error"


class ConfigurationError(ServiceError):
    """Settings from the environment or ``.env`` failed validation."""

    code = "invalid_configuration"


class InvalidRequestError(ServiceError):
    """What was asked for is malformed or over the server's limits; nothing was run."""

    code = "invalid_request"


class InvalidFieldsError(InvalidRequestError):
    """Fields of a request failed validation. ``details`` has one ``{"field", "message",
    "type"}`` entry per failure, already bounded in size (never the input itself)."""

    def __init__(self, message: str, details: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(message)
        self.details = tuple(dict(detail) for detail in details)


class InvalidJsonError(InvalidRequestError):
    """The body is not a JSON text this service reads (see ``serve_app.api.json_body``)."""

    code = "invalid_json"


class PayloadTooLargeError(InvalidRequestError):
    """The body is longer than ``limit_bytes``; it was not (or no longer) read."""

    code = "payload_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"the request body is over {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class UnsupportedMediaTypeError(InvalidRequestError):
    """The body is not ``application/json`` in UTF-8, or has a ``Content-Encoding``."""

    code = "unsupported_media_type"


class PolicyViolationError(InvalidRequestError):
    """The code imports modules outside the configured import policy (named in ``modules``)."""

    code = "policy_violation"

    def __init__(self, message: str, modules: Sequence[str]) -> None:
        super().__init__(message)
        self.modules = tuple(modules)


class UnauthorizedError(ServiceError):
    """No API key, or one that is unknown or revoked; nothing was done."""

    code = "unauthorized"


class _RetryLaterError(ServiceError):
    """A refusal the caller may retry after ``retry_after_s`` seconds."""

    default_message = "retry later"

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.retry_after_s = retry_after_s


class RateLimitedError(_RetryLaterError):
    """The key is over its request rate (or its cap on executions in flight)."""

    code = "rate_limited"
    default_message = "rate limit exceeded"


class OverloadedError(_RetryLaterError):
    """The executors' bounded queue is full; the request was not accepted."""

    code = "overloaded"
    default_message = "the service is at capacity"


class UnavailableError(_RetryLaterError):
    """A dependency (database, limiter store, executors) is down; the request was not run."""

    code = "unavailable"
    default_message = "a dependency is unavailable"


class DatabaseUnavailableError(UnavailableError):
    """The database could not be reached (down, restarting, or every pooled connection busy)."""

    default_message = "the database is unavailable"


class NotFoundError(ServiceError):
    """Nothing by that id or name is visible to the caller; nothing was changed."""

    code = "not_found"


class ConflictError(ServiceError):
    """The change contradicts what is stored: a second terminal write, a name already taken,
    an ``Idempotency-Key`` reused with a different body."""

    code = "conflict"


class DatabaseNotReadyError(ServiceError):
    """The database has no schema, or one of another revision: ``exec-agent db upgrade``."""

    code = "database_not_ready"


class ApiClientError(ServiceError):
    """The command line's client did not obtain an execution record from a server."""

    code = "api_client_error"


class ServerUnreachableError(ApiClientError):
    """The server could not be reached or did not answer with JSON."""

    code = "server_unreachable"


class ApiErrorResponse(ApiClientError):
    """The server refused the request; ``body`` is its answer, verbatim."""

    def __init__(self, http_status: int, code: str, message: str, body: str) -> None:
        self.http_status = http_status
        self.code = code
        self.body = body
        super().__init__(f"HTTP {http_status} {code}: {message}")


def describe_validation_error(exc: ValueError) -> str:
    """One line naming each failed field; never echoes the input (it may be a secret)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)
