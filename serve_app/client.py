"""A minimal client of the HTTP API, as the command line uses it."""

from __future__ import annotations

import json
from typing import Any

import httpx

from serve_app.errors import ApiErrorResponse, ServerUnreachableError

__all__ = ["post_execution"]

# The server holds the answer until the run ends, and its queue may add to that.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0


def post_execution(server: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``{server}/v1/executions`` and return the execution record."""
    url = server.rstrip("/") + "/v1/executions"
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {url}: {exc}") from None
    if response.is_error:
        raise _error_from(response)
    return _record_from(response)


def _record_from(response: httpx.Response) -> dict[str, Any]:
    try:
        record = response.json()
    except json.JSONDecodeError:
        raise ServerUnreachableError(
            f"HTTP {response.status_code} from {response.url} is not JSON"
        ) from None
    if not isinstance(record, dict):
        raise ServerUnreachableError(f"HTTP {response.status_code}: not an execution record")
    return record


def _error_from(response: httpx.Response) -> ApiErrorResponse:
    """Read the API's error format, tolerating proxies that answer with something else."""
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return ApiErrorResponse(response.status_code, code, message, response.text)
