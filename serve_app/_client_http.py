"""What the client's modules share: URLs, the key's header, the API's error format, and
:class:`Call`, one request of the API described apart from how it is sent (so that the sync
and the asyncio client send the very same requests and read the very same answers).

Private to :mod:`serve_app.client` and its modules (``_client_sync``, ``_client_async``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from serve_app.errors import (
    ApiErrorResponse,
    InvalidJsonError,
    InvalidRequestError,
    InvalidRequestResponse,
    NotFoundError,
    NotFoundResponse,
    OverloadedError,
    OverloadedResponse,
    PayloadTooLargeError,
    PolicyViolationError,
    PolicyViolationResponse,
    RateLimitedError,
    RateLimitedResponse,
    ServerUnreachableError,
    SessionBusyResponse,
    SessionInUseError,
    SessionLimitError,
    SessionLimitResponse,
    SessionTerminatedError,
    SessionTerminatedResponse,
    UnauthorizedError,
    UnauthorizedResponse,
    UnavailableError,
    UnavailableResponse,
    UnsupportedMediaTypeError,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "KEY_ENV_VAR",
    "READ_TIMEOUT_S",
    "TIMEOUT",
    "Call",
    "api_error_response",
    "auth_headers",
    "checked_server",
    "error_from",
    "key_from_env",
    "object_from",
    "retry_after_s",
    "session_route",
    "url",
]

# The server holds the answer until the run ends, and its queue may add to that.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0
TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)

KEY_ENV_VAR = "EXEC_AGENT_API_KEY"
"""Where the client (and ``exec-agent run/batch --server``) find the key none was given."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class Call(Generic[_T]):
    """One request of the API and how its answer reads (``read``, given a 2xx answer, or one
    of ``answered``: statuses that are answers, not errors). ``idempotent``: safe to send
    again after a connection failed (see :mod:`serve_app._client_retry`)."""

    method: str
    route: str
    read: Callable[[httpx.Response], _T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    answered: frozenset[int] = frozenset()

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` (but the method and route)."""
        options: dict[str, Any] = {"headers": dict(self.headers)}
        if self.json is not None:
            options["json"] = self.json
        if self.params is not None:
            options["params"] = dict(self.params)
        return options

    def answer(self, response: httpx.Response) -> _T:
        """What ``response`` means: :meth:`read`'s value, or the error it carries, raised."""
        if response.is_error and response.status_code not in self.answered:
            raise error_from(response)
        return self.read(response)


def checked_server(server: str) -> str:
    """``server`` without a trailing slash; not an ``http(s)://`` URL, the server cannot be
    reached (said at once rather than retried)."""
    scheme, separator, _rest = server.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise ServerUnreachableError(f"cannot reach {server}: not an http(s):// URL")
    return server.rstrip("/")


def url(server: str, route: str) -> str:
    return server.rstrip("/") + route


def session_route(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def key_from_env(key: str | None) -> str | None:
    """``key``, else ``$EXEC_AGENT_API_KEY`` (None: neither, and no key is sent)."""
    return key if key is not None else os.environ.get(KEY_ENV_VAR) or None


def auth_headers(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def object_from(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of ``response`` (``what`` names it in the error if it is not one)."""
    try:
        answer = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ServerUnreachableError(
            f"HTTP {response.status_code} from {response.url} is not JSON"
        ) from None
    if not isinstance(answer, dict):
        raise ServerUnreachableError(f"HTTP {response.status_code}: not {what}")
    return answer


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (the API sends seconds; a date or junk: None)."""
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def error_from(response: httpx.Response) -> ApiErrorResponse:
    """Read the API's error format, tolerating proxies that answer with something else.
    A streamed response must have been read (``response.read()``) first."""
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        pass
    return api_error_response(
        response.status_code, code, message, response.text, retry_after_s(response.headers)
    )


RESPONSE_CLASSES: dict[str, type[ApiErrorResponse]] = {
    # Keyed by the server's own errors: each code is written once, in serve_app.errors.
    RateLimitedError.code: RateLimitedResponse,
    SessionLimitError.code: SessionLimitResponse,
    OverloadedError.code: OverloadedResponse,
    UnavailableError.code: UnavailableResponse,
    UnauthorizedError.code: UnauthorizedResponse,
    NotFoundError.code: NotFoundResponse,
    SessionInUseError.code: SessionBusyResponse,
    SessionTerminatedError.code: SessionTerminatedResponse,
    InvalidRequestError.code: InvalidRequestResponse,
    InvalidJsonError.code: InvalidRequestResponse,
    PayloadTooLargeError.code: InvalidRequestResponse,
    UnsupportedMediaTypeError.code: InvalidRequestResponse,
    PolicyViolationError.code: PolicyViolationResponse,
}


def api_error_response(
    http_status: int, code: str, message: str, body: str, retry_after_s: float | None = None
) -> ApiErrorResponse:
    """The server's error answer as the :class:`ApiErrorResponse` subclass of its ``code``
    (the base class for a code the client does not know)."""
    kind = RESPONSE_CLASSES.get(code, ApiErrorResponse)
    return kind(http_status, code, message, body, retry_after_s)
