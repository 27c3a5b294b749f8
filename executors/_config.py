"""Configuration of the sandbox engine (built from the service settings by the caller)."""

from __future__ import annotations

import os
import sys

from pydantic import BaseModel, ConfigDict, Field, field_validator

from executors._runtimes import SCIENTIFIC, check_runtime, default_runtimes_dir

__all__ = ["SandboxConfig"]


def _base_python() -> str:
    """The real interpreter behind the running one (never a venv with the service's packages)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


class SandboxConfig(BaseModel):
    """How sandboxes are built. Deny by default: every layer is on unless unavailable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    python_executable: str = Field(default_factory=_base_python)
    """Interpreter run inside the sandbox; its prefix is mounted read-only."""
    slot_uid_base: int = Field(default=60000, ge=1000)
    """When the service runs as root, slot N runs as host uid ``slot_uid_base + N``."""
    require_full_isolation: bool = False
    """Refuse to start when any isolation layer is unavailable (production)."""
    cgroup_parent: str | None = None
    """Cgroup (path relative to each hierarchy's root) to nest slots under; default: our own."""
    runtimes_dir: str = Field(default_factory=default_runtimes_dir)
    """Where ``scripts/setup`` installed the runtimes (``<dir>/<name>/site-packages``)."""
    default_runtime: str = SCIENTIFIC
    """The runtime of requests that name none; its zygotes start with the pool, the others'
    at their first job."""
    bwrap_path: str = "bwrap"
    start_timeout_s: float = Field(default=20.0, gt=0)

    @field_validator("default_runtime")
    @classmethod
    def _known_runtime(cls, name: str) -> str:
        return check_runtime(name)
