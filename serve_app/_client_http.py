"""What the client's modules share: URLs, the key's header, one call and the API's error format.

Private to :mod:`serve_app.client` and its streaming modules (``_client_stream``, ``_client_ws``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from serve_app.errors import ApiErrorResponse, ServerUnreachableError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "TIMEOUT",
    "auth_headers",
    "call",
    "error_from",
    "object_from",
    "session_route",
    "url",
]

# The server holds the answer until the run ends, and its queue may add to that.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0
TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)


def url(server: str, route: str) -> str:
    return server.rstrip("/") + route


def session_route(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(method: str, address: str, key: str, **options: Any) -> httpx.Response:
    """One request; an error answer raised as :class:`ApiErrorResponse`."""
    try:
        response = httpx.request(
            method, address, headers=auth_headers(key), timeout=TIMEOUT, **options
        )
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {address}: {exc}") from None
    if response.is_error:
        raise error_from(response)
    return response


def object_from(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object of ``response`` (``what`` names it in the error if it is not one)."""
    try:
        answer = response.json()
    except json.JSONDecodeError:
        raise ServerUnreachableError(
            f"HTTP {response.status_code} from {response.url} is not JSON"
        ) from None
    if not isinstance(answer, dict):
        raise ServerUnreachableError(f"HTTP {response.status_code}: not {what}")
    return answer


def error_from(response: httpx.Response) -> ApiErrorResponse:
    """Read the API's error format, tolerating proxies that answer with something else.
    A streamed response must have been read (``response.read()``) first."""
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return ApiErrorResponse(response.status_code, code, message, response.text)
