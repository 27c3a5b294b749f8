"""``run_jupyter`` on our sessions: the cells run in order in one session (one interpreter that
keeps its state), started for the call and ended with it; each cell is one call, stored as an
execution of the key.

Each cell's answer comes from its call's record:

- ``stdout``; ``stderr`` up to the traceback of an uncaught exception;
- ``display``: the value of a final expression as ``{"text/plain": repr}`` (the record's
  ``result``), then each figure the cell drew as ``{"image/png": base64}`` (``out/figure-N.png``,
  in the scientific runtime: matplotlib's figures still open when the cell ends);
- ``error``: for a cell that raised (``nonzero_exit``), Jupyter's ``{"ename", "evalue",
  "traceback"}`` read from the traceback's last line.

As in SandboxFusion (whose kernel runs every cell whatever the one before did), a cell that
raised does not stop the next ones. Time: each cell's wall-clock limit is ``cell_timeout`` (0:
none of its own), never past what is left of ``total_timeout``, and capped by the server's
maximum; a cell past it ends the notebook: ``Failed`` with the ``driver`` ``TimeLimitExceeded``
and the cells run so far, the last one the cell cut short (SandboxFusion answers no cells
then). A session that ends under a cell (``sys.exit()``, the memory cap) ends the notebook as
``Failed`` with the ``driver`` ``Error``; a cell the service failed answers ``SandboxError``.

``fetch_files``: a path under ``out/`` is a file a cell left there (the last cell's to leave
it); any other is read after the last cell by one more call of the session, a fixed program
that copies the files named on its standard input into ``out/`` (the paths are data, never
code). It runs after every cell's answer is settled, so that nothing a cell did to the
interpreter can change an answer: at most the files, which are the cells' own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from executors import ExecutionRecord, ExecutionStatus, Limits
from serve_app.api import RequestBounds, SessionCall, SessionCreate, validate_body
from serve_app.api.errors import validation_details
from serve_app.compat.models import CellRunResult, RunJupyterRequest
from serve_app.compat.run_code import ARTIFACTS_PREFIX, limits_request
from serve_app.errors import InvalidFieldsError

__all__ = [
    "FETCH_CODE",
    "SESSION_GRACE_S",
    "cell_call",
    "cell_result",
    "cell_wall_s",
    "fetch_call",
    "fetched_elsewhere",
    "kernel_error",
    "session_body",
    "split_traceback",
]

SESSION_GRACE_S = 30.0
"""The session's idle timeout and lifetime beyond ``total_timeout``: it ends by itself soon
after, should the call that started it never end it."""
FETCH_CODE = """\
import json as _json, shutil as _shutil, sys as _sys
for _i, _path in enumerate(_json.loads(_sys.stdin.read())):
    try:
        _shutil.copyfile(_path, f"out/fetched-{_i}")
    except OSError:
        pass
"""
"""The call that reads back files outside ``out/``: the i-th path as ``out/fetched-i``."""
_FIGURE = re.compile(r"out/figure-\d+\.png")
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


def _validated(
    model: type[SessionCreate] | type[SessionCall], data: Any, bounds: RequestBounds
) -> Any:
    try:
        return validate_body(model, data, bounds)
    except ValidationError as exc:
        details = validation_details(exc.errors(include_url=False, include_input=False))
        raise InvalidFieldsError("the request failed validation", details) from None


def kernel_error(kernel: str) -> str | None:
    """Why ``kernel`` cannot run here, or None for ``python3``."""
    return (
        None
        if kernel == "python3"
        else f"kernel {kernel!r} not supported: this service runs Python"
    )


def session_body(request: RunJupyterRequest, bounds: RequestBounds) -> SessionCreate:
    """The session the notebook runs in (the server's default runtime)."""
    seconds = min(request.total_timeout + SESSION_GRACE_S, bounds.session_max_ttl_s)
    limits = {}
    if request.memory_limit_MB > 0:
        memory = limits_request(1.0, request.memory_limit_MB, bounds.max_limits)["memory_mb"]
        limits["memory_mb"] = memory
    data = {"limits": limits, "idle_timeout_s": seconds, "ttl_s": seconds}
    body: SessionCreate = _validated(SessionCreate, data, bounds)
    return body


def cell_wall_s(cell_timeout: float, left_s: float, maxima: Limits) -> float:
    """A cell's wall-clock limit: ``cell_timeout`` (0: none), within what is left of the total
    and the server's maximum."""
    wall = left_s if cell_timeout <= 0 else min(cell_timeout, left_s)
    return min(wall, maxima.wall_timeout_s)


def cell_call(
    code: str, files: dict[str, bytes], wall_s: float, bounds: RequestBounds, stdin: str = ""
) -> SessionCall:
    """One cell as a call of the session (the files go with the first)."""
    data = {
        "code": code,
        "stdin": stdin,
        "files": files,
        "limits": limits_request(wall_s, 0, bounds.max_limits, wall_only=True),
    }
    body: SessionCall = _validated(SessionCall, data, bounds)
    return body


def fetched_elsewhere(paths: Sequence[str]) -> list[str]:
    """The paths of ``fetch_files`` the closing call reads (those outside ``out/``)."""
    return [path for path in dict.fromkeys(paths) if not path.startswith(ARTIFACTS_PREFIX)]


def fetch_call(paths: Sequence[str], bounds: RequestBounds, wall_s: float) -> SessionCall:
    """The closing call that copies ``paths`` into ``out/`` (:data:`FETCH_CODE`)."""
    return cell_call(FETCH_CODE, {}, wall_s, bounds, stdin=json.dumps(list(paths)))


def split_traceback(stderr: str) -> tuple[str, str]:
    """``stderr`` as what the cell wrote and the traceback of its uncaught exception."""
    found = _TRACEBACK.search(stderr)
    if found is None:
        return stderr, ""
    return stderr[: found.start()], stderr[found.start() :]


def _error(traceback: str) -> dict[str, Any]:
    lines = traceback.rstrip("\n").splitlines()
    last = lines[-1] if lines else ""
    name, colon, value = last.partition(":")
    return {
        "ename": name.strip() if colon else last.strip(),
        "evalue": value.strip(),
        "traceback": lines,
    }


def cell_result(record: ExecutionRecord) -> CellRunResult:
    """One cell's answer from its call's record (see the module docstring)."""
    stderr, traceback = record.stderr, ""
    if record.status is ExecutionStatus.NONZERO_EXIT:
        stderr, traceback = split_traceback(record.stderr)
    display: list[dict[str, Any]] = []
    if record.result is not None:
        display.append({"text/plain": record.result})
    for artifact in record.artifacts:
        if _FIGURE.fullmatch(artifact.path):
            display.append({"image/png": artifact.base64})
    return CellRunResult(
        stdout=record.stdout,
        stderr=stderr,
        display=display,
        error=[_error(traceback)] if traceback else [],
    )
