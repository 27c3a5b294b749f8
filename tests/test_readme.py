"""The README keeps its promises to a newcomer: it opens with the two commands (the second is
what CI runs), its Python client example is the client's own (which tests/test_client.py runs),
and its quick start runs as written against a real ``exec-agent serve``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

import serve_app.client
from tests.support.examples import README, docstring_example, readme_blocks, readme_section_block
from tests.support.live_server import live_server
from tests.support.paths import REPO

QUICK_START_SERVER = "http://127.0.0.1:8000"
BASH = shutil.which("bash") or "/bin/bash"
QUICK_START_TIMEOUT_S = 300.0
"""A bound against hanging, not a speed goal."""


def test_the_readme_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    language, first = readme_blocks(text)[0]
    assert text.index("```") < text.index("\n## "), "the commands come before any section"
    commands = [line.split("#", 1)[0].strip() for line in first.splitlines()]
    assert (language, commands) == ("sh", ["./scripts/serve", "./scripts/test"])
    assert "scripts/test" in (REPO / ".ci" / "run").read_text(), "CI runs the README's command"


def test_the_client_example_is_the_clients_own() -> None:
    assert readme_section_block("Python client", "python") == docstring_example(
        serve_app.client.__doc__
    )


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_quick_start_runs_as_written(ray_session: None, tmp_path: Path) -> None:
    script = readme_section_block("Quick start", "sh")
    assert QUICK_START_SERVER in script
    user = tmp_path / "user"  # the reader's shell: the repository's .venv, none of its files
    user.mkdir()
    (user / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "server").mkdir()
    with live_server(tmp_path / "server") as server:
        done = subprocess.run(
            [BASH, "-euo", "pipefail", "-c", script.replace(QUICK_START_SERVER, server.url)],
            cwd=user,
            env=server.environment,  # `exec-agent keys create` on the server's own database
            capture_output=True,
            text=True,
            timeout=QUICK_START_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # curl's record (no newline after it), then the client's and `exec-agent run`'s output.
        record, end = json.JSONDecoder().raw_decode(done.stdout)
        assert (record["status"], record["stdout"]) == ("ok", "42\n")
        assert done.stdout[end:].split() == ["42", "45"]
        # The pages its last line sends the reader to.
        for page in ("/", "/docs"):
            assert httpx.get(server.url + page, timeout=30).status_code == 200
