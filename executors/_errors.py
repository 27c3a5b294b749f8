"""Exceptions of the executors package.

    ExecutorError                    base of everything raised here
    ├── SandboxUnavailableError      the host cannot provide a required isolation layer
    ├── SandboxStartError            a sandbox slot (bubblewrap + zygote) failed to start
    └── PoolClosedError              the pool is shutting down and takes no more work

A run that fails because of the service (not the program) is not an exception: it is
returned as a record with status ``internal_error``.
"""

from __future__ import annotations

__all__ = ["ExecutorError", "PoolClosedError", "SandboxStartError", "SandboxUnavailableError"]


class ExecutorError(Exception):
    """Base class of the executors package's exceptions."""

    code = "executor_error"


class SandboxUnavailableError(ExecutorError):
    """Isolation layers are missing and the configuration requires them."""

    code = "sandbox_unavailable"

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"required isolation layers unavailable: {', '.join(missing)}")


class SandboxStartError(ExecutorError):
    """A slot's sandbox process could not be started or died during start-up."""

    code = "sandbox_start_failed"

    def __init__(self, slot: int, detail: str) -> None:
        self.slot = slot
        self.detail = detail
        super().__init__(f"sandbox slot {slot} failed to start: {detail}")


class PoolClosedError(ExecutorError):
    """The pool was closed (graceful shutdown); no new executions are accepted."""

    code = "pool_closed"
