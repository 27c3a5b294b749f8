"""``exec-agent batch`` as a user runs it: a subprocess against one Serve deployment (ingress +
executor, real sandboxes, SQLite) whose ``MAX_BATCH_ITEMS`` is 3, so that chunking shows, and
that denies ``ctypes``, so that the server refuses a line the command could not check.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from executors import TERMINAL_STATUSES
from serve_app._cli_batch_lines import read_lines, resume_point
from tests.support.polling import eventually
from tests.support.service import DeployedService, deployed_service, service_settings

EXEC_AGENT = Path(sys.executable).with_name("exec-agent")
APP_NAME = "exec-agent-cli-batch-test"
SECRET = SecretStr("cli-batch-test-api-key-secret-0123456789abcd")
MAX_BATCH_ITEMS = 3
WAIT_S = 120.0
"""How long a test waits for a command (a safety net, not a speed goal)."""


def jsonl(*lines: Any) -> str:
    """Input lines: an object as JSON, a string as it is (a bad line)."""
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def prints(i: int, **fields: Any) -> dict[str, Any]:
    return {"code": f"print({i})", "runtime": "minimal", **fields}


# --- without a server


def test_lines_are_checked_with_the_request_model() -> None:
    lines = read_lines(
        jsonl(prints(1), "{not json", [1, 2], {"code": 3}, {"code": "1", "wait": False}, ""),
        skip=0,
    )
    assert lines[0].body == prints(1) and lines[0].error is None
    assert [(line.number, line.error["error"]["code"]) for line in lines[1:] if line.error] == [
        (2, "invalid_json"),
        (3, "invalid_request"),
        (4, "invalid_request"),
        (5, "invalid_request"),
        (6, "invalid_json"),  # an empty line keeps its place too
    ]
    assert lines[3].error == {
        "line": 4,
        "error": {
            "code": "invalid_request",
            "message": "code: Input should be a valid string",
            "details": [{"field": "code", "message": "Input should be a valid string"}],
        },
    }
    assert [line.number for line in read_lines(jsonl(prints(1), prints(2)), skip=1)] == [2]


def test_the_resume_point_drops_a_line_cut_short(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert resume_point(out) == 0
    out.write_text('{"a": 1}\n{"b": 2}\n{"c": ')
    assert resume_point(out) == 2
    assert out.read_text() == '{"a": 1}\n{"b": 2}\n'


def test_resume_needs_out(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(jsonl(prints(1)))
    done = batch(["--server", "http://127.0.0.1:1", "--key", "k", "--resume"], tmp_path)
    assert done.returncode == 2 and "--resume needs --out" in done.stderr


# --- one deployment for the rest


@pytest.fixture(scope="module")
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployedService]:
    directory: Path = tmp_path_factory.mktemp("cli-batch")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        max_batch_items=MAX_BATCH_ITEMS,
        denied_imports=["ctypes"],
    )
    with deployed_service(settings, APP_NAME) as database:
        yield DeployedService(database, settings)


@pytest.fixture
def key_name(request: pytest.FixtureRequest) -> str:
    return str(request.node.name[:60])


@pytest.fixture
def key(server: DeployedService, key_name: str) -> str:
    return server.new_key(key_name)


def batch(options: Sequence[str], directory: Path, **run: Any) -> subprocess.CompletedProcess[str]:
    command = [str(EXEC_AGENT), "batch", str(directory / "in.jsonl"), *options]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_S, check=False, **run
    )


def outputs(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.ray
@pytest.mark.sandbox
def test_records_in_input_order_with_bad_lines_in_their_place(
    server: DeployedService, key: str, key_name: str, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text(
        jsonl(
            prints(0),
            "not json",
            prints(2, stdin="x"),
            {"code": "import ctypes"},  # the server's refusal (its import policy)
            prints(4, limits={"wall_timeout_s": 10**6}),  # over the server's maximum
            {"code": 5},
            prints(6),
            prints(7, test_code="assert True"),
        )
    )
    done = batch(["--server", server.url, "--key", key, "--chunk-size", "3"], tmp_path)
    assert done.returncode == 1, done.stderr
    got = outputs(done.stdout)
    assert len(got) == 8
    assert [record["stdout"] for record in (got[0], got[2], got[6], got[7])] == [
        "0\n",
        "2\n",
        "6\n",
        "7\n",
    ]
    assert got[7]["passed"] is True
    refused = {i: got[i] for i in (1, 3, 4, 5)}
    assert {i: output["line"] for i, output in refused.items()} == {1: 2, 3: 4, 4: 5, 5: 6}
    assert [output["error"]["code"] for output in refused.values()] == [
        "invalid_json",
        "policy_violation",
        "invalid_request",
        "invalid_request",
    ]
    for number in (2, 4, 5, 6):
        assert f"line {number}: " in done.stderr
    assert len(server.stored(key_name)) == 4


@pytest.mark.ray
@pytest.mark.sandbox
def test_more_lines_than_the_server_takes_at_once_are_chunked(
    server: DeployedService, key: str, tmp_path: Path
) -> None:
    """With the default --chunk-size (1000) the server refuses the batch as too large: the
    command halves it until the server takes it."""
    (tmp_path / "in.jsonl").write_text(jsonl(*(prints(i) for i in range(7))))
    done = batch(["--server", server.url], tmp_path, env={**os.environ, "EXEC_AGENT_API_KEY": key})
    assert done.returncode == 0, done.stderr
    assert [record["stdout"] for record in outputs(done.stdout)] == [f"{i}\n" for i in range(7)]
    assert done.stderr == ""  # no terminal: no progress bar


@pytest.mark.ray
@pytest.mark.sandbox
def test_out_and_resume_skip_what_is_written(
    server: DeployedService, key: str, key_name: str, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text(jsonl(*(prints(i) for i in range(5))))
    out = tmp_path / "out.jsonl"
    first = batch(["--server", server.url, "--key", key, "--out", str(out)], tmp_path)
    assert first.returncode == 0 and first.stdout == "", first.stderr
    kept = out.read_text().splitlines()[:2]
    out.write_text("\n".join(kept) + '\n{"id": "cut sh')  # as if killed mid-write
    again = batch(["--server", server.url, "--key", key, "--out", str(out), "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr
    lines = out.read_text().splitlines()
    assert lines[:2] == kept
    assert [json.loads(line)["stdout"] for line in lines] == [f"{i}\n" for i in range(5)]
    assert len(server.stored(key_name)) == 5 + 3


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_progress_bar_on_a_terminal(server: DeployedService, key: str, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(jsonl(*(prints(i) for i in range(4))))
    out = tmp_path / "out.jsonl"
    primary, secondary = pty.openpty()
    command = [str(EXEC_AGENT), "batch", str(tmp_path / "in.jsonl"), "--server", server.url]
    command += ["--key", key, "--out", str(out), "--chunk-size", "3"]
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=secondary) as process:
        os.close(secondary)
        shown = read_all(primary)
        assert process.wait(timeout=WAIT_S) == 0
    os.close(primary)
    assert "batch" in shown and "4/4" in shown, shown
    assert len(out.read_text().splitlines()) == 4


def read_all(fd: int) -> str:
    """What ``fd`` (a pseudo-terminal) gives until its other end closes."""
    seen = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # the other end closed
            break
        if not data:
            break
        seen += data
    return seen.decode("utf-8", "replace")


@pytest.mark.ray
@pytest.mark.sandbox
def test_ctrl_c_stops_sending_and_keeps_what_finished(
    server: DeployedService, key: str, key_name: str, tmp_path: Path
) -> None:
    code = "import time\ntime.sleep(1.5)\nprint({})"
    lines = [{"code": code.format(i), "runtime": "minimal"} for i in range(12)]
    (tmp_path / "in.jsonl").write_text(jsonl(*lines))
    out = tmp_path / "out.jsonl"
    command = [str(EXEC_AGENT), "batch", str(tmp_path / "in.jsonl"), "--server", server.url]
    command += ["--key", key, "--out", str(out), "--chunk-size", "2"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        eventually(
            lambda: out.exists() and out.read_text().count("\n") >= 1, WAIT_S, "a record written"
        )
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 130, stderr
    kept = outputs(out.read_text())
    assert 1 <= len(kept) < 12
    assert [record["stdout"] for record in kept] == [f"{i}\n" for i in range(len(kept))]
    assert all(record["status"] in TERMINAL_STATUSES for record in kept)
    assert "stopped:" in stderr
    # Nothing more was sent: at most the batches in flight (2 of 2 lines) ran past the kept.
    stored = server.stored(key_name)
    assert len(stored) <= len(kept) + 2 * 2
    again = batch(["--server", server.url, "--key", key, "--out", str(out), "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["stdout"] for r in outputs(out.read_text())] == [f"{i}\n" for i in range(12)]
