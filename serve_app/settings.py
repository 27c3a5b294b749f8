"""The service's settings: one object, read from the environment and ``.env``, checked at start.

Every setting is named in the environment by its upper-case variable (``MAX_TIMEOUT``) and in
Python by a snake_case attribute that carries its unit (``max_wall_timeout_s``). The documented
name is the variable; the attribute name is accepted too (``Settings(max_wall_timeout_s=3)``,
and, as a side effect of that, in the environment). ``.env.example`` lists every variable.

``MAX_*`` settings are the server's maxima (a request asking for more is refused);
``DEFAULT_*`` settings apply when a request leaves a limit out, and must not exceed the maxima.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from executors import Limits, PipelineDefaults, SandboxConfig
from serve_app.errors import ConfigurationError, describe_validation_error
from serve_app.policy import ImportPolicy

__all__ = ["Settings", "get_settings", "load_settings", "pipeline_defaults"]

KIB = 1024
MIB = 1024 * KIB
PLACEHOLDER_SECRET = "changethis"  # noqa: S105 - the placeholder production refuses
MIN_SECRET_CHARS = 32

Environment = Literal["local", "staging", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Port = Annotated[int, Field(ge=1, le=65535)]

# (DEFAULT_*, MAX_*) attribute pairs: a default above its maximum could never be granted.
_DEFAULT_MAX_PAIRS = (
    ("default_wall_timeout_s", "max_wall_timeout_s"),
    ("default_cpu_time_s", "max_cpu_time_s"),
    ("default_memory_mb", "max_memory_mb"),
    ("default_max_output_bytes", "max_output_bytes"),
    ("default_max_processes", "max_processes"),
    ("default_max_file_bytes", "max_file_bytes"),
)


def _env(name: str, default: Any, **constraints: Any) -> Any:
    """A field read from environment variable ``name`` (also settable by attribute name)."""
    return Field(default, validation_alias=name, **constraints)


class Settings(BaseSettings):
    """All configuration of the service. Invalid or unsafe values refuse to load."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # --- the HTTP service
    host: str = _env("HOST", "127.0.0.1", min_length=1)
    port: Port = _env("PORT", 8000)
    environment: Environment = _env("ENVIRONMENT", "local")
    log_level: LogLevel = _env("LOG_LEVEL", "INFO")
    database_url: str = _env("DATABASE_URL", "sqlite:///./data/exec_agent.db", min_length=1)
    redis_url: str | None = _env("REDIS_URL", None)
    cors_origins: Annotated[list[str], NoDecode] = _env("CORS_ORIGINS", [])
    rate_limit_per_minute: int = _env("RATE_LIMIT_PER_MINUTE", 60, gt=0)
    rate_limit_fail_closed: bool = _env("RATE_LIMIT_FAIL_CLOSED", False)
    redis_timeout_s: float = _env("REDIS_TIMEOUT_S", 0.25, gt=0)
    max_concurrent_per_key: int = _env("MAX_CONCURRENT_PER_KEY", 8, gt=0)
    concurrency_lease_ttl_s: float = _env("CONCURRENCY_LEASE_TTL_S", 300.0, gt=0)
    api_key_secret: SecretStr = _env("API_KEY_SECRET", SecretStr(PLACEHOLDER_SECRET))
    sentry_dsn: str | None = _env("SENTRY_DSN", None)
    # Tracing (serve_app/observability/_tracing.py): OpenTelemetry's own variables. The OTLP/HTTP
    # collector's base URL (spans go to its /v1/traces); unset: no tracing at all.
    otel_exporter_otlp_endpoint: str | None = _env("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    otel_service_name: str = _env("OTEL_SERVICE_NAME", "exec-agent", min_length=1)
    max_code_bytes: int = _env("MAX_CODE_BYTES", 256 * KIB, gt=0)
    max_body_bytes: int = _env("MAX_BODY_BYTES", 2 * MIB, gt=0)
    max_batch_items: int = _env("MAX_BATCH_ITEMS", 1000, gt=0)
    # Largest execution record stored or answered, bytes of its JSON: beyond, the outputs (the
    # record's and each case's) are cut and their *_truncated flags set. 100 cases of
    # MAX_OUTPUT_BYTES per stream would otherwise make one record of hundreds of MiB.
    max_record_bytes: int = _env("MAX_RECORD_BYTES", 16 * MIB, ge=64 * KIB)
    # Failed authentications one client address may make per minute (a burst of as many); past
    # that its requests with keys not seen working lately are refused (429) before any key is
    # looked up in the database.
    auth_failures_per_minute: int = _env("AUTH_FAILURES_PER_MINUTE", 120, gt=0)
    result_cache_ttl_s: int = _env("RESULT_CACHE_TTL_S", 3600, gt=0)
    # Results bigger than this (as stored: the record's JSON) are not cached: a few outputs of
    # MAX_OUTPUT_BYTES would otherwise fill Redis or the process.
    result_cache_max_record_bytes: int = _env("RESULT_CACHE_MAX_RECORD_BYTES", 1 * MIB, gt=0)
    # Entries of the in-process cache (no REDIS_URL), least recently used evicted first.
    result_cache_max_entries: int = _env("RESULT_CACHE_MAX_ENTRIES", 10_000, gt=0)
    graceful_shutdown_timeout_s: float = _env("GRACEFUL_SHUTDOWN_TIMEOUT_S", 35.0, gt=0)
    # Recovery (serve_app/http/_recovery.py): every ingress replica says it is alive this often;
    # executions accepted by one silent for INSTANCE_STALE_AFTER_S are taken over by another.
    instance_heartbeat_interval_s: float = _env("INSTANCE_HEARTBEAT_INTERVAL_S", 5.0, gt=0)
    instance_stale_after_s: float = _env("INSTANCE_STALE_AFTER_S", 30.0, gt=0)
    # The import policy (serve_app/policy.py): top-level module names; empty: no restriction.
    allowed_imports: Annotated[list[str], NoDecode] = _env("ALLOWED_IMPORTS", [])
    denied_imports: Annotated[list[str], NoDecode] = _env("DENIED_IMPORTS", [])

    # --- server maxima for one execution
    max_wall_timeout_s: float = _env("MAX_TIMEOUT", 30.0, gt=0)
    max_cpu_time_s: float = _env("MAX_CPU_TIME", 30.0, gt=0)
    max_memory_mb: int = _env("MAX_MEMORY_MB", 512, gt=0)
    max_output_bytes: int = _env("MAX_OUTPUT_BYTES", 1 * MIB, gt=0)
    max_processes: int = _env("MAX_PROCESSES", 64, gt=0)
    max_file_bytes: int = _env("MAX_FILE_BYTES", 64 * MIB, gt=0)

    # --- defaults for limits a request leaves out
    default_wall_timeout_s: float = _env("DEFAULT_TIMEOUT", 5.0, gt=0)
    default_cpu_time_s: float = _env("DEFAULT_CPU_TIME", 5.0, gt=0)
    default_memory_mb: int = _env("DEFAULT_MEMORY_MB", 256, gt=0)
    default_max_output_bytes: int = _env("DEFAULT_MAX_OUTPUT_BYTES", 1 * MIB, gt=0)
    default_max_processes: int = _env("DEFAULT_MAX_PROCESSES", 64, gt=0)
    default_max_file_bytes: int = _env("DEFAULT_MAX_FILE_BYTES", 16 * MIB, gt=0)

    # --- sandboxes and executors
    sandbox_disk_mb: int = _env("SANDBOX_DISK_MB", 64, gt=0)
    sandbox_require_full_isolation: bool = _env("SANDBOX_REQUIRE_FULL_ISOLATION", False)
    sandbox_python: str | None = _env("SANDBOX_PYTHON", None)
    max_concurrent_executions: int = _env("MAX_CONCURRENT_EXECUTIONS", 2, gt=0)
    executor_num_replicas_min: int = _env("EXECUTOR_NUM_REPLICAS_MIN", 1, gt=0)
    executor_num_replicas_max: int = _env("EXECUTOR_NUM_REPLICAS_MAX", 2, gt=0)
    executor_max_queued_requests: int = _env("EXECUTOR_MAX_QUEUED_REQUESTS", 100, gt=0)

    # --- Ray
    ray_address: str | None = _env("RAY_ADDRESS", None)
    ray_gcs_port: Port = _env("RAY_GCS_PORT", 6380)
    # Prometheus metrics (exec_agent_*, exported as ray_exec_agent_*, and Ray's own) on
    # http://127.0.0.1:METRICS_PORT/metrics: Ray's metrics export port when `exec-agent serve`
    # starts Ray (a joined cluster's nodes have their own). RAY_METRICS_EXPORT_PORT: old name.
    metrics_port: Port = Field(
        8080, validation_alias=AliasChoices("METRICS_PORT", "RAY_METRICS_EXPORT_PORT")
    )
    # Ray refuses less than 75 MiB; its own default (30% of RAM) is far more than records need.
    ray_object_store_memory_bytes: int = _env(
        "RAY_OBJECT_STORE_MEMORY_BYTES", 512 * MIB, ge=75 * MIB
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _lower_environment(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "redis_url",
        "sentry_dsn",
        "ray_address",
        "sandbox_python",
        "otel_exporter_otlp_endpoint",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # `REDIS_URL=` in a .env file means "not set", not "an empty URL".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", "allowed_imports", "denied_imports", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Accept a JSON list or the friendlier comma-separated form.
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("allowed_imports", "denied_imports")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        names = [name.strip() for name in value]
        bad = [name for name in names if not name.isidentifier() or not name.isascii()]
        if bad:
            raise ValueError(
                "must list top-level module names (no dots), not: " + ", ".join(map(repr, bad))
            )
        return sorted(set(names))

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError("OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL")
        return value.strip() if value is not None else None

    @field_validator("sandbox_python")
    @classmethod
    def _absolute_python(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("SANDBOX_PYTHON must be an absolute path")
        return value

    @model_validator(mode="after")
    def _check_coherent(self) -> Self:
        problems = [*self._limit_problems(), *self._deployment_problems()]
        if self.environment == "production":
            problems += self._production_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _limit_problems(self) -> list[str]:
        problems = [
            f"{_env_name(low)} must not exceed {_env_name(high)}"
            for low, high in _DEFAULT_MAX_PAIRS
            if getattr(self, low) > getattr(self, high)
        ]
        if self.max_file_bytes > self.sandbox_disk_mb * MIB:
            # A file larger than the sandbox's disk could never be written.
            problems.append("MAX_FILE_BYTES must not exceed SANDBOX_DISK_MB")
        return problems

    def _deployment_problems(self) -> list[str]:
        problems = []
        if self.executor_num_replicas_min > self.executor_num_replicas_max:
            problems.append("EXECUTOR_NUM_REPLICAS_MIN must not exceed EXECUTOR_NUM_REPLICAS_MAX")
        if self.graceful_shutdown_timeout_s < self.max_wall_timeout_s:
            # A shorter drain would kill the longest allowed run at every shutdown.
            problems.append("GRACEFUL_SHUTDOWN_TIMEOUT_S must be at least MAX_TIMEOUT")
        if self.instance_stale_after_s < 3 * self.instance_heartbeat_interval_s:
            # A live replica that misses one beat must not look dead to the others.
            problems.append(
                "INSTANCE_STALE_AFTER_S must be at least 3 x INSTANCE_HEARTBEAT_INTERVAL_S"
            )
        if self.max_code_bytes > self.max_body_bytes:
            problems.append("MAX_CODE_BYTES must not exceed MAX_BODY_BYTES")
        if both := sorted(set(self.allowed_imports) & set(self.denied_imports)):
            problems.append(
                "ALLOWED_IMPORTS and DENIED_IMPORTS must not share a module: " + ", ".join(both)
            )
        if len({self.port, self.ray_gcs_port, self.metrics_port}) < 3:
            problems.append("PORT, RAY_GCS_PORT and METRICS_PORT must differ")
        return problems

    def _production_problems(self) -> list[str]:
        problems = []
        secret = self.api_key_secret.get_secret_value()
        if secret == PLACEHOLDER_SECRET or len(secret) < MIN_SECRET_CHARS:
            problems.append(
                f"API_KEY_SECRET must be a real secret of at least {MIN_SECRET_CHARS} "
                "characters in production"
            )
        if self.database_url.startswith("sqlite"):
            problems.append("DATABASE_URL must not be SQLite in production")
        return problems

    @property
    def require_full_isolation(self) -> bool:
        """Whether a missing isolation layer must stop the service (always so in production)."""
        return self.environment == "production" or self.sandbox_require_full_isolation

    def import_policy(self) -> ImportPolicy:
        """The import policy of ``ALLOWED_IMPORTS`` and ``DENIED_IMPORTS``."""
        return ImportPolicy.of(self.allowed_imports, self.denied_imports)

    def default_limits(self) -> Limits:
        """Limits applied where a request leaves a field out."""
        return Limits(
            wall_timeout_s=self.default_wall_timeout_s,
            cpu_time_s=self.default_cpu_time_s,
            memory_bytes=self.default_memory_mb * MIB,
            max_output_bytes=self.default_max_output_bytes,
            max_processes=self.default_max_processes,
            max_file_bytes=self.default_max_file_bytes,
            disk_bytes=self.sandbox_disk_mb * MIB,
        )

    def max_limits(self) -> Limits:
        """The most a request may ask for."""
        return Limits(
            wall_timeout_s=self.max_wall_timeout_s,
            cpu_time_s=self.max_cpu_time_s,
            memory_bytes=self.max_memory_mb * MIB,
            max_output_bytes=self.max_output_bytes,
            max_processes=self.max_processes,
            max_file_bytes=self.max_file_bytes,
            disk_bytes=self.sandbox_disk_mb * MIB,
        )

    def sandbox_config(self) -> SandboxConfig:
        """How the engine builds sandboxes under these settings."""
        if self.sandbox_python is None:
            return SandboxConfig(require_full_isolation=self.require_full_isolation)
        return SandboxConfig(
            python_executable=self.sandbox_python,
            require_full_isolation=self.require_full_isolation,
        )


def _env_name(attribute: str) -> str:
    alias = Settings.model_fields[attribute].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]  # the documented name; the others are old names
    return alias if isinstance(alias, str) else attribute.upper()


def load_settings() -> Settings:
    """Read the settings now; raise :class:`ConfigurationError` naming what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(
            "invalid configuration: " + describe_validation_error(exc)
        ) from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once (tests call ``get_settings.cache_clear()``)."""
    return load_settings()


def pipeline_defaults() -> PipelineDefaults:
    """What a Ray Data pipeline (``executors.SandboxMapper``) uses for what its caller left out:
    these settings, read now (the entry point ``exec_agent.pipeline_defaults``)."""
    settings = load_settings()
    return PipelineDefaults(
        default_limits=settings.default_limits(),
        max_limits=settings.max_limits(),
        sandbox_config=settings.sandbox_config(),
    )
