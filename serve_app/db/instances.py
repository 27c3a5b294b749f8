"""Service instances: who is alive, and taking over the executions of those that are not.

Every ingress replica is a service instance with a random id. It beats (:func:`heartbeat`)
every few seconds and stamps each execution it accepts with its id (``Execution.owner``).
An execution whose owner has stopped beating, and is old enough that its owner had time to
register, is an orphan (:func:`orphaned_executions`): a live instance claims it
(:func:`claim`, a conditional UPDATE on the previous owner, so of two claimers one wins) and
then runs it (queued) or records ``internal_error`` (it was running in a process that died).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from executors import ExecutionStatus
from serve_app.db.models import Execution, ServiceInstance

__all__ = ["Orphan", "claim", "forget_dead_instances", "heartbeat", "orphaned_executions"]

_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


@dataclass(frozen=True)
class Orphan:
    """An unfinished execution whose owner is not alive."""

    id: uuid.UUID
    owner: str | None
    status: ExecutionStatus


def heartbeat(session: Session, instance_id: str, now: datetime) -> None:
    """Record that ``instance_id`` is alive at ``now`` (registering it the first time)."""
    beat = session.execute(
        update(ServiceInstance)
        .where(ServiceInstance.id == instance_id)
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    if beat.rowcount == 0:  # type: ignore[attr-defined]
        session.add(ServiceInstance(id=instance_id, started_at=now, heartbeat_at=now))


def _alive(since: datetime) -> object:
    return select(ServiceInstance.id).where(ServiceInstance.heartbeat_at >= since)


def orphaned_executions(session: Session, *, dead_before: datetime, limit: int) -> list[Orphan]:
    """Up to ``limit`` unfinished executions, oldest first, created before ``dead_before``
    whose owner has not beaten since then (or that have no owner)."""
    rows = session.execute(
        select(Execution.id, Execution.owner, Execution.status)
        .where(
            Execution.status.in_(_UNFINISHED),
            Execution.created_at < dead_before,
            or_(
                Execution.owner.is_(None),
                Execution.owner.not_in(_alive(dead_before)),  # type: ignore[arg-type]
            ),
        )
        .order_by(Execution.created_at)
        .limit(limit)
    ).all()
    return [Orphan(id=row.id, owner=row.owner, status=row.status) for row in rows]


def claim(session: Session, orphan: Orphan, new_owner: str) -> Execution | None:
    """Make ``new_owner`` responsible for ``orphan``; None if it was finished or claimed by
    someone else meanwhile."""
    previous = (
        Execution.owner.is_(None) if orphan.owner is None else Execution.owner == orphan.owner
    )
    return session.scalars(
        update(Execution)
        .where(Execution.id == orphan.id, Execution.status.in_(_UNFINISHED), previous)
        .values(owner=new_owner)
        .returning(Execution),
        execution_options={"populate_existing": True},
    ).one_or_none()


def forget_dead_instances(session: Session, *, dead_before: datetime) -> int:
    """Delete instances silent since ``dead_before`` that own no unfinished execution; how many."""
    owns_work = exists().where(
        Execution.owner == ServiceInstance.id, Execution.status.in_(_UNFINISHED)
    )
    forgotten = session.execute(
        delete(ServiceInstance)
        .where(ServiceInstance.heartbeat_at < dead_before, ~owns_work)
        .execution_options(synchronize_session=False)
    )
    return int(forgotten.rowcount)  # type: ignore[attr-defined]
