"""The ``exec-agent`` command line: parsing, exit statuses, ``run --server`` and local ``run``."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

import executors
from executors._models import MIB, ExecutionRecord, ExecutionRequest
from serve_app import _exit
from serve_app.cli import build_parser, main
from serve_app.settings import get_settings
from tests.support.settings import use_settings_environment

KEY = "test-key-0123456789"


def record(**fields: Any) -> dict[str, Any]:
    """A finished execution record in API form."""
    base = {"status": "ok", "exit_code": 0, "stdout": "", "stderr": "", "limits": {}}
    return ExecutionRecord.model_validate({**base, **fields}).to_api()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Default settings, no API key from the environment, and no .env from the repo."""
    use_settings_environment(monkeypatch, tmp_path)
    monkeypatch.delenv("EXEC_AGENT_API_KEY", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # an empty pipe, not pytest's stdin
    yield
    get_settings.cache_clear()


# --- parsing


def test_run_defaults() -> None:
    args = build_parser().parse_args(["run"])
    assert (args.file, args.stdin, args.json, args.server) == ("-", None, False, None)
    assert args.wall_timeout_s is None and args.memory_mb is None
    assert (args.runtime, args.out) == (None, None)


def test_run_runtime_and_out_options() -> None:
    args = build_parser().parse_args(["run", "p.py", "--runtime", "minimal", "--out", "res"])
    assert (args.runtime, args.out) == ("minimal", Path("res"))


def test_run_limit_options() -> None:
    argv = ["run", "p.py", "--wall-timeout-s", "2.5", "--cpu-time-s", "1", "--memory-mb", "64"]
    argv += ["--max-output-bytes", "100", "--max-processes", "4", "--max-file-bytes", "10"]
    args = build_parser().parse_args(argv)
    assert args.file == "p.py"
    assert (args.wall_timeout_s, args.cpu_time_s, args.memory_mb) == (2.5, 1.0, 64)
    assert (args.max_output_bytes, args.max_processes, args.max_file_bytes) == (100, 4, 10)


@pytest.mark.parametrize(
    "argv", [[], ["run", "--memory-mb", "1.5"], ["run", "--bogus"], ["keys"], ["db"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_run_help_documents_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for status in ("124", "128+N", "137", "internal_error"):
        assert status in out


def test_server_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-", "--server", "http://127.0.0.1:1"]) == 2
    assert "--key" in capsys.readouterr().err


# --- exit statuses


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "ok", "exit_code": 0}, 0),
        ({"status": "nonzero_exit", "exit_code": 3}, 3),
        ({"status": "crashed", "exit_code": None, "signal": 11}, 139),
        ({"status": "timeout", "exit_code": None, "signal": 9}, 124),
        ({"status": "memory_limit", "exit_code": None, "signal": 9}, 137),
        ({"status": "memory_limit", "exit_code": 1}, 1),
        ({"status": "output_limit", "exit_code": None, "signal": 9}, 1),
        ({"status": "internal_error", "exit_code": None}, 70),
        ({"status": "queued", "exit_code": None}, 70),
    ],
)
def test_exit_status_mirrors_the_program(fields: dict[str, Any], expected: int) -> None:
    assert _exit.exit_status(fields) == expected


# --- run --server, against a small local HTTP server


@dataclass
class FakeApi:
    """What the fake server answers, and what it was sent."""

    url: str
    status: int = 200
    answer: dict[str, Any] = field(default_factory=record)
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            fake.received.append(
                {
                    "path": self.path,
                    "authorization": self.headers["Authorization"],
                    "body": json.loads(self.rfile.read(length)),
                }
            )
            payload = json.dumps(fake.answer).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval: shutdown() waits for the loop to notice.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def write_program(tmp_path: Path, code: str = "print('hello')\n") -> str:
    path = tmp_path / "prog.py"
    path.write_text(code)
    return str(path)


def test_server_mode_sends_code_stdin_limits_and_key(api: FakeApi, tmp_path: Path) -> None:
    program = write_program(tmp_path)
    argv = ["run", program, "--stdin", "3 4", "--wall-timeout-s", "2", "--memory-mb", "64"]
    assert main([*argv, "--server", api.url + "/", "--key", KEY, "--json"]) == 0
    [sent] = api.received
    assert sent["path"] == "/v1/executions"
    assert sent["authorization"] == f"Bearer {KEY}"
    assert sent["body"] == {
        "code": "print('hello')\n",
        "stdin": "3 4",
        "limits": {"wall_timeout_s": 2.0, "memory_mb": 64},
    }


def test_server_mode_sends_the_runtime(api: FakeApi, tmp_path: Path) -> None:
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY]
    assert main([*argv, "--runtime", "minimal"]) == 0
    assert main(argv) == 0
    first, second = (sent["body"] for sent in api.received)
    assert first["runtime"] == "minimal"
    assert "runtime" not in second  # the server's DEFAULT_RUNTIME


def artifact(path: str, content: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(content).decode()
    return {"path": path, "size_bytes": len(content), "media_type": "x/y", "base64": encoded}


def test_out_writes_each_artifact_under_the_directory(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = record(
        stdout="made\n",
        artifacts=[
            artifact("out/x.csv", b"a,b\n1,2\n"),
            artifact("out/deep/er/p.bin", b"\x00\xff"),
        ],
    )
    out = tmp_path / "results"
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY]
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / "x.csv").read_bytes() == b"a,b\n1,2\n"
    assert (out / "deep" / "er" / "p.bin").read_bytes() == b"\x00\xff"
    assert capsys.readouterr() == ("made\n", "")
    api.answer = record(artifacts=[], artifacts_truncated=True)
    assert main([*argv, "--out", str(out)]) == 0
    assert "left out" in capsys.readouterr().err


def test_out_refuses_paths_that_would_leave_the_directory(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    (out / "file-link").symlink_to(elsewhere / "target")
    hostile = [
        "out/../../escaped",
        "../escaped",
        "/tmp/escaped",
        "out//x",
        "out/./x",
        "out",
        "out/link/escaped",
        "out/file-link",
        "out\\..\\escaped",
    ]
    api.answer = record(
        artifacts=[*(artifact(path, b"evil") for path in hostile), artifact("out/ok.txt", b"ok")]
    )
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY]
    assert main([*argv, "--out", str(out)]) == _exit.EX_CANTCREAT == 73
    err = capsys.readouterr().err
    assert err.count("not written") == len(hostile)
    assert (out / "ok.txt").read_bytes() == b"ok"  # the rest still written
    written = {path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()}
    assert written == {Path("prog.py"), Path("results/ok.txt")}


def test_program_stdin_comes_from_our_stdin_when_given_a_file(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("piped\n"))
    assert main(["run", write_program(tmp_path), "--server", api.url, "--key", KEY]) == 0
    assert api.received[0]["body"]["stdin"] == "piped\n"


def test_program_read_from_stdin_gets_only_the_stdin_option(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("print(input())\n"))
    assert main(["run", "-", "--server", api.url, "--key", KEY]) == 0
    assert main(["run", "-", "--stdin", "x", "--server", api.url, "--key", KEY]) == 0
    assert [sent["body"]["stdin"] for sent in api.received] == ["", "x"]


def test_server_mode_json_prints_the_record_as_returned(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = record(status="nonzero_exit", exit_code=3, stdout="partial\n")
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY, "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == api.answer


def test_server_mode_mirrors_output_and_exit_code(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = record(status="nonzero_exit", exit_code=3, stdout="out ✓\n", stderr="err\n")
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("out ✓\n", "err\n")


def test_server_mode_key_from_environment(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_AGENT_API_KEY", KEY)
    assert main(["run", write_program(tmp_path), "--server", api.url]) == 0
    assert api.received[0]["authorization"] == f"Bearer {KEY}"


def test_server_error_answer_goes_to_stderr_with_exit_2(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.status = 422
    api.answer = {
        "error": {"code": "invalid_request", "message": "limits.memory_mb", "request_id": "r1"}
    }
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY, "--json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err) == api.answer


def test_server_internal_error_with_json_exits_1(
    api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = record(status="internal_error", exit_code=None)
    argv = ["run", write_program(tmp_path), "--server", api.url, "--key", KEY, "--json"]
    assert main(argv) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "internal_error"


def test_unreachable_server_exits_69(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["run", write_program(tmp_path), "--server", f"http://127.0.0.1:{port}", "--key", KEY]
    assert main(argv) == 69
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_invalid_limits_are_refused_before_sending(
    api: FakeApi, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", write_program(tmp_path), "--wall-timeout-s", value]
    assert main([*argv, "--server", api.url, "--key", KEY]) == 2
    assert api.received == []
    assert "wall_timeout_s" in capsys.readouterr().err


def test_missing_program_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "absent.py"), "--server", "http://x", "--key", KEY]) == 2
    assert "absent.py" in capsys.readouterr().err


# --- run, locally (the engine replaced by a fake pool)


class FakePool:
    """Stands in for executors.SandboxPool: records what it was given, answers a fixed record."""

    instances: ClassVar[list[FakePool]] = []

    def __init__(self, config: object, slots: int) -> None:
        self.config, self.slots = config, slots
        self.requests: list[ExecutionRequest] = []
        self.entered = self.exited = False
        FakePool.instances.append(self)

    def __enter__(self) -> FakePool:
        self.entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited = True

    def run(self, request: ExecutionRequest) -> ExecutionRecord:
        self.requests.append(request)
        return ExecutionRecord(
            status="ok", exit_code=0, stdout="hi\n", limits=request.limits.to_api()
        )


@pytest.fixture
def fake_pool(monkeypatch: pytest.MonkeyPatch) -> type[FakePool]:
    FakePool.instances = []
    monkeypatch.setattr(executors, "SandboxPool", FakePool, raising=False)
    return FakePool


def test_local_mode_runs_one_request_in_a_one_slot_pool(
    fake_pool: type[FakePool], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("print('hi')\n"))
    assert main(["run", "-", "--stdin", "in", "--memory-mb", "128"]) == 0
    [pool] = fake_pool.instances
    assert pool.slots == 1 and pool.entered and pool.exited
    [sent] = pool.requests
    assert (sent.code, sent.stdin) == ("print('hi')\n", "in")
    assert sent.limits.memory_bytes == 128 * MIB
    assert sent.limits.wall_timeout_s == 5  # the settings' default
    assert capsys.readouterr().out == "hi\n"


def test_local_mode_runs_in_the_runtime_asked_for(
    fake_pool: type[FakePool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = write_program(tmp_path)
    assert main(["run", program, "--runtime", "minimal"]) == 0
    assert main(["run", program]) == 0
    monkeypatch.setenv("DEFAULT_RUNTIME", "minimal")
    get_settings.cache_clear()
    assert main(["run", program]) == 0
    runtimes = [pool.requests[0].runtime for pool in fake_pool.instances]
    assert runtimes == ["minimal", "scientific", "minimal"]  # never None: the record says


def test_local_mode_refuses_an_unknown_runtime(
    fake_pool: type[FakePool], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", write_program(tmp_path), "--runtime", "nope"]) == 2
    assert "--runtime must be one of minimal, scientific" in capsys.readouterr().err
    assert fake_pool.instances == []


def test_local_mode_refuses_limits_over_the_maxima(
    fake_pool: type[FakePool], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", write_program(tmp_path), "--memory-mb", "100000"]) == 2
    assert "memory_bytes" in capsys.readouterr().err
    assert fake_pool.instances == []


def test_local_mode_refuses_nul_in_the_program(
    fake_pool: type[FakePool], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", write_program(tmp_path, "print(1)\x00")]) == 2
    assert "NUL" in capsys.readouterr().err


def test_invalid_configuration_exits_78(
    fake_pool: type[FakePool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MAX_TIMEOUT", "nan")
    assert main(["run", write_program(tmp_path)]) == 78
    assert "MAX_TIMEOUT" in capsys.readouterr().err


# --- run, locally, in a real sandbox


@pytest.mark.sandbox
def test_local_run_in_a_real_sandbox(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not hasattr(executors, "SandboxPool"):
        pytest.skip("the sandbox engine (executors.SandboxPool) is not there yet")
    monkeypatch.setattr(sys, "stdin", io.StringIO("print('hello')\n"))
    assert main(["run", "-", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "ok"
    assert answer["stdout"] == "hello\n"


@pytest.mark.sandbox
def test_local_run_writes_its_artifacts_to_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = (
        "import os\n"
        "os.makedirs('out/sub', exist_ok=True)\n"
        "open('out/x.csv', 'w').write('a,b\\n1,2\\n')\n"
        "open('out/sub/y.bin', 'wb').write(bytes(range(256)))\n"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(program))
    out = tmp_path / "results"
    assert main(["run", "-", "--runtime", "minimal", "--out", str(out), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "ok" and answer["runtime"] == "minimal"
    assert [item["path"] for item in answer["artifacts"]] == ["out/sub/y.bin", "out/x.csv"]
    assert (out / "x.csv").read_text() == "a,b\n1,2\n"
    assert (out / "sub" / "y.bin").read_bytes() == bytes(range(256))


# --- the package's public surface


def test_serve_app_exports_its_error_tree() -> None:
    import serve_app
    from serve_app import errors

    assert sorted(serve_app.__all__) == sorted(
        name for name in errors.__all__ if name != "describe_validation_error"
    )
    classes = [getattr(errors, name) for name in serve_app.__all__]
    assert all(issubclass(cls, errors.ServiceError) for cls in classes)
    # Stable codes never collide, except a refinement that keeps its parent's code (the
    # 422 with field details is still `invalid_request`). The client's answers carry the
    # server's code on the instance.
    own_codes = [
        cls.code
        for cls in classes
        if not issubclass(cls, errors.ApiErrorResponse)
        and cls.code != cls.__mro__[1].__dict__.get("code")
    ]
    assert len(own_codes) == len(set(own_codes))
