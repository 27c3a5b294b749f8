"""``/compat/sandbox-fusion``: SandboxFusion's ``run_code`` and ``run_jupyter`` (API.md,
"Compatibility"), the answers derived from our records by :mod:`serve_app.compat`.

Each operation is served twice: with the key in a header (as ``/v1/``), and with the key as a
path segment (``/k/{api_key}/run_code``) for SandboxFusion's client, which sends no header: its
endpoint setting carries the key. Both charge the key's rate (one execution per ``run_code``,
one per cell and one for the session of ``run_jupyter``) and store every run as an execution
of the key, through the same service as ``/v1/``. Nothing here writes the path anywhere: the
metrics and traces name the route's template.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from executors import ExecutionStatus
from serve_app.api import body_parser, current_request_id, request_bounds
from serve_app.compat import (
    CellRunResult,
    CommandRunResult,
    CommandRunStatus,
    RunCodeRequest,
    RunCodeResponse,
    RunJupyterRequest,
    RunJupyterResponse,
    RunStatus,
    cell_call,
    cell_result,
    cell_wall_s,
    decoded_files,
    execution_body,
    fetch_call,
    fetched,
    fetched_elsewhere,
    kernel_error,
    policy_refusal,
    run_code_response,
    session_body,
    unsupported_language,
)
from serve_app.db.models import ApiKey
from serve_app.errors import (
    OverloadedError,
    PolicyViolationError,
    SessionLimitError,
    SessionTerminatedError,
)
from serve_app.http._openapi import BODY_ERRORS, KEY_REQUIRED, v1_errors
from serve_app.http.deps import AuthenticatedKey, PathKey, ServiceDep, charge
from serve_app.http.service import ExecutionService

__all__ = ["router"]

router = APIRouter(prefix="/compat/sandbox-fusion", tags=["compatibility"])

RunCodeBody = Annotated[RunCodeRequest, Depends(body_parser(RunCodeRequest))]
RunJupyterBody = Annotated[RunJupyterRequest, Depends(body_parser(RunJupyterRequest))]

_RUN_CODE = "SandboxFusion's run_code (Python)"
_RUN_CODE_ERRORS = v1_errors(*BODY_ERRORS, OverloadedError)
_RUN_JUPYTER = "SandboxFusion's run_jupyter: the cells in one session"
_RUN_JUPYTER_ERRORS = v1_errors(*BODY_ERRORS, SessionLimitError, OverloadedError)
_IN_PATH = "; the key as a path segment, for clients that send no header"
_STOPPED_AT = {
    ExecutionStatus.TIMEOUT: CommandRunStatus.TIME_LIMIT_EXCEEDED,
    ExecutionStatus.MEMORY_LIMIT: CommandRunStatus.ERROR,
    ExecutionStatus.OUTPUT_LIMIT: CommandRunStatus.ERROR,
    ExecutionStatus.CRASHED: CommandRunStatus.ERROR,
}
"""A cell's status that ends the notebook, and the driver's status it gives."""
_FETCH_WALL_S = 10.0


@router.post(
    "/run_code",
    summary=_RUN_CODE,
    response_model=RunCodeResponse,
    responses=_RUN_CODE_ERRORS,
    openapi_extra=KEY_REQUIRED,
)
async def run_code(
    request: Request, service: ServiceDep, key: AuthenticatedKey, body: RunCodeBody
) -> JSONResponse:
    return await _run_code(request, service, key, body)


@router.post(
    "/k/{api_key}/run_code",
    summary=_RUN_CODE + _IN_PATH,
    response_model=RunCodeResponse,
    responses=_RUN_CODE_ERRORS,
)
async def run_code_key_in_path(
    request: Request, service: ServiceDep, key: PathKey, body: RunCodeBody
) -> JSONResponse:
    return await _run_code(request, service, key, body)


@router.post(
    "/run_jupyter",
    summary=_RUN_JUPYTER,
    response_model=RunJupyterResponse,
    responses=_RUN_JUPYTER_ERRORS,
    openapi_extra=KEY_REQUIRED,
)
async def run_jupyter(
    request: Request, service: ServiceDep, key: AuthenticatedKey, body: RunJupyterBody
) -> JSONResponse:
    return await _run_jupyter(request, service, key, body)


@router.post(
    "/k/{api_key}/run_jupyter",
    summary=_RUN_JUPYTER + _IN_PATH,
    response_model=RunJupyterResponse,
    responses=_RUN_JUPYTER_ERRORS,
)
async def run_jupyter_key_in_path(
    request: Request, service: ServiceDep, key: PathKey, body: RunJupyterBody
) -> JSONResponse:
    return await _run_jupyter(request, service, key, body)


def _json(answer: RunCodeResponse | RunJupyterResponse) -> JSONResponse:
    return JSONResponse(answer.model_dump(mode="json"))


async def _run_code(
    request: Request, service: ExecutionService, key: ApiKey, body: RunCodeRequest
) -> JSONResponse:
    await charge(request, service, key)
    refused = unsupported_language(body.language)
    if refused is not None:
        return _json(refused)
    execution = execution_body(body, request_bounds(request))
    try:
        created = await service.create(key, execution, request_id=current_request_id())
    except PolicyViolationError as violation:
        return _json(policy_refusal(violation.message))
    return _json(run_code_response(created.record, body.fetch_files))


async def _run_jupyter(
    request: Request, service: ExecutionService, key: ApiKey, body: RunJupyterRequest
) -> JSONResponse:
    await charge(request, service, key, len(body.cells) + 1)
    refused = kernel_error(body.kernel)
    if refused is not None:
        return _json(RunJupyterResponse(status=RunStatus.SANDBOX_ERROR, message=refused))
    notebook = _Notebook(request, service, key, body)
    return _json(await notebook.run())


class _Notebook:
    """One ``run_jupyter`` call: its session, the cells' answers so far, the time left."""

    def __init__(
        self, request: Request, service: ExecutionService, key: ApiKey, body: RunJupyterRequest
    ) -> None:
        self.bounds = request_bounds(request)
        self.service, self.key, self.body = service, key, body
        self.files = decoded_files(body.files)
        self.request_id = current_request_id()
        self.started = time.monotonic()
        self.cells: list[CellRunResult] = []
        self.fetched: dict[str, str] = {}

    def left_s(self) -> float:
        return self.body.total_timeout - (time.monotonic() - self.started)

    async def run(self) -> RunJupyterResponse:
        session = await self.service.create_session(
            self.key, session_body(self.body, self.bounds), request_id=self.request_id
        )
        try:
            return await self._cells(str(session.id))
        finally:
            await self.service.delete_session(self.key, str(session.id))

    async def _cells(self, session_id: str) -> RunJupyterResponse:
        for index, code in enumerate(self.body.cells):
            left = self.left_s()
            if left <= 0:
                return self._ended(CommandRunStatus.TIME_LIMIT_EXCEEDED, "total_timeout reached")
            call = cell_call(
                code,
                self.files if index == 0 else {},
                cell_wall_s(self.body.cell_timeout, left, self.bounds.max_limits),
                self.bounds,
            )
            try:
                record = await self.service.session_call(
                    self.key, session_id, call, request_id=self.request_id
                )
            except SessionTerminatedError as ended:
                return self._ended(CommandRunStatus.ERROR, f"before cell {index}: {ended.message}")
            except PolicyViolationError as violation:
                self.cells.append(_refused_cell(violation.message))
                continue
            if record.status is ExecutionStatus.INTERNAL_ERROR:
                return RunJupyterResponse(
                    status=RunStatus.SANDBOX_ERROR,
                    message=f"the service failed to run cell {index} (execution {record.id}); retry",
                )
            self.cells.append(cell_result(record))
            self.fetched.update(fetched(record.artifacts, self.body.fetch_files))
            if record.status in _STOPPED_AT:
                return self._ended(_STOPPED_AT[record.status], f"cell {index}: {record.status}")
        await self._fetch_elsewhere(session_id)
        return self._answer(CommandRunStatus.FINISHED, "")

    async def _fetch_elsewhere(self, session_id: str) -> None:
        """The files of ``fetch_files`` outside ``out/``, read by one closing call."""
        paths = fetched_elsewhere(self.body.fetch_files)
        if not paths:
            return
        call = fetch_call(
            paths, self.bounds, min(_FETCH_WALL_S, self.bounds.max_limits.wall_timeout_s)
        )
        try:
            record = await self.service.session_call(
                self.key, session_id, call, request_id=self.request_id
            )
        except SessionTerminatedError:
            return  # a cell ended the interpreter on its way out: no files, as none were left
        copies = {f"out/fetched-{index}": path for index, path in enumerate(paths)}
        for artifact in record.artifacts:
            if artifact.path in copies:
                self.fetched[copies[artifact.path]] = artifact.base64

    def _ended(self, driver: CommandRunStatus, why: str) -> RunJupyterResponse:
        return self._answer(driver, f"the notebook stopped: {why}")

    def _answer(self, driver: CommandRunStatus, message: str) -> RunJupyterResponse:
        finished = driver is CommandRunStatus.FINISHED
        return RunJupyterResponse(
            status=RunStatus.SUCCESS if finished else RunStatus.FAILED,
            message=message,
            driver=CommandRunResult(
                status=driver,
                execution_time=time.monotonic() - self.started,
                return_code=0 if finished else None,
                stdout="",
                stderr="",
            ),
            cells=self.cells,
            files={
                path: self.fetched[path] for path in self.body.fetch_files if path in self.fetched
            },
        )


def _refused_cell(message: str) -> CellRunResult:
    """A cell the import policy refused: an ``ImportError`` cell, as Python would raise."""
    return CellRunResult(
        stdout="",
        stderr="",
        display=[],
        error=[{"ename": "ImportError", "evalue": message, "traceback": [message]}],
    )
