"""Exceptions of the executors package.

    ExecutorError                  base of everything raised here
    ├── SandboxUnavailableError    the host lacks a required isolation layer       (retryable)
    ├── SandboxStartError          a sandbox slot (bubblewrap + zygote) failed to start
    ├── RuntimeNotInstalledError   a runtime's packages are not where the pool looks
    ├── PoolClosedError            the pool is shutting down and takes no more work (retryable)
    ├── ReplicaDrainingError       a stopping replica handed back runs it had not started
                                   (retryable: the caller sends them to another replica)
    ├── PipelineConfigurationError  a pipeline cannot tell where or how to run its rows
    ├── StdinOverflowError         more interactive input waits than the program has read
    └── SessionError               about one live session
        ├── SessionBusyError       a call is already running in it
        ├── SessionEndedError      it has ended (``reason`` says why: an ``EndReason``)
        └── SessionPlacementError  no session host could take it now                 (retryable)

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

from typing import Any

__all__ = [
    "ExecutorError",
    "PipelineConfigurationError",
    "PoolClosedError",
    "ReplicaDrainingError",
    "RuntimeNotInstalledError",
    "SandboxStartError",
    "SandboxUnavailableError",
    "SessionBusyError",
    "SessionEndedError",
    "SessionError",
    "SessionPlacementError",
    "StdinOverflowError",
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


class ReplicaDrainingError(ExecutorError):
    """The executor's Serve replica began stopping (a rolling update, a downscale) before the
    run started: the run was handed back, never started here and never will be, so the caller
    sends it again and Serve's router picks another replica.

    ``records``: of a batch (``run_batch(..., hand_back=True)``), each run's record in API form
    in request order, None where the run was handed back; empty for a single run."""

    code = "replica_draining"
    retryable = True

    def __init__(self, records: list[dict[str, Any] | None] | None = None) -> None:
        self.records: list[dict[str, Any] | None] = list(records or [])
        super().__init__(self.records)

    def __str__(self) -> str:
        handed_back = sum(record is None for record in self.records) or 1
        return f"the executor replica is stopping: {handed_back} run(s) handed back, not started"


class PipelineConfigurationError(ExecutorError):
    """A pipeline was asked for what is not there (no executor deployment, no defaults)."""

    code = "pipeline_configuration"


class StdinOverflowError(ExecutorError):
    """More interactive standard input would wait for the program than ``max_bytes``: the text
    was not queued (the program is not reading, or its client sends faster than it reads)."""

    code = "stdin_overflow"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(max_bytes)

    def __str__(self) -> str:
        return f"more than {self.max_bytes} bytes of standard input wait for the program"


class SessionError(ExecutorError):
    """Base class of the errors about one live session."""

    code = "session_error"


class SessionBusyError(SessionError):
    """A call is already running in the session (one at a time)."""

    code = "session_busy"

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(session_id)

    def __str__(self) -> str:
        return f"session {self.session_id} is running another call"


class SessionEndedError(SessionError):
    """The session has ended; ``reason`` is its ``EndReason`` value, ``detail`` says more."""

    code = "session_terminated"

    def __init__(self, session_id: str, reason: str, detail: str = "") -> None:
        self.session_id = session_id
        self.reason = reason
        self.detail = detail
        super().__init__(session_id, reason, detail)

    def __str__(self) -> str:
        ended = f"session {self.session_id} has ended ({self.reason})"
        return f"{ended}: {self.detail}" if self.detail else ended


class SessionPlacementError(SessionError):
    """No session host could take a new session now (none placed in time, all full)."""

    code = "session_placement"
    retryable = True

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def __str__(self) -> str:
        return f"no session host could take the session: {self.detail}"
