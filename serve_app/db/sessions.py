"""Sessions: reserved under the key's cap, placed, touched by calls, ended exactly once.

A session row is inserted ``active`` before its interpreter is placed (``host`` null), so that
the per-key cap (``MAX_SESSIONS_PER_KEY``) holds at once across replicas: :func:`reserve`
first writes the key's row (PostgreSQL locks it; SQLite takes its one write lock), then counts
the key's active sessions, then inserts; two racing reservations run one after the other on
both backends. Ending is a conditional UPDATE (``WHERE status = 'active'``): of two enders
(a DELETE, the sweeper, a call that ended it) exactly one flips the row, and only that one
counts it in the metrics.

Every lookup by the API takes the caller's key id: another key's session does not exist for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from executors import EndReason, Limits, SessionStatus
from serve_app.api import SessionInfo
from serve_app.db import cursor as cursors
from serve_app.db.models import ApiKey, LiveSession
from serve_app.errors import InvalidRequestError

__all__ = [
    "MAX_PAGE_ITEMS",
    "Ended",
    "NewSession",
    "Page",
    "Placed",
    "active_sessions",
    "end_session",
    "end_sessions",
    "forget_unplaced",
    "get_session",
    "list_sessions",
    "record_placement",
    "reserve",
    "to_info",
    "touch",
]

MAX_PAGE_ITEMS = 100


@dataclass(frozen=True)
class NewSession:
    """What a new session is asked to be, as stored before it is placed."""

    id: uuid.UUID
    runtime: str
    limits: Limits
    idle_timeout_s: float
    ttl_s: float
    request_id: str | None = None


@dataclass(frozen=True)
class Placed:
    """Where a session was placed, and its times as its host keeps them."""

    host: str
    node_id: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Ended:
    """How a session ended: its reason, when, and what to tell a person."""

    reason: EndReason
    at: datetime
    message: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a key's sessions, newest first; ``next_cursor`` is None on the last."""

    items: list[LiveSession]
    next_cursor: str | None


def reserve(session: Session, key_id: int, new: NewSession, max_active: int) -> LiveSession | None:
    """Insert ``new`` as the key's active session, not yet placed; None (nothing stored) if the
    key has ``max_active`` active sessions already. Atomic on both backends: the key's row is
    written first, so racing reservations of one key take turns."""
    # A write that changes nothing: PostgreSQL's row lock (not on key columns: inserts of the
    # key's executions go on), SQLite's write lock; held until the transaction ends.
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(name=ApiKey.name))
    active = session.scalar(
        select(func.count())
        .select_from(LiveSession)
        .where(LiveSession.key_id == key_id, LiveSession.status == SessionStatus.ACTIVE)
    )
    if (active or 0) >= max_active:
        return None
    now = datetime.now(UTC)
    row = LiveSession(
        id=new.id,
        key_id=key_id,
        request_id=new.request_id,
        status=SessionStatus.ACTIVE,
        runtime=new.runtime,
        limits=new.limits.model_dump(),
        idle_timeout_s=new.idle_timeout_s,
        host=None,
        node_id=None,
        calls=0,
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(seconds=new.ttl_s),
    )
    session.add(row)
    session.flush()
    return row


def record_placement(session: Session, session_id: uuid.UUID, placed: Placed) -> LiveSession | None:
    """Store where a reserved session lives now; None if it is not active any more."""
    return session.scalars(
        update(LiveSession)
        .where(LiveSession.id == session_id, LiveSession.status == SessionStatus.ACTIVE)
        .values(
            host=placed.host,
            node_id=placed.node_id,
            created_at=placed.created_at,
            last_used_at=placed.last_used_at,
            expires_at=placed.expires_at,
        )
        .returning(LiveSession),
        execution_options={"populate_existing": True},
    ).one_or_none()


def forget_unplaced(session: Session, session_id: uuid.UUID) -> None:
    """Remove a reservation whose session could not be placed (the client got 503): it never
    existed for the client, and must not count against the key's cap."""
    row = session.get(LiveSession, session_id)
    if row is not None and row.host is None:
        session.delete(row)


def get_session(session: Session, key_id: int, session_id: uuid.UUID) -> LiveSession | None:
    """The key's session ``session_id``; None if absent or another key's."""
    return session.scalar(
        select(LiveSession).where(LiveSession.id == session_id, LiveSession.key_id == key_id)
    )


def list_sessions(session: Session, key_id: int, *, limit: int, cursor: str | None = None) -> Page:
    """A page of the key's sessions, newest first, after ``cursor`` (a previous page's)."""
    if not 1 <= limit <= MAX_PAGE_ITEMS:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE_ITEMS}")
    query = select(LiveSession).where(LiveSession.key_id == key_id)
    if cursor is not None:
        query = query.where(cursors.older_than(cursors.decode(cursor), LiveSession))
    query = query.order_by(LiveSession.created_at.desc(), LiveSession.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    return Page(items=rows[:limit], next_cursor=cursors.encode(rows[limit - 1]))


def active_sessions(
    session: Session, *, key_id: int | None = None, placed_before: datetime | None = None
) -> list[LiveSession]:
    """Active sessions (of ``key_id``, or all), oldest first. Unplaced ones (``host`` null)
    only if reserved before ``placed_before``: a placement that long ago has failed."""
    query = select(LiveSession).where(LiveSession.status == SessionStatus.ACTIVE)
    if key_id is not None:
        query = query.where(LiveSession.key_id == key_id)
    placed: ColumnElement[bool] = LiveSession.host.is_not(None)
    if placed_before is not None:
        placed = or_(placed, LiveSession.created_at < placed_before)
    return list(session.scalars(query.where(placed).order_by(LiveSession.created_at)))


def touch(session: Session, session_id: uuid.UUID, *, last_used_at: datetime, calls: int) -> None:
    """Record a call: the host's last use and call count (never moved back by a late writer)."""
    session.execute(
        update(LiveSession)
        .where(LiveSession.id == session_id, LiveSession.last_used_at <= last_used_at)
        .values(last_used_at=last_used_at, calls=calls),
        execution_options={"synchronize_session": False},
    )


def end_session(session: Session, session_id: uuid.UUID, ended: Ended) -> bool:
    """Mark an active session terminated; True if this call did (False: it had ended)."""
    return bool(end_sessions(session, [(session_id, ended)]))


def end_sessions(
    session: Session, ends: Iterable[tuple[uuid.UUID, Ended]]
) -> list[tuple[uuid.UUID, EndReason]]:
    """:func:`end_session` for many in one transaction: the sessions this call ended."""
    connection = session.connection()
    flipped: list[tuple[uuid.UUID, EndReason]] = []
    for session_id, ended in ends:
        statement = (
            update(LiveSession)
            .where(LiveSession.id == session_id, LiveSession.status == SessionStatus.ACTIVE)
            .values(
                status=SessionStatus.TERMINATED,
                terminated_reason=ended.reason,
                terminated_at=ended.at,
                message=ended.message,
            )
        )
        if connection.execute(statement).rowcount == 1:
            flipped.append((session_id, ended.reason))
    return flipped


def to_info(row: LiveSession) -> SessionInfo:
    """The API's session object of a stored session: limits in the API's units."""
    return SessionInfo(
        id=row.id,
        status="active" if row.status is SessionStatus.ACTIVE else "terminated",
        runtime=row.runtime,
        limits=Limits.model_validate(row.limits).to_api(),
        idle_timeout_s=row.idle_timeout_s,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        terminated_reason=row.terminated_reason,
        calls=row.calls,
        terminated_at=row.terminated_at,
        message=row.message,
    )
