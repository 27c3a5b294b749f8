"""Value objects of the engine: limits, requests, records.

Units are part of every name (``wall_timeout_s``, ``memory_bytes``). The API speaks
``memory_mb``; :class:`LimitsRequest` is that shape and :meth:`LimitsRequest.resolve`
turns it into :class:`Limits` against the server's defaults and maxima.

A request with ``test_code`` or ``cases`` is *judged*: its record's ``passed`` is a bool
(``executors/_evaluation.py`` says how it is decided); otherwise ``passed`` is None.
"""

from __future__ import annotations

import binascii
import enum
import uuid
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from executors._runtimes import check_runtime

__all__ = [
    "MAX_CASES",
    "TERMINAL_STATUSES",
    "Artifact",
    "CaseResult",
    "CaseSpec",
    "EndReason",
    "ExecutionRecord",
    "ExecutionRequest",
    "ExecutionStatus",
    "JudgeMode",
    "Limits",
    "LimitsRequest",
    "check_files",
    "check_relative_path",
    "check_text",
    "cut_utf8",
]

MIB = 1024 * 1024
MAX_FILES = 100
MAX_FILE_PATH_CHARS = 255
MAX_CASES = 100
_Content = TypeVar("_Content", str, bytes, str | bytes)
ARTIFACTS_DIR = "out"
"""Where a program leaves the files it hands back (API.md, "Artifacts")."""


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


class EndReason(enum.StrEnum):
    """Why a session ended (its ``terminated_reason``)."""

    IDLE = "idle"
    """No call for ``idle_timeout_s``."""
    TTL = "ttl"
    """``expires_at`` passed."""
    TIMEOUT = "timeout"
    """A call ran past its time limit and ignored the interrupt for the grace second."""
    OUTPUT_LIMIT = "output_limit"
    """A call wrote past its output cap and ignored the interrupt for the grace second."""
    EXITED = "exited"
    """The program ended the interpreter (``sys.exit()``, ``os._exit``)."""
    MEMORY_LIMIT = "memory_limit"
    """The session's memory cap: killed by it, or a call died of a ``MemoryError``."""
    CRASHED = "crashed"
    """The interpreter died of a signal the service did not send."""
    DELETED = "deleted"
    """``DELETE /v1/sessions/{id}``."""
    SHUTDOWN = "shutdown"
    """The service shut down."""
    LOST = "lost"
    """The actor or node that held it is gone (or never heard of it)."""


class JudgeMode(enum.StrEnum):
    """Where ``test_code`` runs (API.md, "Evaluation").

    ``isolated``: in a process of its own beside the program's, which the program can neither
    read, trace nor write to; calls of the program's functions cross as plain values or opaque
    handles. ``in_process``: after the program, in the same interpreter (for tests that patch or
    share the program's objects); it resists the common tricks, not a program reading its own
    memory.
    """

    ISOLATED = "isolated"
    IN_PROCESS = "in_process"


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
    max_artifacts: int = Field(default=20, ge=0)
    """Files of ``out/`` returned at most (``MAX_ARTIFACTS``)."""
    max_artifact_bytes: int = Field(default=10 * MIB, ge=0)
    """Bytes of ``out/`` returned at most, all files together (``MAX_ARTIFACT_BYTES``)."""

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


class CaseSpec(_Frozen):
    """One input of a judged run and the standard output it must produce."""

    stdin: str = ""
    expected_stdout: str

    @field_validator("stdin", "expected_stdout")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_text(value, "case text")


class ExecutionRequest(_Frozen):
    """One program to run: source text, standard input, files, and effective limits.

    ``test_code`` runs after ``code`` in the same program; ``cases`` runs the program once
    per case, each case's ``stdin`` replacing ``stdin`` (with ``test_code`` too, if given).
    """

    code: str
    stdin: str = ""
    files: dict[str, str | bytes] = Field(default_factory=dict)
    """Path → text (written as UTF-8) or bytes."""
    limits: Limits
    runtime: str | None = None
    """The runtime to run in (``executors.RUNTIMES``); None: the pool's default."""
    test_code: str | None = None
    judge: JudgeMode = JudgeMode.ISOLATED
    """How ``test_code`` runs; ignored without it."""
    cases: list[CaseSpec] | None = Field(default=None, min_length=1, max_length=MAX_CASES)
    """At least one: "every case passed" must not be vacuously true."""

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, name: str | None) -> str | None:
        return None if name is None else check_runtime(name)

    @field_validator("code", "stdin", "test_code")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "text")

    @property
    def judged(self) -> bool:
        """Whether the record must say ``passed`` (true or false), not leave it None."""
        return self.test_code is not None or self.cases is not None

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
        return check_files(files)


def check_files(files: dict[str, _Content]) -> dict[str, _Content]:
    """The files of a request: few enough, relative paths outside ``out/``, storable text, and
    a tree that can be written (no path is both a file and another file's directory)."""
    if len(files) > MAX_FILES:
        raise ValueError(f"at most {MAX_FILES} files")
    for path, content in files.items():
        check_relative_path(path)
        if path.split("/", 1)[0] == ARTIFACTS_DIR:
            raise ValueError(
                f"file path {path!r} is under {ARTIFACTS_DIR}/, which every run starts empty"
            )
        if isinstance(content, str):
            check_text(content, f"file {path!r}")
    directories = {str(parent) for path in files for parent in PurePosixPath(path).parents}
    for path in files:
        if path in directories:
            raise ValueError(f"file path {path!r} is also the directory of another file")
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
        or any(part in ("..", ".", "") for part in path.split("/"))
        or not parts
        or any(ord(ch) < 32 for ch in path)
    ):
        raise ValueError(
            f"file path {path!r} must be relative, without '..', '.', empty parts or a final '/'"
        )
    return path


def cut_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """The longest beginning of ``text`` of at most ``max_bytes`` in UTF-8 (never half a
    character), and whether anything was cut."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    return encoded[:max_bytes].decode("utf-8", errors="ignore"), True


def utc_now() -> datetime:
    return datetime.now(UTC)


class CaseResult(BaseModel):
    """How one case of a judged run went: its run's outcome and whether it passed."""

    model_config = ConfigDict(extra="forbid")

    status: ExecutionStatus
    passed: bool
    stdout: str = ""
    stderr: str = ""
    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    peak_memory_bytes: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class Artifact(BaseModel):
    """A file the program left under ``out/`` (API.md, "Artifacts")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="Relative to the working directory: out/plot.png.")
    size_bytes: int = Field(ge=0)
    media_type: str = Field(description="Guessed from the name; application/octet-stream.")
    base64: str = Field(description="The file's bytes, base64-encoded.")

    def content(self) -> bytes:
        return binascii.a2b_base64(self.base64)


class ExecutionRecord(BaseModel):
    """The execution record of the API, field for field.

    ``cases`` is there only for a request with cases (the API leaves the key out otherwise);
    ``passed`` always, None when the request asked for no judgement.
    """

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
    cases: list[CaseResult] | None = None
    runtime: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    artifacts_truncated: bool = False
    session_id: uuid.UUID | None = None
    """The session the call ran in (None: a run of its own)."""
    result: str | None = None
    """A session call's: the ``repr`` of its final expression's value (None: a statement, or
    the value None), capped like the output."""
    stream_dropped_bytes: int | None = None
    """A streamed run's: UTF-8 bytes of output chunks left out of the stream because its client
    could not keep up (the record's ``stdout``/``stderr`` still hold them); None: not streamed."""

    @classmethod
    def internal_error(
        cls, request: ExecutionRequest, created_at: datetime | None = None
    ) -> ExecutionRecord:
        """The record of a run the service failed (a judged one did not pass)."""
        return cls(
            status=ExecutionStatus.INTERNAL_ERROR,
            limits=request.limits.to_api(),
            created_at=created_at or utc_now(),
            finished_at=utc_now(),
            passed=False if request.judged else None,
            runtime=request.runtime,
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON object the API returns."""
        return self.model_dump(mode="json", exclude={"cases"} if self.cases is None else None)
