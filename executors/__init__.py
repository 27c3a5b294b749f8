"""The sandbox engine: run untrusted Python programs under kernel-enforced limits.

Public surface::

    pool = SandboxPool(SandboxConfig(), slots=2)
    with pool:
        record = pool.run(ExecutionRequest(code="print(1)", limits=limits))
        judged = pool.run(ExecutionRequest(code=code, test_code="check(f)", limits=limits))
        judged.passed                                          # True, False (None: not judged)
        plot = pool.run(ExecutionRequest(code=code, runtime="scientific", limits=limits))
        plot.artifacts                                         # files the program left in out/

``pool.isolation`` tells which isolation layers are in force on this host.
``SandboxExecutor`` and ``build_executor_app`` put pools on Ray (which only the latter imports).
``SandboxMapper`` and ``run_programs`` run a Ray Data dataset's programs on those pools
(importing Ray and Ray Data only when used). ``SessionHost`` keeps live interpreters (sessions)
that run call after call; ``SessionHosts`` places them on Ray actors.

Streaming: ``SandboxExecutor.run_stream`` and ``SessionHosts.call_stream`` yield a run's output
as it is written, then its record; ``buffered`` relays such a stream through a bounded
``StreamBuffer``; ``StdinRelays`` carries a client's standard input to a running program.
"""

from executors._config import SandboxConfig
from executors._deployment import (
    DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    ExecutorAppArgs,
    ReplicaRange,
    SandboxExecutor,
    app_builder,
    build_executor_app,
)
from executors._errors import (
    ExecutorError,
    PipelineConfigurationError,
    PoolClosedError,
    ReplicaDrainingError,
    RuntimeNotInstalledError,
    SandboxStartError,
    SandboxUnavailableError,
    SessionBusyError,
    SessionEndedError,
    SessionError,
    SessionPlacementError,
    StdinOverflowError,
)
from executors._isolation import ISOLATION_LAYERS, IsolationReport
from executors._logging import JsonLogFormatter, configure_json_logging
from executors._models import (
    ARTIFACTS_DIR,
    MAX_CASES,
    TERMINAL_STATUSES,
    Artifact,
    CaseResult,
    CaseSpec,
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    JudgeMode,
    Limits,
    LimitsRequest,
    check_files,
    check_relative_path,
    check_text,
)
from executors._pipeline import PipelineDefaults, SandboxMapper, row_to_request, run_programs
from executors._pool import SandboxPool, refuse_without_bubblewrap
from executors._runtimes import (
    MINIMAL,
    RUNTIMES,
    SCIENTIFIC,
    Runtime,
    RuntimeInfo,
    check_runtime,
    default_runtimes_dir,
    runtime_catalog,
)
from executors._sessions import (
    SESSION_WIDE_LIMITS,
    SessionCallResult,
    SessionHost,
    SessionHostOptions,
    SessionHosts,
    SessionHostsOverview,
    SessionSpec,
    SessionState,
    SessionStatus,
)
from executors._stdin_relay import StdinChannel, StdinRelays
from executors._streaming import (
    STREAM_BUFFER_BYTES,
    StreamBuffer,
    buffered,
    output_event,
    record_event,
)

__all__ = [
    "ARTIFACTS_DIR",
    "DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S",
    "ISOLATION_LAYERS",
    "MAX_CASES",
    "MINIMAL",
    "RUNTIMES",
    "SCIENTIFIC",
    "SESSION_WIDE_LIMITS",
    "STREAM_BUFFER_BYTES",
    "TERMINAL_STATUSES",
    "Artifact",
    "CaseResult",
    "CaseSpec",
    "EndReason",
    "ExecutionRecord",
    "ExecutionRequest",
    "ExecutionStatus",
    "ExecutorAppArgs",
    "ExecutorError",
    "IsolationReport",
    "JsonLogFormatter",
    "JudgeMode",
    "Limits",
    "LimitsRequest",
    "PipelineConfigurationError",
    "PipelineDefaults",
    "PoolClosedError",
    "ReplicaDrainingError",
    "ReplicaRange",
    "Runtime",
    "RuntimeInfo",
    "RuntimeNotInstalledError",
    "SandboxConfig",
    "SandboxExecutor",
    "SandboxMapper",
    "SandboxPool",
    "SandboxStartError",
    "SandboxUnavailableError",
    "SessionBusyError",
    "SessionCallResult",
    "SessionEndedError",
    "SessionError",
    "SessionHost",
    "SessionHostOptions",
    "SessionHosts",
    "SessionHostsOverview",
    "SessionPlacementError",
    "SessionSpec",
    "SessionState",
    "SessionStatus",
    "StdinChannel",
    "StdinOverflowError",
    "StdinRelays",
    "StreamBuffer",
    "app_builder",
    "buffered",
    "build_executor_app",
    "check_files",
    "check_relative_path",
    "check_runtime",
    "check_text",
    "configure_json_logging",
    "default_runtimes_dir",
    "output_event",
    "record_event",
    "refuse_without_bubblewrap",
    "row_to_request",
    "run_programs",
    "runtime_catalog",
]
