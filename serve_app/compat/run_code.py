"""``run_code`` on our engine: SandboxFusion's request to an execution request, and the
execution record back to SandboxFusion's answer.

The record's status, mapped (``return_code`` is the process's exit code; a process ended by a
signal reports ``-signal``, as SandboxFusion's own subprocesses do):

=================  ============  ==================  =========================================
record status      ``status``    ``run_result``      notes
=================  ============  ==================  =========================================
``ok``             Success       Finished            ``return_code`` 0
``nonzero_exit``   Failed        Finished            ``return_code`` the exit code
``timeout``        Failed        TimeLimitExceeded   ``return_code`` null, as SandboxFusion's
``memory_limit``   Failed        Error               ``message`` names the limit: SandboxFusion
``output_limit``   Failed        Error               has no word for these; ``return_code`` is
``crashed``        Failed        Error               set, so ``summary_run_code_result`` works
``internal_error`` SandboxError  (none)              the service failed: the client raises and
                                                     retries, never a failed test
(import refused)   Failed        Error               code outside ``IMPORT_POLICY``: nothing
                                                     ran or is stored; ``stderr`` says which
=================  ============  ==================  =========================================

Requests:

- ``language``: ``python`` or ``python3``; another answers ``SandboxError`` "... not supported:
  this service runs Python" (HTTP 200, as SandboxFusion answers what it cannot run).
- ``run_timeout`` becomes the wall-clock and the CPU-time limit, ``memory_limit_MB`` (when
  positive) the memory cap: each capped by the server's maximum (``MAX_WALL_TIMEOUT_S``,
  ``MAX_CPU_TIME_S``, ``MAX_MEMORY_MB``), never refused for being over it. ``compile_timeout``
  is unused (Python is not compiled); the other limits are the server's defaults.
- ``files``: path → base64, written into the working directory (a null content writes nothing);
  the paths our API takes (relative, not under ``out/``), else 422.
- ``fetch_files``: the files under ``out/`` the program left (the record's artifacts, within
  ``MAX_ARTIFACTS`` / ``MAX_ARTIFACT_BYTES``), base64. A path outside ``out/``, or one the
  program did not leave, is not in the answer, as SandboxFusion leaves out a file that is not
  there; the ``message`` names those. Files elsewhere are not read back because nothing but the
  program runs in its sandbox: an epilogue appended to the code would change what the program
  is (its exit, its output, its tracebacks) and could be subverted by it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from executors import Artifact, ExecutionRecord, ExecutionStatus, Limits
from serve_app.api import ExecutionCreate, RequestBounds, validate_body
from serve_app.api.errors import validation_details
from serve_app.compat.models import (
    CommandRunResult,
    CommandRunStatus,
    RunCodeRequest,
    RunCodeResponse,
    RunStatus,
)
from serve_app.errors import InvalidFieldsError

__all__ = [
    "ARTIFACTS_PREFIX",
    "PYTHON_LANGUAGES",
    "command_result",
    "decoded_files",
    "execution_body",
    "fetched",
    "limits_request",
    "policy_refusal",
    "run_code_response",
    "unsupported_language",
]

PYTHON_LANGUAGES = frozenset({"python", "python3"})
ARTIFACTS_PREFIX = "out/"

_NO_WORD = {
    ExecutionStatus.MEMORY_LIMIT: "memory_limit: the program hit the memory cap",
    ExecutionStatus.OUTPUT_LIMIT: "output_limit: the program wrote more than the output cap",
    ExecutionStatus.CRASHED: "crashed: the program was ended by a signal",
}
"""What SandboxFusion has no word for: said in ``message``, beside ``run_result`` Error."""
_MIB = 1024 * 1024
_KILLED = -9
"""The return code of a run the service killed and that left neither exit code nor signal."""


def unsupported_language(language: str) -> RunCodeResponse | None:
    """The answer to a language this service does not run, or None for Python."""
    if language in PYTHON_LANGUAGES:
        return None
    return RunCodeResponse(
        status=RunStatus.SANDBOX_ERROR,
        message=f"language {language!r} not supported: this service runs Python",
    )


def limits_request(
    run_timeout: float, memory_limit_mb: int, maxima: Limits, *, wall_only: bool = False
) -> dict[str, Any]:
    """SandboxFusion's limits as our request's ``limits`` (API units), capped by ``maxima``."""
    limits: dict[str, Any] = {
        "wall_timeout_s": min(run_timeout, maxima.wall_timeout_s),
        "cpu_time_s": min(run_timeout, maxima.cpu_time_s),
    }
    if memory_limit_mb > 0 and not wall_only:
        limits["memory_mb"] = min(memory_limit_mb, maxima.memory_bytes // _MIB)
    return limits


def decoded_files(files: Mapping[str, str | None]) -> dict[str, bytes]:
    """``files``' base64 contents as bytes (null contents left out), or 422 naming the paths."""
    decoded: dict[str, bytes] = {}
    bad: list[dict[str, str]] = []
    for path, content in files.items():
        if content is None:
            continue
        try:
            decoded[path] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            bad.append({"field": "files", "message": "not base64", "type": "base64"})
    if bad:
        raise InvalidFieldsError("files: every content must be base64", bad)
    return decoded


def execution_body(request: RunCodeRequest, bounds: RequestBounds) -> ExecutionCreate:
    """What ``request`` runs as: ``POST /v1/executions``' body (the server's default runtime),
    validated under ``bounds`` like any other (422 with ``details``)."""
    data = {
        "code": request.code,
        "stdin": request.stdin or "",
        "files": decoded_files(request.files),
        "limits": limits_request(request.run_timeout, request.memory_limit_MB, bounds.max_limits),
    }
    try:
        return validate_body(ExecutionCreate, data, bounds)
    except ValidationError as exc:
        details = validation_details(exc.errors(include_url=False, include_input=False))
        raise InvalidFieldsError("the request failed validation", details) from None


def return_code(record: ExecutionRecord) -> int | None:
    """The process's exit code, or ``-signal``; None for a timeout (as SandboxFusion's)."""
    if record.status is ExecutionStatus.TIMEOUT:
        return None
    if record.exit_code is not None:
        return record.exit_code
    if record.signal is not None:
        return -record.signal
    return _KILLED if record.status in _NO_WORD else 0


def command_result(record: ExecutionRecord) -> CommandRunResult:
    """The record as SandboxFusion's ``run_result``."""
    if record.status is ExecutionStatus.TIMEOUT:
        status = CommandRunStatus.TIME_LIMIT_EXCEEDED
    elif record.status in _NO_WORD:
        status = CommandRunStatus.ERROR
    else:
        status = CommandRunStatus.FINISHED
    return CommandRunResult(
        status=status,
        execution_time=record.wall_time_s,
        cpu_time=record.cpu_time_s,
        return_code=return_code(record),
        stdout=record.stdout,
        stderr=record.stderr,
    )


def fetched(artifacts: Sequence[Artifact], paths: Sequence[str]) -> dict[str, str]:
    """Of ``paths``, those among ``artifacts``: path → base64."""
    by_path = {artifact.path: artifact.base64 for artifact in artifacts}
    return {path: by_path[path] for path in paths if path in by_path}


def run_code_response(record: ExecutionRecord, fetch_files: Sequence[str]) -> RunCodeResponse:
    """The terminal ``record`` as SandboxFusion's answer (the table of the module docstring)."""
    if record.status is ExecutionStatus.INTERNAL_ERROR:
        return RunCodeResponse(
            status=RunStatus.SANDBOX_ERROR,
            message=f"the service failed to run the program (execution {record.id}); retry",
        )
    if record.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING):
        return RunCodeResponse(
            status=RunStatus.SANDBOX_ERROR,
            message=f"execution {record.id} has not finished; retry",
        )
    files = fetched(record.artifacts, fetch_files)
    messages = [_NO_WORD[record.status]] if record.status in _NO_WORD else []
    missing = [path for path in fetch_files if path not in files]
    if missing:
        messages.append(f"not fetched (only files left under out/ are): {', '.join(missing)}")
    return RunCodeResponse(
        status=RunStatus.SUCCESS if record.status is ExecutionStatus.OK else RunStatus.FAILED,
        message="; ".join(messages),
        run_result=command_result(record),
        files=files,
    )


def policy_refusal(message: str) -> RunCodeResponse:
    """The answer to code the import policy refused: a failed run (the code's doing, as a
    failed test is), though nothing ran."""
    return RunCodeResponse(
        status=RunStatus.FAILED,
        message=f"policy_violation: {message}",
        run_result=CommandRunResult(
            status=CommandRunStatus.ERROR, return_code=1, stdout="", stderr=message
        ),
    )
