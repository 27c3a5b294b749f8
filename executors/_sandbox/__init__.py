"""The sandbox itself: one slot's zygote and jobs, and what the pool needs to run slots.

``executors._pool`` builds a pool from these, ``executors._sessions`` session hosts; nothing
else of the package reaches in.
"""

from executors._sandbox._cgroups import (
    JobCgroup,
    detect_cgroup_version,
    open_job_cgroup,
    remove_dead_pools_groups,
    remove_group,
)
from executors._sandbox._fork_server import ForkServer, ForkServerSettings
from executors._sandbox._launch import LaunchPlan, launch_mode
from executors._sandbox._seccomp import SeccompUnavailable, compile_filter
from executors._sandbox._session import INTERRUPT_GRACE_S, CallOutcome, SandboxSession
from executors._sandbox._slot import Slot, SlotSettings
from executors._sandbox._spare import SpareFailed
from executors._sandbox._stdin import MAX_PENDING_STDIN_BYTES, StdinFeed
from executors._sandbox._streams import LiveIO
from executors._sandbox._verdict import KillReason

__all__ = [
    "INTERRUPT_GRACE_S",
    "MAX_PENDING_STDIN_BYTES",
    "CallOutcome",
    "ForkServer",
    "ForkServerSettings",
    "JobCgroup",
    "KillReason",
    "LaunchPlan",
    "LiveIO",
    "SandboxSession",
    "SeccompUnavailable",
    "Slot",
    "SlotSettings",
    "SpareFailed",
    "StdinFeed",
    "compile_filter",
    "detect_cgroup_version",
    "launch_mode",
    "open_job_cgroup",
    "remove_dead_pools_groups",
    "remove_group",
]
