"""The adversarial corpus (tests/data/security_corpus.json): its entries, and each entry's
program ready to run (its host ports filled in, its test code beside it)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

from tests.support.paths import TEST_DATA

__all__ = [
    "CORPUS",
    "CORPUS_PATH",
    "ENGINE_ENTRIES",
    "SESSION_ENTRIES",
    "WEBSOCKET_ENTRIES",
    "WEB_ENTRIES",
    "host_ports",
    "program",
    "request_fields",
]

CORPUS_PATH = TEST_DATA / "security_corpus.json"
CORPUS: dict[str, dict[str, Any]] = {
    entry["name"]: entry for entry in json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
}
ENGINE_ENTRIES = [
    name
    for name, entry in CORPUS.items()
    if entry["category"] not in ("http", "sessions", "websocket", "web")
]
"""Every entry but the HTTP ones (the API's tests take those), the sessions' (several calls,
tests/test_sessions_corpus.py takes those) and the WebSocket and web ones (client scripts,
tests/test_api_websocket.py and tests/test_web_corpus.py run them): what the engine must meet,
one run each."""
SESSION_ENTRIES = [name for name, entry in CORPUS.items() if entry["category"] == "sessions"]
"""Entries of calls in sessions: ``code`` is session a's first call, ``then`` the steps after."""
WEBSOCKET_ENTRIES = [name for name, entry in CORPUS.items() if entry["category"] == "websocket"]
"""Client scripts against ``/v1/ws``: ``code`` runs on the host, its placeholders filled in."""
WEB_ENTRIES = [name for name, entry in CORPUS.items() if entry["category"] == "web"]
"""Client scripts against the pages and their files (``/``, ``/docs``, ``/openapi.json``,
``/static/``): ``code`` runs on the host, its placeholders filled in."""


@contextlib.contextmanager
def host_ports() -> Iterator[dict[str, int]]:
    """TCP listeners on 127.0.0.1 and ::1 for the network probes (loopback only): placeholder
    (``HOST_PORT6`` first: it contains ``HOST_PORT``) -> port."""
    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    with v4, v6:
        yield {"HOST_PORT6": v6.getsockname()[1], "HOST_PORT": v4.getsockname()[1]}


def program(name: str, ports: dict[str, int]) -> str:
    """Entry ``name``'s code, with the ports of :func:`host_ports` in its placeholders."""
    code: str = CORPUS[name]["code"]
    for placeholder, port in ports.items():  # HOST_PORT6 first: it contains HOST_PORT
        code = code.replace(placeholder, str(port))
    return code


def request_fields(name: str) -> dict[str, str]:
    """Entry ``name``'s request fields beside its code: ``test_code`` if it is judged,
    ``runtime`` if it names one (else the pool's or the service's default)."""
    entry = CORPUS[name]
    return {field: entry[field] for field in ("test_code", "runtime") if field in entry}
