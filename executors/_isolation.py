"""What isolation is actually in force, as detected when a pool (or a session host) starts, and
the policy that refuses to run without some of it."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict

from executors._config import SandboxConfig
from executors._errors import SandboxUnavailableError
from executors._sandbox import LaunchPlan, detect_cgroup_version

__all__ = [
    "ISOLATION_LAYERS",
    "IsolationReport",
    "enforce_isolation_policy",
    "isolation_report",
]

logger = logging.getLogger("executors.sandbox")
SANDBOX_UID = 1000  # the uid programs have inside their user namespace (see zygote.py)

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


def isolation_report(
    plan: LaunchPlan, probe: dict[str, Any], *, cgroup: bool, errors: list[str]
) -> IsolationReport:
    """The layers in force for sandboxes launched by ``plan`` whose zygote reported ``probe``
    (``cgroup``: whether each job or session has a cgroup of its own)."""
    namespaces = bool(probe.get("namespaces"))
    in_bwrap = plan.mode.startswith("bubblewrap")
    layers = {
        "bubblewrap": in_bwrap,
        "user_namespace": namespaces,
        "pid_namespace": namespaces or in_bwrap,
        "mount_namespace": namespaces,
        "network_namespace": in_bwrap or (namespaces and plan.mode == "direct"),
        "ipc_namespace": namespaces,
        "uts_namespace": in_bwrap,
        "private_proc": bool(probe.get("private_proc")),
        "private_tmpfs": bool(probe.get("filesystem")),
        "read_only_root": in_bwrap and bool(probe.get("read_only_root")),  # tried, not assumed
        "unprivileged_uid": plan.host_uid != 0 and probe.get("uid") != 0,
        "no_capabilities": bool(probe.get("capabilities_dropped")),
        "no_new_privs": bool(probe.get("no_new_privs")),
        "seccomp": bool(probe.get("seccomp")),
        "cgroup_memory": cgroup,
        "cgroup_pids": cgroup,
        "cgroup_cpu": cgroup,
        "rlimits": True,
    }
    errors = list(errors)
    for key in ("error", "namespaces_error"):
        if probe.get(key):
            errors.append(f"probe: {probe[key]}")
    return IsolationReport(
        layers=layers,
        mode=plan.mode,
        cgroup_version=detect_cgroup_version() if cgroup else None,
        sandbox_uid=int(probe.get("uid", SANDBOX_UID)),
        host_uid=plan.host_uid,
        errors=errors,
    )


def enforce_isolation_policy(report: IsolationReport, config: SandboxConfig) -> None:
    """Raise :class:`SandboxUnavailableError` when a layer is missing and ``config`` requires
    them all; else say (loudly) what is missing."""
    if report.complete:
        logger.info("sandbox isolation complete: %s", report.summary())
        return
    if config.require_full_isolation:
        raise SandboxUnavailableError(report.missing)
    logger.warning(
        "SANDBOX ISOLATION DEGRADED: missing layers %s (%s); set "
        "SANDBOX_REQUIRE_FULL_ISOLATION=true to refuse to start instead",
        report.missing,
        "; ".join(report.errors) or "not available on this host",
    )
