"""SandboxFusion's request and response models, as its client (``sandbox-fusion`` 0.3.7) sends
and reads them, and as its server (bytedance/SandboxFusion ``sandbox/server/sandbox_api.py``)
declares them.

Requests ignore fields they do not know (SandboxFusion's server does: its client sends fields an
older or newer server may not have) and take ``language`` as any string, so that another
language is answered with a ``SandboxError`` rather than refused. Responses carry every field the
client's models read, with its names and types.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

__all__ = [
    "CellRunResult",
    "CommandRunResult",
    "CommandRunStatus",
    "RunCodeRequest",
    "RunCodeResponse",
    "RunJupyterRequest",
    "RunJupyterResponse",
    "RunStatus",
]


class CommandRunStatus(enum.StrEnum):
    """How one command (the program; a notebook's driver) ended."""

    FINISHED = "Finished"
    ERROR = "Error"
    TIME_LIMIT_EXCEEDED = "TimeLimitExceeded"


class RunStatus(enum.StrEnum):
    """The answer's verdict: the client raises (and retries) on ``SandboxError``."""

    SUCCESS = "Success"
    FAILED = "Failed"
    SANDBOX_ERROR = "SandboxError"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, hide_input_in_errors=True)


class RunCodeRequest(_Request):
    """The body of ``run_code``."""

    code: StrictStr
    language: StrictStr = Field(description="`python` or `python3`; another: `SandboxError`.")
    compile_timeout: float = Field(10, description="Unused: Python is not compiled.")
    run_timeout: float = Field(10, gt=0, description="Seconds of wall clock (and of CPU).")
    memory_limit_MB: int = Field(-1, description="MiB; zero or negative: the server's default.")
    stdin: StrictStr | None = None
    files: dict[StrictStr, StrictStr | None] = Field(
        default_factory=dict, description="Path → base64 content (null: no file)."
    )
    fetch_files: list[StrictStr] = Field(
        default_factory=list, description="Paths under out/ to return, base64."
    )


class RunJupyterRequest(_Request):
    """The body of ``run_jupyter``."""

    cells: list[StrictStr]
    cell_timeout: float = Field(0, ge=0, description="Seconds per cell; 0: only the total.")
    total_timeout: float = Field(45, gt=0, description="Seconds for all the cells.")
    kernel: StrictStr = Field("python3", description="`python3` only.")
    memory_limit_MB: int = Field(-1, description="MiB; zero or negative: the server's default.")
    files: dict[StrictStr, StrictStr | None] = Field(default_factory=dict)
    fetch_files: list[StrictStr] = Field(default_factory=list)


class CommandRunResult(BaseModel):
    """One command's outcome."""

    status: CommandRunStatus
    execution_time: float | None = None
    cpu_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    """The answer of ``run_code``."""

    status: RunStatus
    message: str
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


class CellRunResult(BaseModel):
    """One notebook cell's outcome: ``display`` holds MIME bundles (``text/plain``,
    ``image/png``), ``error`` Jupyter's ``{ename, evalue, traceback}``."""

    stdout: str
    stderr: str
    display: list[dict[str, Any]]
    error: list[dict[str, Any]]


class RunJupyterResponse(BaseModel):
    """The answer of ``run_jupyter``."""

    status: RunStatus
    message: str
    driver: CommandRunResult | None = None
    cells: list[CellRunResult] = Field(default_factory=list)
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
