"""A minimal client of the HTTP API, as the command line uses it.

Usage::

    body = execution_body("print(open('in.bin', 'rb').read())", files={"in.bin": b"\\x00"},
                          runtime="minimal")
    record = post_execution("http://127.0.0.1:8000", key, body)
    png = get_artifact("http://127.0.0.1:8000", key, record["id"], "out/plot.png")
    names = [runtime["name"] for runtime in list_runtimes("http://127.0.0.1:8000", key)]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from serve_app import files as api_files
from serve_app.errors import ApiErrorResponse, ServerUnreachableError

__all__ = ["execution_body", "get_artifact", "list_runtimes", "post_execution"]

# The server holds the answer until the run ends, and its queue may add to that.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0
_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)


def execution_body(
    code: str,
    *,
    stdin: str = "",
    files: Mapping[str, str | bytes] | None = None,
    runtime: str | None = None,
    limits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/executions``: ``files`` as text or bytes (sent as
    ``{"base64": ...}``); ``runtime`` None: the server's ``DEFAULT_RUNTIME``."""
    body: dict[str, Any] = {"code": code, "stdin": stdin}
    if files:
        body["files"] = api_files.to_api(files)
    if runtime is not None:
        body["runtime"] = runtime
    if limits:
        body["limits"] = dict(limits)
    return body


def post_execution(server: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``{server}/v1/executions`` and return the execution record."""
    response = _call("POST", _url(server, "/v1/executions"), key, json=body)
    return _object_from(response, "an execution record")


def list_runtimes(server: str, key: str) -> list[dict[str, Any]]:
    """``GET /v1/runtimes``: each runtime's name, Python version, packages, preloaded modules
    and whether it is the default."""
    answer = _object_from(_call("GET", _url(server, "/v1/runtimes"), key), "a runtime list")
    items = answer.get("items")
    if not isinstance(items, list):
        raise ServerUnreachableError("the runtime list has no items")
    return items


def get_artifact(server: str, key: str, execution_id: str, path: str) -> bytes:
    """The bytes of the artifact ``path`` (``out/plot.png``) of execution ``execution_id``."""
    route = f"/v1/executions/{quote(execution_id, safe='')}/artifacts/{quote(path, safe='/')}"
    return _call("GET", _url(server, route), key).content


def _url(server: str, route: str) -> str:
    return server.rstrip("/") + route


def _call(method: str, url: str, key: str, **options: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    try:
        response = httpx.request(method, url, headers=headers, timeout=_TIMEOUT, **options)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"cannot reach {url}: {exc}") from None
    if response.is_error:
        raise _error_from(response)
    return response


def _object_from(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        answer = response.json()
    except json.JSONDecodeError:
        raise ServerUnreachableError(
            f"HTTP {response.status_code} from {response.url} is not JSON"
        ) from None
    if not isinstance(answer, dict):
        raise ServerUnreachableError(f"HTTP {response.status_code}: not {what}")
    return answer


def _error_from(response: httpx.Response) -> ApiErrorResponse:
    """Read the API's error format, tolerating proxies that answer with something else."""
    code, message = "http_error", response.reason_phrase
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    return ApiErrorResponse(response.status_code, code, message, response.text)
