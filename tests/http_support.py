"""Helpers of the HTTP tests (tests/test_http_*.py): ports, keys on requests, errors."""

from __future__ import annotations

import socket

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the service binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run(client: httpx.Client, key: str, code: str, **fields: object) -> httpx.Response:
    """POST one execution of ``code`` (with any other request ``fields``) as ``key``."""
    return client.post("/v1/executions", json={"code": code, **fields}, headers=auth(key))


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code
