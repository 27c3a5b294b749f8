"""Value objects of sessions: what a session is asked to be, and what its host knows of it.

A session's :class:`~executors._models.Limits` split in two: the memory, process, file and disk
caps hold for the whole session (its cgroup, its rlimits, its tmpfs); the wall clock, CPU time,
output and artifact caps hold per call (each call's :class:`ExecutionRequest` carries them).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from executors._models import EndReason, Limits

__all__ = ["SESSION_WIDE_LIMITS", "EndReason", "SessionSpec", "SessionState", "SessionStatus"]

SESSION_WIDE_LIMITS = (
    "memory_bytes",
    "max_processes",
    "max_file_bytes",
    "max_open_files",
    "disk_bytes",
)
"""The fields of :class:`Limits` that hold for a whole session; a call's own limits come
from its request, these from the session's."""


class SessionStatus(enum.StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"


class SessionSpec(BaseModel):
    """What a new session is asked to be (the service fills every default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    runtime: str
    limits: Limits
    """Its :data:`SESSION_WIDE_LIMITS` hold for the session; the rest are its calls' defaults."""
    idle_timeout_s: float = Field(gt=0)
    ttl_s: float = Field(gt=0, description="Time to live from creation.")


class SessionState(BaseModel):
    """What a session's host knows of it."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    status: SessionStatus
    runtime: str
    host: str = Field(description="The name of the Ray actor that holds it.")
    node_id: str | None = None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    idle_timeout_s: float
    calls: int = 0
    busy: bool = False
    terminated_reason: EndReason | None = None
    terminated_at: datetime | None = None
    message: str | None = None
    """For a person: why it ended, and what was lost with it."""
