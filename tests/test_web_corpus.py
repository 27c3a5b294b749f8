"""The corpus' ``web`` entries (tests/data/security_corpus.json): client scripts that attack the
service's pages and their files (the playground at ``/``, ``/docs``, ``/openapi.json``,
``/static/``) on a real ``exec-agent serve``, each printing a JSON summary compared here with
what its ``expect`` says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.corpus import CORPUS, WEB_ENTRIES
from tests.support.live_server import SECRET, LiveServer, live_server

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

SCRIPT_TIMEOUT_S = 120.0
"""A bound against a hanging script, not a speed goal."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-corpus")


@pytest.fixture(scope="module")
def server(ray_session: None, workdir: Path) -> Iterator[LiveServer]:
    with live_server(workdir) as server:
        yield server


CORPUS_CHECKS: dict[str, dict[str, Any]] = {
    "web_static_path_traversal": {"served": [], "server_errors": []},
    "web_static_no_listing": {"listed": [], "server_errors": []},
    "web_documents_leak_nothing": {
        "statuses": {"/openapi.json": 200, "/docs": 200, "/": 200},
        "secret_seen": [],
        "reflected": [],
    },
    "web_pages_strict_csp": {
        path: {"status": 200, "problems": [], "remote": [], "inline_scripts": 0}
        for path in ("/", "/docs")
    },
    "web_key_only_in_headers": {"statuses": [401, 401, 401, 401, 401]},
    "web_static_methods_and_ranges": {"wrote": [], "server_errors": []},
}
"""What each entry's script must print as its last line (a JSON object)."""


def test_every_web_entry_is_checked() -> None:
    assert WEB_ENTRIES and set(WEB_ENTRIES) == set(CORPUS_CHECKS)


def corpus_script(name: str, server: LiveServer, database: Path) -> str:
    """The entry's client script, its quoted placeholders replaced by this server's values."""
    code: str = CORPUS[name]["code"]
    replacements = {
        "BASE_URL": server.url,
        "API_KEY": server.key,
        "SERVER_SECRET": SECRET,
        "DATABASE_PATH": str(database),
    }
    for placeholder, value in replacements.items():
        code = code.replace(json.dumps(placeholder), json.dumps(value))
    return code


@pytest.mark.parametrize("name", WEB_ENTRIES)
def test_corpus_entry(server: LiveServer, workdir: Path, name: str) -> None:
    script = corpus_script(name, server, workdir / "live.db")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == CORPUS_CHECKS[name], CORPUS[name]["expect"]
    # The attack left the service serving.
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
