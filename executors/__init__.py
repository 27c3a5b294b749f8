"""The sandbox engine: run untrusted Python programs under kernel-enforced limits.

Public surface::

    pool = SandboxPool(SandboxConfig(), slots=2)
    with pool:
        record = pool.run(ExecutionRequest(code="print(1)", limits=limits))

``pool.isolation`` tells which isolation layers are in force on this host.
``SandboxExecutor`` and ``build_executor_app`` put pools on Ray (which only the latter imports).
"""

from executors._config import SandboxConfig
from executors._deployment import (
    ExecutorAppArgs,
    SandboxExecutor,
    app_builder,
    build_executor_app,
)
from executors._errors import (
    ExecutorError,
    PoolClosedError,
    SandboxStartError,
    SandboxUnavailableError,
)
from executors._isolation import ISOLATION_LAYERS, IsolationReport
from executors._models import (
    TERMINAL_STATUSES,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    LimitsRequest,
    check_files,
    check_relative_path,
    check_text,
)
from executors._pool import SandboxPool

__all__ = [
    "ISOLATION_LAYERS",
    "TERMINAL_STATUSES",
    "ExecutionRecord",
    "ExecutionRequest",
    "ExecutionStatus",
    "ExecutorAppArgs",
    "ExecutorError",
    "IsolationReport",
    "Limits",
    "LimitsRequest",
    "PoolClosedError",
    "SandboxConfig",
    "SandboxExecutor",
    "SandboxPool",
    "SandboxStartError",
    "SandboxUnavailableError",
    "app_builder",
    "build_executor_app",
    "check_files",
    "check_relative_path",
    "check_text",
]
