"""SandboxFusion's models and the mapping of our records onto them (:mod:`serve_app.compat`),
without a service: what SandboxFusion's own client (``sandbox_fusion`` 0.3.7) sends validates
as our requests, and every answer we derive parses as its responses."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import sandbox_fusion as sf

from executors import Artifact, ExecutionRecord, ExecutionStatus
from serve_app.api import RequestBounds, parse_body
from serve_app.compat import (
    CommandRunStatus,
    RunCodeRequest,
    RunJupyterRequest,
    RunStatus,
    cell_call,
    cell_result,
    cell_wall_s,
    execution_body,
    fetch_call,
    fetched_elsewhere,
    kernel_error,
    policy_refusal,
    run_code_response,
    session_body,
    unsupported_language,
)
from serve_app.errors import InvalidFieldsError, InvalidJsonError
from serve_app.settings import Settings

MAX_WALL_S, MAX_CPU_S, MAX_MEMORY_MB = 20.0, 15.0, 256


@pytest.fixture
def bounds() -> RequestBounds:
    settings = Settings(
        cors_origins=[],
        max_wall_timeout_s=MAX_WALL_S,
        max_cpu_time_s=MAX_CPU_S,
        max_memory_mb=MAX_MEMORY_MB,
        default_wall_timeout_s=5.0,
        default_cpu_time_s=5.0,
        default_memory_mb=128,
        default_runtime="minimal",
    )
    return RequestBounds.from_settings(settings)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sent(request: Any) -> bytes:
    """The body SandboxFusion's client posts for ``request`` (``json=request.dict()``)."""
    return json.dumps(request.dict()).encode()


def _record(status: ExecutionStatus, **fields: Any) -> ExecutionRecord:
    return ExecutionRecord(status=status, limits={}, wall_time_s=0.25, cpu_time_s=0.2, **fields)


# --------------------------------------------------------------------------- requests


def test_the_clients_run_code_request_validates_as_ours(bounds: RequestBounds) -> None:
    sent = sf.RunCodeRequest(
        code="print(input())",
        language="python",
        stdin="7\n",
        run_timeout=3,
        files={"data/in.bin": _b64(b"\x00\xffbytes")},
        fetch_files=["out/result.txt"],
    )
    ours = parse_body(RunCodeRequest, _sent(sent), bounds)
    assert ours.code == "print(input())" and ours.language == "python"
    assert ours.run_timeout == 3 and ours.compile_timeout == 10
    assert ours.fetch_files == ["out/result.txt"] and ours.memory_limit_MB == -1
    body = execution_body(ours, bounds)
    assert body.stdin == "7\n" and body.files == {"data/in.bin": b"\x00\xffbytes"}
    assert body.runtime == "minimal"  # DEFAULT_RUNTIME: SandboxFusion has no word for it
    assert body.limits.wall_timeout_s == 3 and body.limits.cpu_time_s == 3
    assert body.limits.memory_mb is None  # no memory_limit_MB: the server's default


def test_the_servers_extra_fields_and_unknown_ones_are_accepted(bounds: RequestBounds) -> None:
    sent = {
        "code": "1",
        "language": "python3",
        "memory_limit_MB": 64,
        "files": {"empty": None},
        "some_future_field": [1, 2],
    }
    ours = parse_body(RunCodeRequest, json.dumps(sent).encode(), bounds)
    body = execution_body(ours, bounds)
    assert body.files == {} and body.limits.memory_mb == 64 and body.stdin == ""


def test_limits_over_the_maxima_are_capped_not_refused(bounds: RequestBounds) -> None:
    sent = {"code": "1", "language": "python", "run_timeout": 600, "memory_limit_MB": 4096}
    body = execution_body(parse_body(RunCodeRequest, json.dumps(sent).encode(), bounds), bounds)
    assert body.limits.wall_timeout_s == MAX_WALL_S and body.limits.cpu_time_s == MAX_CPU_S
    assert body.limits.memory_mb == MAX_MEMORY_MB


def test_unusable_requests_are_422s(bounds: RequestBounds) -> None:
    for sent in (
        {"code": "1", "language": "python", "run_timeout": 0},
        {"code": "1"},
        {"code": 1, "language": "python"},
    ):
        with pytest.raises(InvalidFieldsError):
            parse_body(RunCodeRequest, json.dumps(sent).encode(), bounds)
    with pytest.raises(InvalidJsonError):
        parse_body(RunCodeRequest, b'{"code": "1", "run_timeout": NaN', bounds)
    for files in ({"a.txt": "not base64!"}, {"/etc/passwd": _b64(b"x")}, {"out/x": _b64(b"x")}):
        request = RunCodeRequest(code="1", language="python", files=files)
        with pytest.raises(InvalidFieldsError):
            execution_body(request, bounds)


def test_another_language_is_a_sandbox_error_naming_python() -> None:
    assert unsupported_language("python") is None and unsupported_language("python3") is None
    for language in ("cpp", "nodejs", "python2", "bash"):
        answer = unsupported_language(language)
        assert answer is not None and answer.status is RunStatus.SANDBOX_ERROR
        assert answer.message.endswith("not supported: this service runs Python")
        assert sf.RunCodeResponse(**answer.model_dump(mode="json")).status == "SandboxError"
    assert kernel_error("python3") is None
    assert str(kernel_error("ir")).endswith("not supported: this service runs Python")


# --------------------------------------------------------------------------- run_code answers


MAPPING = [
    # status, record fields, RunStatus, run_result status, return_code, summary
    (ExecutionStatus.OK, {"exit_code": 0}, "Success", "Finished", 0, "Success"),
    (ExecutionStatus.NONZERO_EXIT, {"exit_code": 3}, "Failed", "Finished", 3, "RunFailed"),
    (ExecutionStatus.TIMEOUT, {"signal": 9}, "Failed", "TimeLimitExceeded", None, "RunTimeout"),
    (ExecutionStatus.MEMORY_LIMIT, {"signal": 9}, "Failed", "Error", -9, "RunFailed"),
    (ExecutionStatus.MEMORY_LIMIT, {"exit_code": 1}, "Failed", "Error", 1, "RunFailed"),
    (ExecutionStatus.OUTPUT_LIMIT, {}, "Failed", "Error", -9, "RunFailed"),
    (ExecutionStatus.CRASHED, {"signal": 11}, "Failed", "Error", -11, "RunFailed"),
]
SUMMARY = sf.SummaryMapping(RunFailed="RunFailed", RunTimeout="RunTimeout")


@pytest.mark.parametrize(("status", "fields", "verdict", "run", "code", "summary"), MAPPING)
def test_each_status_maps_onto_sandbox_fusions_answer(
    status: ExecutionStatus,
    fields: dict[str, Any],
    verdict: str,
    run: str,
    code: int | None,
    summary: str,
) -> None:
    record = _record(status, stdout="out\n", stderr="err\n", **fields)
    answer = sf.RunCodeResponse(**run_code_response(record, []).model_dump(mode="json"))
    assert answer.status == verdict and answer.run_result is not None
    assert answer.run_result.status == run and answer.run_result.return_code == code
    assert answer.run_result.stdout == "out\n" and answer.run_result.stderr == "err\n"
    assert answer.run_result.execution_time == 0.25 and answer.compile_result is None
    assert sf.summary_run_code_result(answer, SUMMARY) == summary
    if run == "Error":  # what SandboxFusion has no word for is said in the message
        assert answer.message.startswith(status.value), answer.message


def test_an_internal_error_is_a_sandbox_error_never_a_failed_run() -> None:
    for status in (ExecutionStatus.INTERNAL_ERROR, ExecutionStatus.RUNNING):
        answer = run_code_response(_record(status), ["out/x"])
        assert answer.status is RunStatus.SANDBOX_ERROR and answer.run_result is None
        assert "retry" in answer.message


def test_a_refused_import_is_a_failed_run() -> None:
    answer = sf.RunCodeResponse(**policy_refusal("socket").model_dump(mode="json"))
    assert answer.status == "Failed" and answer.run_result is not None
    assert sf.summary_run_code_result(answer, SUMMARY) == "RunFailed"


def test_fetch_files_come_from_the_files_left_under_out() -> None:
    left = Artifact(path="out/a.txt", size_bytes=2, media_type="text/plain", base64=_b64(b"hi"))
    record = _record(ExecutionStatus.OK, exit_code=0, artifacts=[left])
    answer = run_code_response(record, ["out/a.txt", "out/none.txt", "b.txt"])
    assert answer.files == {"out/a.txt": _b64(b"hi")} and answer.status is RunStatus.SUCCESS
    assert "out/none.txt, b.txt" in answer.message


# --------------------------------------------------------------------------- run_jupyter


def test_the_clients_jupyter_request_becomes_a_session_and_calls(bounds: RequestBounds) -> None:
    sent = sf.RunJupyterRequest(
        cells=["a = 1", "a"], cell_timeout=2, total_timeout=30, files={"x": _b64(b"1")}
    )
    ours = parse_body(RunJupyterRequest, _sent(sent), bounds)
    assert ours.kernel == "python3" and ours.cells == ["a = 1", "a"]
    session = session_body(ours, bounds)
    assert session.runtime == "minimal" and session.ttl_s == session.idle_timeout_s == 60
    assert cell_wall_s(2, 30, bounds.max_limits) == 2
    assert cell_wall_s(0, 12.5, bounds.max_limits) == 12.5  # 0: only the total
    assert cell_wall_s(0, 100, bounds.max_limits) == MAX_WALL_S
    call = cell_call("a", {"x": b"1"}, 2, bounds)
    assert call.limits.wall_timeout_s == 2 and call.files == {"x": b"1"}
    with_memory = {"cells": ["1"], "memory_limit_MB": 9999}
    capped = session_body(
        parse_body(RunJupyterRequest, json.dumps(with_memory).encode(), bounds), bounds
    )
    assert capped.limits.memory_mb == MAX_MEMORY_MB


def test_files_outside_out_are_fetched_by_a_fixed_program_given_paths_as_data(
    bounds: RequestBounds,
) -> None:
    paths = fetched_elsewhere(["out/a", "b.txt", "b.txt", "c'; import os #"])
    assert paths == ["b.txt", "c'; import os #"]
    call = fetch_call(paths, bounds, 5)
    assert json.loads(call.stdin) == paths and "import os #" not in call.code


def test_a_cell_answers_output_display_and_error() -> None:
    figure = Artifact(path="out/figure-1.png", size_bytes=3, media_type="image/png", base64="iVBO")
    shown = cell_result(
        _record(ExecutionStatus.OK, stdout="1\n", result="[1, 2]", artifacts=[figure])
    )
    assert shown.display == [{"text/plain": "[1, 2]"}, {"image/png": "iVBO"}] and shown.error == []
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "<cell>", line 1, in <module>\n'
        "ValueError: no: such value\n"
    )
    raised = cell_result(
        _record(ExecutionStatus.NONZERO_EXIT, exit_code=1, stderr="warned\n" + traceback)
    )
    assert raised.stderr == "warned\n" and raised.display == []
    (error,) = raised.error
    assert error["ename"] == "ValueError" and error["evalue"] == "no: such value"
    assert error["traceback"] == traceback.rstrip("\n").splitlines()
    answer = sf.RunJupyterResponse(
        status="Success", message="", cells=[shown.model_dump(), raised.model_dump()]
    )
    assert answer.cells[1].error[0]["ename"] == "ValueError"
    assert CommandRunStatus.TIME_LIMIT_EXCEEDED.value == sf.CommandRunStatus.TimeLimitExceeded.value
