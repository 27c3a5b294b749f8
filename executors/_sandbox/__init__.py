"""The sandbox itself: one slot's zygote and jobs, and what the pool needs to run slots.

``executors._pool`` builds a pool from these; nothing else of the package reaches in.
"""

from executors._sandbox._cgroups import (
    JobCgroup,
    detect_cgroup_version,
    open_job_cgroup,
    remove_dead_pools_groups,
    remove_group,
)
from executors._sandbox._launch import launch_mode
from executors._sandbox._seccomp import SeccompUnavailable, compile_filter
from executors._sandbox._slot import Slot, SlotSettings
from executors._sandbox._verdict import KillReason

__all__ = [
    "JobCgroup",
    "KillReason",
    "SeccompUnavailable",
    "Slot",
    "SlotSettings",
    "compile_filter",
    "detect_cgroup_version",
    "launch_mode",
    "open_job_cgroup",
    "remove_dead_pools_groups",
    "remove_group",
]
