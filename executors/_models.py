"""Value objects of the engine: limits, requests, records.

Units are part of every name (``wall_timeout_s``, ``memory_bytes``). The API speaks
``memory_mb``; :class:`LimitsRequest` is that shape and :meth:`LimitsRequest.resolve`
turns it into :class:`Limits` against the server's defaults and maxima.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "TERMINAL_STATUSES",
    "ExecutionRecord",
    "ExecutionRequest",
    "ExecutionStatus",
    "Limits",
    "LimitsRequest",
    "check_files",
    "check_relative_path",
    "check_text",
]

MIB = 1024 * 1024
MAX_FILES = 100
MAX_FILE_PATH_CHARS = 255


class ExecutionStatus(enum.StrEnum):
    """Lifecycle of an execution; every run ends in exactly one terminal status."""

    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    NONZERO_EXIT = "nonzero_exit"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    INTERNAL_ERROR = "internal_error"


TERMINAL_STATUSES = frozenset(ExecutionStatus) - {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Limits(_Frozen):
    """The caps one execution runs under. All positive and finite."""

    wall_timeout_s: float = Field(gt=0)
    cpu_time_s: float = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    max_output_bytes: int = Field(gt=0)
    max_processes: int = Field(gt=0)
    max_file_bytes: int = Field(gt=0)
    max_open_files: int = Field(default=256, gt=0)
    disk_bytes: int = Field(default=64 * MIB, gt=0)

    @model_validator(mode="after")
    def _check_coherent(self) -> Self:
        if self.max_file_bytes > self.disk_bytes:
            raise ValueError("max_file_bytes must not exceed disk_bytes")
        return self

    def within(self, maxima: Limits) -> list[str]:
        """Names of the fields that exceed ``maxima``."""
        mine, theirs = self.model_dump(), maxima.model_dump()
        return [name for name, value in mine.items() if value > theirs[name]]

    def to_api(self) -> dict[str, Any]:
        """The ``limits`` object of the API record (``memory_mb`` instead of bytes)."""
        return {
            "wall_timeout_s": self.wall_timeout_s,
            "cpu_time_s": self.cpu_time_s,
            "memory_mb": self.memory_bytes / MIB
            if self.memory_bytes % MIB
            else self.memory_bytes // MIB,
            "max_output_bytes": self.max_output_bytes,
            "max_processes": self.max_processes,
            "max_file_bytes": self.max_file_bytes,
        }


class LimitsRequest(_Frozen):
    """Limits as a client asks for them: every field optional, in API units."""

    wall_timeout_s: float | None = Field(default=None, gt=0)
    cpu_time_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    max_output_bytes: int | None = Field(default=None, gt=0)
    max_processes: int | None = Field(default=None, gt=0)
    max_file_bytes: int | None = Field(default=None, gt=0)

    def resolve(self, defaults: Limits, maxima: Limits) -> Limits:
        """Fill gaps from ``defaults``; raise ``ValueError`` naming fields over ``maxima``."""
        asked = self.model_dump(exclude_none=True)
        if "memory_mb" in asked:
            asked["memory_bytes"] = asked.pop("memory_mb") * MIB
        limits = defaults.model_copy(update=asked)
        limits = Limits.model_validate(limits.model_dump())
        over = limits.within(maxima)
        if over:
            raise ValueError(f"over the server maximum: {', '.join(over)}")
        return limits


def check_text(value: str, what: str) -> str:
    """Refuse text that cannot be stored or run: NUL, lone surrogates."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates)") from exc
    return value


class ExecutionRequest(_Frozen):
    """One program to run: source text, standard input, files, and effective limits."""

    code: str
    stdin: str = ""
    files: dict[str, str] = Field(default_factory=dict)
    limits: Limits

    @field_validator("code", "stdin")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_text(value, "text")

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        return check_files(files)


def check_files(files: dict[str, str]) -> dict[str, str]:
    """The files of a request: few enough, relative paths, storable text."""
    if len(files) > MAX_FILES:
        raise ValueError(f"at most {MAX_FILES} files")
    for path, content in files.items():
        check_relative_path(path)
        check_text(content, f"file {path!r}")
    return files


def check_relative_path(path: str) -> str:
    """Refuse anything but a plain relative path inside the working directory."""
    check_text(path, "file path")
    parts = PurePosixPath(path).parts
    if (
        not path
        or len(path) > MAX_FILE_PATH_CHARS
        or path.startswith("/")
        or "\\" in path
        or any(part in ("..", ".") for part in path.split("/"))
        or not parts
        or any(ord(ch) < 32 for ch in path)
    ):
        raise ValueError(f"file path {path!r} must be relative, without '..'")
    return path


def utc_now() -> datetime:
    return datetime.now(UTC)


class ExecutionRecord(BaseModel):
    """The execution record of the API, field for field."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    status: ExecutionStatus
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    peak_memory_bytes: int | None = None
    limits: dict[str, Any]
    created_at: datetime = Field(default_factory=utc_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cached: bool = False
    cached_from: uuid.UUID | None = None
    passed: bool | None = None

    def to_api(self) -> dict[str, Any]:
        """The JSON object the API returns."""
        return self.model_dump(mode="json")
