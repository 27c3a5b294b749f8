"""Exceptions of the serve_app package.

    ServiceError                  base of everything raised here; ``code`` is a stable string
    ├── ConfigurationError        the settings are invalid or unsafe; the service refuses to start
    ├── InvalidRequestError       a request (or command line) asks for something not allowed
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

from pydantic import ValidationError

__all__ = [
    "ApiClientError",
    "ApiErrorResponse",
    "ConfigurationError",
    "ConflictError",
    "DatabaseNotReadyError",
    "InvalidRequestError",
    "NotFoundError",
    "ServerUnreachableError",
    "ServiceError",
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
