"""Requests to the service's HTTP API as its clients make them: headers, runs, error codes."""

from __future__ import annotations

import httpx

from executors import ExecutionRecord

__all__ = ["RECORD_FIELDS", "auth", "error_code", "run"]

RECORD_FIELDS = set(ExecutionRecord.model_fields) - {"cases"}
"""The fields of every execution record the API answers (``cases`` only with cases)."""


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run(client: httpx.Client, key: str, code: str, **fields: object) -> httpx.Response:
    """POST one execution of ``code`` (with any other request ``fields``) as ``key``."""
    return client.post("/v1/executions", json={"code": code, **fields}, headers=auth(key))


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code
