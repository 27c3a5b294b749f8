"""The database schema: API keys, executions, batches, sessions and audit events.

The migrations in ``serve_app/migrations/versions/`` create exactly these tables; a test applies
them to an empty database and compares the result with this module. Column types come from
:mod:`serve_app.db.types`: text is cleaned on the way in, times are aware UTC.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from executors import EndReason, ExecutionStatus, SessionStatus
from serve_app.db.types import CleanJSON, CleanText, UTCDateTime

__all__ = ["ApiKey", "AuditEvent", "Base", "Batch", "BatchStatus", "Execution", "LiveSession"]

# Deterministic constraint names, so that migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
STATUS_CHARS = 32  # room for statuses yet to come, without a migration


class BatchStatus(enum.StrEnum):
    """Lifecycle of a batch (API.md, Batches)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


def _status_type(enum_class: type[enum.StrEnum]) -> Enum:
    # Stored as the plain values ("ok"), in VARCHAR without a CHECK: a new status is a code
    # change, not a schema change.
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=STATUS_CHARS,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """An API key: its name, the public lookup id and the HMAC of the whole key; never the key."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(CleanText, unique=True)
    lookup_id: Mapped[str] = mapped_column(CleanText, unique=True)
    key_hash: Mapped[str] = mapped_column(CleanText)
    # None: the settings' RATE_LIMIT_PER_MINUTE and MAX_CONCURRENT_PER_KEY apply.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Batch(Base):
    """A batch of executions; how many are done is counted from its items, never stored."""

    __tablename__ = "batches"
    __table_args__ = (Index(None, "key_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    total: Mapped[int] = mapped_column(Integer)
    status: Mapped[BatchStatus] = mapped_column(_status_type(BatchStatus))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Execution(Base):
    """One execution: the request as accepted, then its result (written once, when terminal)."""

    __tablename__ = "executions"
    __table_args__ = (
        # A key's executions, newest first, paged by (created_at, id).
        Index(None, "key_id", "created_at", "id"),
        # Unfinished work to resume or fail after a restart (few rows have these statuses).
        Index(None, "status"),
        UniqueConstraint("key_id", "idempotency_key"),
        UniqueConstraint("batch_id", "position"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    request_id: Mapped[str | None] = mapped_column(CleanText)
    idempotency_key: Mapped[str | None] = mapped_column(CleanText)
    request_fingerprint: Mapped[str | None] = mapped_column(CleanText)  # SHA-256 of the body
    # The service instance (ingress replica) responsible for finishing it; see ServiceInstance.
    owner: Mapped[str | None] = mapped_column(CleanText)

    # --- the request
    code: Mapped[str] = mapped_column(CleanText)
    stdin: Mapped[str] = mapped_column(CleanText, default="")
    # Path → text, or {"base64": ...} for bytes (serve_app/files.py): JSON cannot hold bytes.
    files: Mapped[dict[str, Any]] = mapped_column(CleanJSON, default=dict)
    # Resolved when accepted (DEFAULT_RUNTIME filled in); null: accepted before runtimes existed.
    runtime: Mapped[str | None] = mapped_column(CleanText)
    test_code: Mapped[str | None] = mapped_column(CleanText)
    judge: Mapped[str | None] = mapped_column(CleanText)  # JudgeMode; null: isolated
    cases: Mapped[list[dict[str, Any]] | None] = mapped_column(CleanJSON)
    limits: Mapped[dict[str, Any]] = mapped_column(CleanJSON)  # Limits.model_dump(): bytes

    # --- the result
    status: Mapped[ExecutionStatus] = mapped_column(_status_type(ExecutionStatus))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str] = mapped_column(CleanText, default="")
    stderr: Mapped[str] = mapped_column(CleanText, default="")
    stdout_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stderr_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    cpu_time_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    case_results: Mapped[list[dict[str, Any]] | None] = mapped_column(CleanJSON)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    # No foreign key: a cache source may be deleted by retention while its copies remain.
    cached_from: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The record's artifacts as the API answers them (path, size_bytes, media_type, base64);
    # null until finished, and on rows finished before artifacts existed.
    artifacts: Mapped[list[dict[str, Any]] | None] = mapped_column(CleanJSON)
    artifacts_truncated: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )

    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id"))
    position: Mapped[int | None] = mapped_column(Integer)  # index in the batch's request
    # A call in a session (LiveSession); no foreign key, as cached_from: a session may be
    # deleted by retention while its calls' records remain.
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    result: Mapped[str | None] = mapped_column(CleanText)  # a session call's final value
    # A streamed run's output bytes its client did not receive (too slow); null: not streamed.
    stream_dropped_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LiveSession(Base):
    """A session: a live interpreter on a session host (a Ray actor), as the service knows it.

    Inserted ``active`` (without ``host`` while it is being placed), then ended exactly once:
    a conditional UPDATE (``WHERE status = 'active'``) records why. The host is the truth on
    whether it lives; the sweeper (serve_app/http/service/sessions.py) brings rows up to date.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        # A key's sessions, newest first, paged by (created_at, id); its active ones, counted.
        Index(None, "key_id", "created_at", "id"),
        # The active sessions the sweeper asks their hosts about (few rows have this status).
        Index(None, "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    request_id: Mapped[str | None] = mapped_column(CleanText)
    status: Mapped[SessionStatus] = mapped_column(_status_type(SessionStatus))
    runtime: Mapped[str] = mapped_column(CleanText)
    limits: Mapped[dict[str, Any]] = mapped_column(CleanJSON)  # Limits.model_dump(): bytes
    idle_timeout_s: Mapped[float] = mapped_column(Float)
    # The Ray actor holding it (null while it is placed) and that actor's node.
    host: Mapped[str | None] = mapped_column(CleanText)
    node_id: Mapped[str | None] = mapped_column(CleanText)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    terminated_reason: Mapped[EndReason | None] = mapped_column(_status_type(EndReason))
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str | None] = mapped_column(CleanText)  # why it ended, for a person


class AuditEvent(Base):
    """A security event: authentication failures, keys created or revoked, refused requests."""

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "at"), Index(None, "key_name", "at"))

    # BIGINT on PostgreSQL (events accumulate); SQLite's auto-increment needs INTEGER.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(CleanText)
    key_name: Mapped[str | None] = mapped_column(CleanText)
    source_address: Mapped[str | None] = mapped_column(CleanText)
    request_id: Mapped[str | None] = mapped_column(CleanText)
    details: Mapped[dict[str, Any]] = mapped_column(CleanJSON, default=dict)


class ServiceInstance(Base):
    """An ingress replica that is alive while its heartbeat is recent.

    Each accepted execution names its ``owner``. When an owner stops beating (its process
    died), another replica takes its unfinished executions over: queued ones still run,
    running ones end as ``internal_error`` (serve_app/http/_recovery.py).
    """

    __tablename__ = "service_instances"

    id: Mapped[str] = mapped_column(CleanText, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
