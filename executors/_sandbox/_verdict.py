"""From what was observed about a finished job to its terminal status. Pure logic."""

from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass

from executors._models import ExecutionStatus

__all__ = ["JobFacts", "KillReason", "Verdict", "decide"]


class KillReason(enum.Enum):
    """Why the host killed a job (None: it did not)."""

    WALL_TIMEOUT = "wall_timeout"
    CPU_TIMEOUT = "cpu_timeout"
    OUTPUT_LIMIT = "output_limit"
    SHUTDOWN = "shutdown"
    CANCELLED = "cancelled"
    """The caller gave up (a client went away): the service stopped the run."""


@dataclass(frozen=True)
class JobFacts:
    """Everything the host knows when the job is over."""

    wait_status: int | None
    """The program's raw wait status as reported by the job's init; None if no report."""
    killed_for: KillReason | None
    oom_kills: int
    memory_error: bool
    cpu_time_s: float
    cpu_limit_s: float
    internal: str | None = None


@dataclass(frozen=True)
class Verdict:
    status: ExecutionStatus
    exit_code: int | None
    signal: int | None
    detail: str | None = None


_KILL_STATUS = {
    KillReason.WALL_TIMEOUT: ExecutionStatus.TIMEOUT,
    KillReason.CPU_TIMEOUT: ExecutionStatus.TIMEOUT,
    KillReason.OUTPUT_LIMIT: ExecutionStatus.OUTPUT_LIMIT,
    KillReason.SHUTDOWN: ExecutionStatus.INTERNAL_ERROR,
    KillReason.CANCELLED: ExecutionStatus.INTERNAL_ERROR,
}


def decide(facts: JobFacts) -> Verdict:
    """The API's status table, in priority order: what the host did, then the kernel."""
    if facts.killed_for is not None:
        return Verdict(_KILL_STATUS[facts.killed_for], None, signal.SIGKILL, facts.killed_for.value)
    if facts.internal is not None:
        return Verdict(ExecutionStatus.INTERNAL_ERROR, None, None, facts.internal)
    if facts.wait_status is None:
        if facts.oom_kills:
            return Verdict(ExecutionStatus.MEMORY_LIMIT, None, signal.SIGKILL)
        return Verdict(ExecutionStatus.INTERNAL_ERROR, None, None, "job ended without a report")
    if os.WIFSIGNALED(facts.wait_status):
        return _signalled(os.WTERMSIG(facts.wait_status), facts)
    code = os.WEXITSTATUS(facts.wait_status)
    if code == 0:
        return Verdict(ExecutionStatus.OK, 0, None)
    if facts.memory_error or facts.oom_kills:
        return Verdict(ExecutionStatus.MEMORY_LIMIT, code, None)
    return Verdict(ExecutionStatus.NONZERO_EXIT, code, None)


def _signalled(sig: int, facts: JobFacts) -> Verdict:
    if sig == signal.SIGKILL and facts.oom_kills:
        return Verdict(ExecutionStatus.MEMORY_LIMIT, None, sig)
    # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one.
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and facts.cpu_time_s >= facts.cpu_limit_s):
        return Verdict(ExecutionStatus.TIMEOUT, None, sig)
    return Verdict(ExecutionStatus.CRASHED, None, sig)
