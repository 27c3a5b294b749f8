"""The HTTP service and command line of the Python Execution Agent.

The sandbox engine lives in :mod:`executors`; this package configures it (:mod:`.settings`),
exposes it over HTTP on Ray Serve, and drives it from the ``exec-agent`` command line
(:mod:`.cli`).
"""

from __future__ import annotations

from serve_app.errors import (
    ApiClientError,
    ApiErrorResponse,
    ConfigurationError,
    ConflictError,
    DatabaseNotReadyError,
    DatabaseUnavailableError,
    InvalidFieldsError,
    InvalidJsonError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PolicyViolationError,
    RateLimitedError,
    ServerUnreachableError,
    ServiceError,
    SessionInUseError,
    SessionLimitError,
    SessionTerminatedError,
    StoreUnavailableError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

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
    "MethodNotAllowedError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PolicyViolationError",
    "RateLimitedError",
    "ServerUnreachableError",
    "ServiceError",
    "SessionInUseError",
    "SessionLimitError",
    "SessionTerminatedError",
    "StoreUnavailableError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
]
