"""Exceptions of the executors package.

    ExecutorError                  base of everything raised here
    ├── SandboxUnavailableError    the host lacks a required isolation layer       (retryable)
    ├── SandboxStartError          a sandbox slot (bubblewrap + zygote) failed to start
    ├── RuntimeNotInstalledError   a runtime's packages are not where the pool looks
    ├── PoolClosedError            the pool is shutting down and takes no more work (retryable)
    └── PipelineConfigurationError  a pipeline cannot tell where or how to run its rows

Each class carries a stable ``code`` and ``retryable``: whether the error is the engine
refusing work here and now (shut down, or unable to sandbox) rather than a fault, so that
another attempt, later or on another replica, may succeed. The service answers the retryable
ones as 503 ``unavailable``; the engine knows nothing of HTTP.

Every exception passes all its constructor's arguments to ``Exception.__init__`` (as Ray
Serve's ``BackPressureError`` does), so ``args`` rebuilds it when it is unpickled: a Ray
actor's constructor or method raises them across processes. The message is made by
``__str__``.

A run that fails because of the service (not the program) is not an exception: it is
returned as a record with status ``internal_error``.
"""

from __future__ import annotations

__all__ = [
    "ExecutorError",
    "PipelineConfigurationError",
    "PoolClosedError",
    "RuntimeNotInstalledError",
    "SandboxStartError",
    "SandboxUnavailableError",
]


class ExecutorError(Exception):
    """Base class of the executors package's exceptions."""

    code = "executor_error"
    retryable = False


class SandboxUnavailableError(ExecutorError):
    """Isolation layers are missing and the configuration requires them."""

    code = "sandbox_unavailable"
    retryable = True  # another host (replica) may have them

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(missing)

    def __str__(self) -> str:
        return f"required isolation layers unavailable: {', '.join(self.missing)}"


class SandboxStartError(ExecutorError):
    """A slot's sandbox process could not be started or died during start-up."""

    code = "sandbox_start_failed"

    def __init__(self, slot: int, detail: str) -> None:
        self.slot = slot
        self.detail = detail
        super().__init__(slot, detail)

    def __str__(self) -> str:
        return f"sandbox slot {self.slot} failed to start: {self.detail}"


class RuntimeNotInstalledError(ExecutorError):
    """A runtime's packages are missing, or were built from other pins (``scripts/setup``
    builds them)."""

    code = "runtime_not_installed"

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        super().__init__(name, path)

    def __str__(self) -> str:
        return (
            f"runtime {self.name!r} is not installed at {self.path} (or its pins changed "
            "since): run scripts/setup"
        )


class PoolClosedError(ExecutorError):
    """The pool was closed (graceful shutdown); no new executions are accepted."""

    code = "pool_closed"
    retryable = True


class PipelineConfigurationError(ExecutorError):
    """A pipeline was asked for what is not there (no executor deployment, no defaults)."""

    code = "pipeline_configuration"
