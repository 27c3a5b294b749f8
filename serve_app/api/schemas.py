"""Request bodies of the API (``API.md``), strict: what is stored is exactly what runs.

Every model forbids unknown fields, refuses NaN and infinities, and validates in strict mode
(``"5"`` is not a number, ``5.0`` is not an integer, ``true`` is neither). Text (code, input,
files, tests) may hold neither NUL nor lone surrogates: the engine's own checks decide
(``executors._models``), so the API refuses with 422 what the engine would refuse later.

The server's maxima are not module globals: validate with :func:`validate_body` and the
:class:`RequestBounds` the app built from its :class:`~serve_app.settings.Settings`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from executors import (
    MAX_CASES,
    RUNTIMES,
    SCIENTIFIC,
    CaseSpec,
    JudgeMode,
    Limits,
    LimitsRequest,
    check_files,
    check_runtime,
    check_text,
)
from serve_app import files as api_files
from serve_app.errors import describe_validation_error
from serve_app.settings import Settings

__all__ = [
    "MAX_CASES",
    "MAX_JSON_DEPTH",
    "BatchCreate",
    "BatchItem",
    "Case",
    "ExecutionCreate",
    "RequestBounds",
    "SessionCall",
    "SessionCallLimits",
    "SessionCreate",
    "SessionInfo",
    "SessionLimits",
    "validate_body",
]

MAX_JSON_DEPTH = 64
"""Nesting allowed in a request body; the deepest valid body needs 4 (batch, item, cases, case)."""

_Body = TypeVar("_Body", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class RequestBounds:
    """The server's maxima for request bodies, taken from the settings when the app is built."""

    max_body_bytes: int
    max_code_bytes: int
    max_batch_items: int
    default_limits: Limits
    max_limits: Limits
    default_runtime: str = SCIENTIFIC
    max_cases: int = MAX_CASES
    max_json_depth: int = MAX_JSON_DEPTH
    session_idle_timeout_s: float = 600.0
    session_max_ttl_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestBounds:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_code_bytes=settings.max_code_bytes,
            max_batch_items=settings.max_batch_items,
            default_limits=settings.default_limits(),
            max_limits=settings.max_limits(),
            default_runtime=settings.default_runtime,
            session_idle_timeout_s=settings.session_idle_timeout_s,
            session_max_ttl_s=settings.session_max_ttl_s,
        )


def validate_body(model: type[_Body], data: Any, bounds: RequestBounds) -> _Body:
    """Validate decoded JSON ``data`` as ``model`` under ``bounds`` (strict mode)."""
    return model.model_validate(data, strict=True, context=bounds)


def _bounds(info: ValidationInfo) -> RequestBounds:
    if isinstance(info.context, RequestBounds):
        return info.context
    # A programming error, not a client's: it must surface as a 500, not as a 422.
    raise TypeError("validate request bodies with validate_body(model, data, bounds)")


def _text(value: str) -> str:
    return check_text(value, "text")


Text = Annotated[StrictStr, AfterValidator(_text)]
"""A string the engine accepts: no NUL, no lone surrogate."""


def _file_content(content: Any) -> str | bytes:
    # Bytes come from Python callers only (JSON has none); they are what a JSON file decodes to.
    return content if isinstance(content, bytes) else api_files.file_from_api(content)


class Base64File(BaseModel):
    """A file's bytes in JSON: the schema the OpenAPI document shows (:mod:`serve_app.files`
    decodes it)."""

    model_config = ConfigDict(extra="forbid")

    base64: str = Field(
        description="Standard base64, padded.",
        # Padded, and the unused low bits of the last character zero (serve_app.files).
        pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
    )


_SEGMENT = (
    r"(?:[^/\\\x00-\x1f.][^/\\\x00-\x1f]*|\.[^/\\\x00-\x1f.][^/\\\x00-\x1f]*|\.\.[^/\\\x00-\x1f]+)"
)
FILES_SCHEMA: dict[str, JsonValue] = {
    "description": "Path → content, written into the working directory before the run. Paths "
    "are relative, without '..', '.' or empty parts, not under out/ (every run starts it "
    "empty), and no path is another's directory.",
    "propertyNames": {"pattern": f"^{_SEGMENT}(?:/{_SEGMENT})*$"},
}
"""The schema of a request's ``files`` beyond its type: what ``executors.check_files`` checks,
as far as a pattern can say it (the document's, for clients and fuzzers)."""


FileContent = Annotated[
    str | bytes, PlainValidator(_file_content, json_schema_input_type=str | Base64File)
]
"""A file of a request: a string (text), or ``{"base64": ...}`` decoded to bytes."""


def _check_code_bytes(value: str | None, info: ValidationInfo) -> str | None:
    limit = _bounds(info).max_code_bytes
    # Only strings near the cap pay for the encoding (a character is 1 to 4 bytes).
    if value is not None and len(value) * 4 > limit and len(value.encode()) > limit:
        raise ValueError(f"at most {limit} bytes of UTF-8")
    return value


def _within_maxima(limits: LimitsRequest, bounds: RequestBounds) -> LimitsRequest:
    """``limits``, or ``ValueError`` naming each field over the server's maximum (in the API's
    units, with the maximum: the engine's check speaks memory_bytes)."""
    maxima = bounds.max_limits.to_api()
    asked = limits.model_dump(exclude_none=True)
    over = [
        f"{name} (at most {maxima[name]})" for name, value in asked.items() if value > maxima[name]
    ]
    if over:
        raise ValueError(f"over the server maximum: {', '.join(over)}")
    try:
        limits.resolve(bounds.default_limits, bounds.max_limits)
    except ValueError as exc:  # a pydantic ValidationError too: resolve re-validates
        raise ValueError(describe_validation_error(exc)) from None
    return limits


def _default_runtime(data: Any, info: ValidationInfo) -> Any:
    """``data`` with ``DEFAULT_RUNTIME`` filled in where it names none."""
    if isinstance(data, dict) and "runtime" not in data:
        return {**data, "runtime": _bounds(info).default_runtime}
    return data


def _filled_in(*names: str) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra``: ``names`` are optional to a client (a ``before``
    validator fills them in from the server's settings), however the model declares them."""

    def optional(schema: dict[str, Any]) -> None:
        required = [name for name in schema.get("required", ()) if name not in names]
        if required:
            schema["required"] = required
        else:
            schema.pop("required", None)

    return optional


RuntimeName = Annotated[StrictStr, Field(json_schema_extra={"enum": list(RUNTIMES)})]
"""A runtime's name (``check_runtime`` refuses others; the document lists them)."""


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        hide_input_in_errors=True,
    )


Case = CaseSpec
"""One input of a judged execution and the output it must produce: the engine's own model
(the same checks on its text), so that a request's cases go to the executors as they are."""


class _ExecutionBody(_Strict):
    model_config = ConfigDict(json_schema_extra=_filled_in("runtime"))

    code: Text
    stdin: Text = ""
    files: dict[StrictStr, FileContent] = Field(
        default_factory=dict, json_schema_extra=FILES_SCHEMA
    )
    """Path → text or bytes (``{"base64": ...}`` in JSON, decoded here: :mod:`serve_app.files`);
    dumped back in the API form."""
    runtime: RuntimeName
    """One of ``executors.RUNTIMES``; left out: ``DEFAULT_RUNTIME``, filled in here, so what is
    stored and run always names its runtime."""
    limits: LimitsRequest = Field(default_factory=LimitsRequest)
    cache: StrictBool = False
    test_code: Text | None = None
    judge: Literal["isolated", "in_process"] = JudgeMode.ISOLATED.value
    """How ``test_code`` runs (the engine's :class:`executors.JudgeMode`)."""
    cases: list[Case] | None = Field(default=None, min_length=1, max_length=MAX_CASES)

    @field_validator("code", "test_code")
    @classmethod
    def _code_bytes(cls, code: str | None, info: ValidationInfo) -> str | None:
        return _check_code_bytes(code, info)

    @model_validator(mode="before")
    @classmethod
    def _default_runtime(cls, data: Any, info: ValidationInfo) -> Any:
        return _default_runtime(data, info)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, name: str) -> str:
        return check_runtime(name)

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
        return check_files(files)

    @field_serializer("files")
    def _files_in_api_form(self, files: dict[str, str | bytes]) -> dict[str, api_files.ApiFile]:
        return api_files.to_api(files)

    @field_validator("limits")
    @classmethod
    def _within_maxima(cls, limits: LimitsRequest, info: ValidationInfo) -> LimitsRequest:
        return _within_maxima(limits, _bounds(info))


class BatchItem(_ExecutionBody):
    """One execution of a batch: an execution request without ``wait``."""


class ExecutionCreate(_ExecutionBody):
    """The body of ``POST /v1/executions``."""

    wait: StrictBool = True


class BatchCreate(_Strict):
    """The body of ``POST /v1/batches``: 1 to ``MAX_BATCH_ITEMS`` executions."""

    items: list[BatchItem] = Field(min_length=1)

    @field_validator("items", mode="before")
    @classmethod
    def _at_most_max_items(cls, items: Any, info: ValidationInfo) -> Any:
        # Before validating the items: a refused batch should cost nothing per item.
        limit = _bounds(info).max_batch_items
        if isinstance(items, list) and len(items) > limit:
            raise ValueError(f"at most {limit} items")
        return items


# --- sessions (API.md, Sessions)


class SessionLimits(_Strict):
    """The caps of a whole session, in API units: they hold across all its calls."""

    memory_mb: int | None = Field(default=None, gt=0)
    max_processes: int | None = Field(default=None, gt=0)
    max_file_bytes: int | None = Field(default=None, gt=0)


class SessionCallLimits(_Strict):
    """The caps of one call in a session, in API units (the session's own hold too)."""

    wall_timeout_s: float | None = Field(default=None, gt=0)
    cpu_time_s: float | None = Field(default=None, gt=0)
    max_output_bytes: int | None = Field(default=None, gt=0)


def _as_request(limits: SessionLimits | SessionCallLimits, bounds: RequestBounds) -> LimitsRequest:
    return _within_maxima(LimitsRequest(**limits.model_dump()), bounds)


class SessionCreate(_Strict):
    """The body of ``POST /v1/sessions``; what is left out is filled in here (the runtime,
    ``SESSION_IDLE_TIMEOUT_S``, ``SESSION_MAX_TTL_S``), so what is stored names it all."""

    model_config = ConfigDict(json_schema_extra=_filled_in("runtime", "idle_timeout_s", "ttl_s"))

    runtime: RuntimeName
    limits: SessionLimits = Field(default_factory=SessionLimits)
    idle_timeout_s: float = Field(gt=0)
    ttl_s: float = Field(gt=0)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any, info: ValidationInfo) -> Any:
        data = _default_runtime(data, info)
        if not isinstance(data, dict):
            return data
        bounds = _bounds(info)
        defaults = {
            "idle_timeout_s": bounds.session_idle_timeout_s,
            "ttl_s": bounds.session_max_ttl_s,
        }
        return {**defaults, **data}

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, name: str) -> str:
        return check_runtime(name)

    @field_validator("idle_timeout_s", "ttl_s")
    @classmethod
    def _at_most_max_ttl(cls, seconds: float, info: ValidationInfo) -> float:
        limit = _bounds(info).session_max_ttl_s
        if seconds > limit:
            raise ValueError(f"at most {limit:g} s (SESSION_MAX_TTL_S)")
        return seconds

    @field_validator("limits")
    @classmethod
    def _within_maxima(cls, limits: SessionLimits, info: ValidationInfo) -> SessionLimits:
        _as_request(limits, _bounds(info))
        return limits

    def limits_request(self) -> LimitsRequest:
        """The session's caps as the engine's request shape (the rest: server defaults)."""
        return LimitsRequest(**self.limits.model_dump())


class SessionCall(_Strict):
    """The body of ``POST /v1/sessions/{id}/executions``: one call in the session."""

    code: Text
    stdin: Text = ""
    files: dict[StrictStr, FileContent] = Field(
        default_factory=dict, json_schema_extra=FILES_SCHEMA
    )
    limits: SessionCallLimits = Field(default_factory=SessionCallLimits)

    @property
    def test_code(self) -> None:
        """A session call is never judged (the import policy reads this, as of any body)."""
        return None

    @field_validator("code")
    @classmethod
    def _code_bytes(cls, code: str, info: ValidationInfo) -> str | None:
        return _check_code_bytes(code, info)

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
        return check_files(files)

    @field_serializer("files")
    def _files_in_api_form(self, files: dict[str, str | bytes]) -> dict[str, api_files.ApiFile]:
        return api_files.to_api(files)

    @field_validator("limits")
    @classmethod
    def _within_maxima(cls, limits: SessionCallLimits, info: ValidationInfo) -> SessionCallLimits:
        _as_request(limits, _bounds(info))
        return limits

    def limits_request(self) -> LimitsRequest:
        """The call's own caps as the engine's request shape."""
        return LimitsRequest(**self.limits.model_dump())


class SessionInfo(BaseModel):
    """A session as the API answers it (API.md, Sessions; ``calls``, ``terminated_at`` and
    ``message`` are additions). Also the Python client's typed answer."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    status: Literal["active", "terminated"]
    runtime: str
    limits: dict[str, Any]
    """In API units, as an execution record's: ``memory_mb``, ``wall_timeout_s``..."""
    idle_timeout_s: float
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    terminated_reason: str | None = None
    calls: int = 0
    terminated_at: datetime | None = None
    message: str | None = None
    """Why it ended, for a person."""

    def to_api(self) -> dict[str, Any]:
        """The JSON object the API returns."""
        return self.model_dump(mode="json")
