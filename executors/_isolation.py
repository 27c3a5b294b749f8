"""What isolation is actually in force, as detected when the pool starts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ISOLATION_LAYERS", "IsolationReport"]

ISOLATION_LAYERS = (
    "bubblewrap",
    "user_namespace",
    "pid_namespace",
    "mount_namespace",
    "network_namespace",
    "ipc_namespace",
    "uts_namespace",
    "private_proc",
    "private_tmpfs",
    "read_only_root",
    "unprivileged_uid",
    "no_capabilities",
    "no_new_privs",
    "seccomp",
    "cgroup_memory",
    "cgroup_pids",
    "cgroup_cpu",
    "rlimits",
)
"""Every layer the engine tries to put in place, in the order a reader thinks of them."""


class IsolationReport(BaseModel):
    """The layers in force on this host, and the ones missing."""

    model_config = ConfigDict(frozen=True)

    layers: dict[str, bool]
    mode: str
    """"bubblewrap", "bubblewrap-userns" or "direct" (see the sandbox launch plan)."""
    cgroup_version: int | None
    sandbox_uid: int
    """The uid programs run as inside their user namespace."""
    host_uid: int
    """The uid the slots' processes have on the host (never 0)."""
    errors: list[str] = []

    @property
    def missing(self) -> list[str]:
        return [name for name in ISOLATION_LAYERS if not self.layers.get(name, False)]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> dict[str, Any]:
        """The ``sandbox`` check of ``/health/ready``."""
        return {
            "ok": self.complete,
            "mode": self.mode,
            "layers": [name for name in ISOLATION_LAYERS if self.layers.get(name)],
            "missing": self.missing,
            "cgroup_version": self.cgroup_version,
            "sandbox_uid": self.sandbox_uid,
            "host_uid": self.host_uid,
        }
