"""Exceptions of the serve_app package: each class carries its code and HTTP status, once.

    ServiceError                   base: a fault of the service (500 ``internal_error``)
    ├── ConfigurationError         the settings are invalid or unsafe; the service refuses to start
    ├── InvalidRequestError        422 a request (or command line) asks for what is not allowed
    │   ├── InvalidFieldsError       fields of a request failed validation; ``details`` names them
    │   ├── InvalidJsonError         400 the body is not JSON (malformed, not UTF-8, BOM, too deep)
    │   ├── MethodNotAllowedError    405 the route does not take this method (the router's refusal)
    │   ├── PayloadTooLargeError     413 the body is over the size cap
    │   ├── UnsupportedMediaTypeError  415 the body is not ``application/json``, or is encoded
    │   └── PolicyViolationError     422 the code imports a module outside the import policy
    ├── UnauthorizedError          401 no API key, or an unknown or revoked one
    ├── RateLimitedError           429 over the key's request rate; ``retry_after_s``
    ├── OverloadedError            503 the executors' queue is full; ``retry_after_s``
    ├── UnavailableError           503 a dependency is down; ``retry_after_s``
    │   ├── DatabaseUnavailableError  the database cannot be reached (down, restarting, pool full)
    │   ├── DatabaseNotReadyError     the database schema is missing or not at this revision
    │   └── StoreUnavailableError     the limiter's (and cache's) Redis is down or backing off
    ├── NotFoundError              404 no such record for this caller (another key's id included)
    ├── ConflictError              409 the record's state forbids the change (finished twice, ...)
    │   └── SessionInUseError        409 a call is already running in the session
    ├── SessionTerminatedError     410 the session has ended; ``reason`` says why
    ├── SessionLimitError          429 the key has ``MAX_SESSIONS_PER_KEY`` active sessions
    └── ApiClientError             the Python client (and the command line) got no answer
        ├── ServerUnreachableError   no answer from the server (connection, timeout, not JSON)
        └── ApiErrorResponse         the server answered with an error in the API's error format;
            │                        ``code``, ``http_status``, ``retry_after_s`` on the instance
            ├── RateLimitedResponse    429 ``rate_limited`` (retried by the client)
            ├── SessionLimitResponse   429 ``session_limit``
            ├── OverloadedResponse     503 ``overloaded`` (retried by the client)
            ├── UnavailableResponse    503 ``unavailable`` (retried by the client)
            ├── UnauthorizedResponse   401 ``unauthorized``
            ├── NotFoundResponse       404 ``not_found``
            ├── SessionBusyResponse    409 ``session_busy``
            ├── SessionTerminatedResponse  410 ``session_terminated``
            └── InvalidRequestResponse 4xx ``invalid_request`` (and ``invalid_json``, ...)
                └── PolicyViolationResponse  422 ``policy_violation``

What the API answers for an error is written here only, on its class, and inherited:

* ``code``: the stable string of the API's error table. A class that keeps its parent's code
  (``InvalidFieldsError``, ``DatabaseUnavailableError``, ...) is a refinement the client does
  not need to tell apart.
* ``http_status``: the status the API answers with. 500 means a fault of the service: the API
  then answers as for any fault (``internal_error``, a fixed message), and the class's own
  ``code`` (``invalid_configuration``, ``server_unreachable``) only names it to logs and the
  command line.
* ``public_message``: what a 503 says instead of the exception's message (which may name a
  host or a DSN). A 4xx says the exception's own message.
* ``retry_after_s``: on the instance, for 429 and 503, when to try again (``Retry-After``).
  Never on a class: Ray's wrapper of a remote error (``RayTaskError(...)``) forwards only
  what its class does not have to the error it wraps.

:mod:`serve_app.api.errors` turns these into HTTP answers, reading the class; it keeps no table
of its own. :class:`ApiErrorResponse` carries, on the instance, the status and code a server
sent back; the client makes the subclass of its code (``serve_app._client_http``) (the client's typed errors:
``except NotFoundResponse``, or ``exc.code == "not_found"`` alike).

Every exception passes all its constructor's arguments to ``Exception.__init__`` (as Ray
Serve's ``BackPressureError`` does), so ``args`` rebuilds it when it is unpickled, e.g. after
crossing a Ray process boundary; the message is then made by ``__str__``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

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
    "InvalidRequestResponse",
    "MethodNotAllowedError",
    "NotFoundError",
    "NotFoundResponse",
    "OverloadedError",
    "OverloadedResponse",
    "PayloadTooLargeError",
    "PolicyViolationError",
    "PolicyViolationResponse",
    "RateLimitedError",
    "RateLimitedResponse",
    "ServerUnreachableError",
    "ServiceError",
    "SessionBusyResponse",
    "SessionInUseError",
    "SessionLimitError",
    "SessionLimitResponse",
    "SessionTerminatedError",
    "SessionTerminatedResponse",
    "StoreUnavailableError",
    "UnauthorizedError",
    "UnauthorizedResponse",
    "UnavailableError",
    "UnavailableResponse",
    "UnsupportedMediaTypeError",
    "describe_validation_error",
]


class ServiceError(Exception):
    """Base class of the serve_app package's exceptions: a fault of the service."""

    code: str = "internal_error"
    http_status: int = 500
    public_message: str | None = None
    """What the API says instead of the exception's message; None: its own (4xx only)."""


class ConfigurationError(ServiceError):
    """Settings from the environment or ``.env`` failed validation."""

    code = "invalid_configuration"


class InvalidRequestError(ServiceError):
    """What was asked for is malformed or over the server's limits; nothing was run."""

    code = "invalid_request"
    http_status = 422


class InvalidFieldsError(InvalidRequestError):
    """Fields of a request failed validation. ``details`` has one ``{"field", "message",
    "type"}`` entry per failure, already bounded in size (never the input itself)."""

    def __init__(self, message: str, details: Sequence[Mapping[str, str]] = ()) -> None:
        self.message = message
        self.details = tuple(dict(detail) for detail in details)
        super().__init__(message, self.details)

    def __str__(self) -> str:
        return self.message


class InvalidJsonError(InvalidRequestError):
    """The body is not a JSON text this service reads (see ``serve_app.api.json_body``)."""

    code = "invalid_json"
    http_status = 400


class MethodNotAllowedError(InvalidRequestError):
    """The route exists but does not take this method. The router raises it as its own HTTP
    405; this class holds the code the API answers with."""

    code = "method_not_allowed"
    http_status = 405


class PayloadTooLargeError(InvalidRequestError):
    """The body is longer than ``limit_bytes``; it was not (or no longer) read."""

    code = "payload_too_large"
    http_status = 413

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(limit_bytes)

    def __str__(self) -> str:
        return f"the request body is over {self.limit_bytes} bytes"


class UnsupportedMediaTypeError(InvalidRequestError):
    """The body is not ``application/json`` in UTF-8, or has a ``Content-Encoding``."""

    code = "unsupported_media_type"
    http_status = 415


class PolicyViolationError(InvalidRequestError):
    """The code imports modules outside the configured import policy (named in ``modules``)."""

    code = "policy_violation"

    def __init__(self, message: str, modules: Sequence[str]) -> None:
        self.message = message
        self.modules = tuple(modules)
        super().__init__(message, self.modules)

    def __str__(self) -> str:
        return self.message


class UnauthorizedError(ServiceError):
    """No API key, or one that is unknown or revoked; nothing was done."""

    code = "unauthorized"
    http_status = 401


class _RetryLaterError(ServiceError):
    """A refusal the caller may retry after ``retry_after_s`` seconds."""

    default_message = "retry later"

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.message = message or self.default_message
        super().__init__(retry_after_s, message)

    def __str__(self) -> str:
        return self.message


class RateLimitedError(_RetryLaterError):
    """The key is over its request rate (or its cap on executions in flight)."""

    code = "rate_limited"
    http_status = 429
    default_message = "rate limit exceeded"


class OverloadedError(_RetryLaterError):
    """The executors' bounded queue is full; the request was not accepted."""

    code = "overloaded"
    http_status = 503
    public_message = "the service is at capacity; retry later"
    default_message = "the service is at capacity"


class UnavailableError(_RetryLaterError):
    """A dependency (database, limiter store, executors) is down; the request was not run."""

    code = "unavailable"
    http_status = 503
    public_message = "the service is temporarily unavailable; retry later"
    default_message = "a dependency is unavailable"


class DatabaseUnavailableError(UnavailableError):
    """The database could not be reached (down, restarting, or every pooled connection busy)."""

    default_message = "the database is unavailable"


class DatabaseNotReadyError(UnavailableError):
    """The database has no schema, or one of another revision: ``exec-agent db upgrade``."""

    def __init__(self, message: str) -> None:
        # No advice on when: a migration is an operator's action (the API says 1 s, as it
        # does for any 503 that gives none).
        super().__init__(1.0, message)
        self.args = (message,)  # this constructor's arguments: what unpickling calls it with


class StoreUnavailableError(UnavailableError):
    """The limiter's store failed or is known down; the caller applies its failure policy.

    Raised by :class:`serve_app.ratelimit.StoreGuard` (the limiter's and the cache's Redis)."""

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        super().__init__(
            retry_after_s, message or f"store unavailable; next attempt in {retry_after_s:.3f} s"
        )


class NotFoundError(ServiceError):
    """Nothing by that id or name is visible to the caller; nothing was changed."""

    code = "not_found"
    http_status = 404


class ConflictError(ServiceError):
    """The change contradicts what is stored: a second terminal write, a name already taken,
    an ``Idempotency-Key`` reused with a different body."""

    code = "conflict"
    http_status = 409


class SessionInUseError(ConflictError):
    """A call is already running in the session: one at a time (API.md, Sessions)."""

    code = "session_busy"


class SessionTerminatedError(ServiceError):
    """The session has ended; ``reason`` is its ``terminated_reason`` (``idle``, ``lost``...)
    and the message says why, for a person."""

    code = "session_terminated"
    http_status = 410

    def __init__(self, message: str, reason: str) -> None:
        self.message = message
        self.reason = reason
        super().__init__(message, reason)

    def __str__(self) -> str:
        return self.message


class SessionLimitError(ServiceError):
    """The key already has ``limit`` active sessions; one must end before another starts."""

    code = "session_limit"
    http_status = 429

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(limit)

    def __str__(self) -> str:
        return f"at most {self.limit} active sessions per key: end one first"


class ApiClientError(ServiceError):
    """The Python client (or the command line through it) did not obtain an answer."""

    code = "api_client_error"


class ServerUnreachableError(ApiClientError):
    """The server could not be reached or did not answer with JSON."""

    code = "server_unreachable"


class ApiErrorResponse(ApiClientError):
    """The server refused the request; ``body`` is its answer, verbatim.

    ``http_status`` and ``code`` on the instance are the server's; the class's (inherited
    from :class:`ApiClientError`) say how this service would answer, were one to escape.
    ``retry_after_s``: the answer's ``Retry-After`` in seconds (None: it gave none)."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        body: str,
        retry_after_s: float | None = None,
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after_s = retry_after_s
        super().__init__(http_status, code, message, body, retry_after_s)

    @property
    def details(self) -> list[dict[str, Any]]:
        """The answer's ``error.details`` (a 422's fields: ``field``, ``message``, ``type``)."""
        try:
            details = json.loads(self.body)["error"]["details"]
        except (ValueError, KeyError, TypeError):
            return []
        return (
            [item for item in details if isinstance(item, dict)]
            if isinstance(details, list)
            else []
        )

    def __str__(self) -> str:
        return f"HTTP {self.http_status} {self.code}: {self.message}"


class RateLimitedResponse(ApiErrorResponse):
    """429 ``rate_limited``: the key is over its rate; ``retry_after_s`` says when to retry."""


class SessionLimitResponse(ApiErrorResponse):
    """429 ``session_limit``: the key has its maximum of active sessions."""


class OverloadedResponse(ApiErrorResponse):
    """503 ``overloaded``: the executors' queue is full; retry after ``retry_after_s``."""


class UnavailableResponse(ApiErrorResponse):
    """503 ``unavailable``: a dependency of the server is down; retry after ``retry_after_s``."""


class UnauthorizedResponse(ApiErrorResponse):
    """401 ``unauthorized``: the key is missing, unknown or revoked."""


class NotFoundResponse(ApiErrorResponse):
    """404 ``not_found``: no such id (or path) for this key."""


class SessionBusyResponse(ApiErrorResponse):
    """409 ``session_busy``: a call is already running in the session."""


class SessionTerminatedResponse(ApiErrorResponse):
    """410 ``session_terminated``: the session has ended (the message says why)."""


class InvalidRequestResponse(ApiErrorResponse):
    """The request was refused as it is (422 ``invalid_request`` with ``details``, 400
    ``invalid_json``, 413, 415): sending it again cannot help."""


class PolicyViolationResponse(InvalidRequestResponse):
    """422 ``policy_violation``: the code imports a module outside the import policy."""


def describe_validation_error(exc: ValueError) -> str:
    """One line naming each failed field; never echoes the input (it may be a secret)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)
