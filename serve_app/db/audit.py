"""Security events, written in the transaction of what they record (``exec-agent audit`` lists
them)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from serve_app.db.models import AuditEvent

__all__ = ["AuditKind", "list_events", "record"]


class AuditKind(enum.StrEnum):
    """What happened; stored as text, so new kinds need no migration."""

    AUTH_FAILED = "auth_failed"
    KEY_CREATED = "key_created"
    KEY_REVOKED = "key_revoked"
    RATE_LIMITED = "rate_limited"
    POLICY_REFUSED = "policy_refused"


def record(
    session: Session,
    kind: AuditKind,
    *,
    key_name: str | None = None,
    source_address: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to ``session`` (committed with it). Never pass a key or user code here."""
    event = AuditEvent(
        at=datetime.now(UTC),
        kind=kind.value,
        key_name=key_name,
        source_address=source_address,
        request_id=request_id,
        details=details or {},
    )
    session.add(event)
    return event


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    key_name: str | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """Events newest first: those at or after ``since``, of ``key_name`` only, at most
    ``limit`` (all when ``None``)."""
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if key_name is not None:
        query = query.where(AuditEvent.key_name == key_name)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))
