"""Batches: inserted with all their executions at once, read back in request order by their key.

A batch's items are ordinary executions (``batch_id``, ``position``), run and finished one by one
like any other (:mod:`serve_app.db.executions`). How far a batch got is counted from its items
whenever it is read, never stored: a count kept on the batch row would be one more write per
item, contended by every worker of the batch. The stored ``status``/``finished_at`` only follow
(:func:`refresh_batch_status`), for queries over batches; what the API answers is derived.

Every lookup by the API takes the caller's key id: another key's batch does not exist for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Table, and_, case, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from executors import TERMINAL_STATUSES, ExecutionRequest, ExecutionStatus
from serve_app.db import executions
from serve_app.db.models import Batch, BatchStatus, Execution
from serve_app.errors import ConflictError, InvalidRequestError

__all__ = [
    "BatchProgress",
    "BatchView",
    "NewBatch",
    "batch_progress",
    "derive_status",
    "get_batch",
    "insert_batch",
    "refresh_batch_status",
    "unfinished_items",
]

_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


@dataclass(frozen=True)
class NewBatch:
    """A batch just inserted, and its items' execution ids in request order (to run them)."""

    batch: Batch
    item_ids: list[uuid.UUID]


@dataclass(frozen=True)
class BatchProgress:
    """How far a batch got: ``done`` items are terminal, ``started`` ones are not queued."""

    batch: Batch
    done: int
    started: int

    @property
    def id(self) -> uuid.UUID:
        return self.batch.id

    @property
    def total(self) -> int:
        return self.batch.total

    @property
    def status(self) -> BatchStatus:
        """Derived from the items (see :func:`derive_status`), whatever the row says."""
        return derive_status(self.batch.total, self.done, self.started)


@dataclass(frozen=True)
class BatchView(BatchProgress):
    """A batch with its executions in request order (``items[i].position == i``)."""

    items: list[Execution]


def derive_status(total: int, done: int, started: int) -> BatchStatus:
    """``done`` when every item is terminal, ``running`` once any item started (terminal
    included), else ``queued``."""
    if done >= total:
        return BatchStatus.DONE
    return BatchStatus.RUNNING if started else BatchStatus.QUEUED


def insert_batch(
    session: Session,
    key_id: int,
    items: Sequence[ExecutionRequest],
    request_id: str | None = None,
    *,
    owner: str | None = None,
) -> NewBatch:
    """Record an accepted batch, status ``queued``, and one ``queued`` execution per item.

    The items go in as one bulk INSERT (an executemany; ids made here, nothing read back): a
    thousand items cost one statement rather than a thousand ORM flushes (about 8x faster).
    Items share the batch's ``created_at``, ``request_id`` and ``owner``, the service instance
    that will run them (:mod:`serve_app.db.instances`; without one, other instances take them
    for orphans). The caller checks ``MAX_BATCH_ITEMS``; an empty batch is an
    :class:`InvalidRequestError`. Raise :class:`ConflictError` if the key does not exist.
    """
    if not items:
        raise InvalidRequestError("a batch needs at least one item")
    now = datetime.now(UTC)
    batch = Batch(
        id=uuid.uuid4(),
        key_id=key_id,
        total=len(items),
        status=BatchStatus.QUEUED,
        created_at=now,
    )
    item_ids = [uuid.uuid4() for _ in items]
    rows = [
        {
            "id": item_id,
            "key_id": key_id,
            "request_id": request_id,
            "owner": owner,
            **executions.request_columns(item),
            "status": ExecutionStatus.QUEUED,
            "batch_id": batch.id,
            "position": position,
            "created_at": now,
        }
        for position, (item_id, item) in enumerate(zip(item_ids, items, strict=True))
    ]
    session.add(batch)
    try:
        session.flush()
        session.execute(insert(Execution), rows)
    except IntegrityError:
        raise ConflictError("the batch's API key does not exist") from None
    return NewBatch(batch=batch, item_ids=item_ids)


def batch_progress(session: Session, key_id: int, batch_id: uuid.UUID) -> BatchProgress | None:
    """The key's batch with its counts, in one query and without its items (cheap enough to
    poll while a client waits); None if absent or another key's."""
    terminal = case((Execution.status.not_in(_UNFINISHED), 1), else_=0)
    started = case((Execution.status != ExecutionStatus.QUEUED, 1), else_=0)
    row = session.execute(
        select(
            Batch,
            func.coalesce(func.sum(terminal), 0),
            func.coalesce(func.sum(started), 0),
        )
        .outerjoin(Execution, Execution.batch_id == Batch.id)
        .where(Batch.id == batch_id, Batch.key_id == key_id)
        .group_by(Batch.id)
    ).one_or_none()
    if row is None:
        return None
    batch, done, begun = row
    return BatchProgress(batch=batch, done=int(done), started=int(begun))


def get_batch(session: Session, key_id: int, batch_id: uuid.UUID) -> BatchView | None:
    """The key's batch with its executions in request order; None if absent or another key's."""
    batch = session.scalar(select(Batch).where(Batch.id == batch_id, Batch.key_id == key_id))
    if batch is None:
        return None
    items = list(
        session.scalars(
            select(Execution).where(Execution.batch_id == batch_id).order_by(Execution.position)
        )
    )
    done = sum(item.status in TERMINAL_STATUSES for item in items)
    started = sum(item.status != ExecutionStatus.QUEUED for item in items)
    return BatchView(batch=batch, done=done, started=started, items=items)


def unfinished_items(session: Session, batch_id: uuid.UUID) -> list[Execution]:
    """The batch's queued and running executions, in request order (to run or resume them)."""
    return list(
        session.scalars(
            select(Execution)
            .where(Execution.batch_id == batch_id, Execution.status.in_(_UNFINISHED))
            .order_by(Execution.position)
        )
    )


def refresh_batch_status(session: Session, batch_id: uuid.UUID) -> BatchStatus | None:
    """Bring the stored status up to date with the items: ``running`` once one started,
    ``done`` (and ``finished_at``) once all are terminal. The status this call wrote, or None
    if it wrote nothing (no change due, another caller was first, no such batch).

    Call it after an item finishes. Each transition is a conditional UPDATE, so of racing
    callers exactly one reports ``done``. The batch row is locked first (PostgreSQL; SQLite
    serializes writers anyway): without that, two items finished in two open transactions
    would each still see the other running and neither would mark the batch done. With it,
    the second caller waits for the first to commit, then counts again; so end the
    transaction soon after. A :class:`Batch` this session loaded earlier is not refreshed.
    """
    table: Table = Batch.__table__  # type: ignore[assignment]
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        # Not on SQLite: a read first would start a snapshot that a concurrent commit could
        # make stale, and the write would then fail at once instead of waiting.
        connection.execute(select(table.c.id).where(table.c.id == batch_id).with_for_update())
    unfinished = exists().where(Execution.batch_id == batch_id, Execution.status.in_(_UNFINISHED))
    started = exists().where(
        Execution.batch_id == batch_id, Execution.status != ExecutionStatus.QUEUED
    )
    finished = connection.execute(
        update(table)
        .where(table.c.id == batch_id, table.c.status != BatchStatus.DONE, ~unfinished)
        .values(status=BatchStatus.DONE, finished_at=datetime.now(UTC))
    )
    if finished.rowcount == 1:
        return BatchStatus.DONE
    running = connection.execute(
        update(table)
        .where(and_(table.c.id == batch_id, table.c.status == BatchStatus.QUEUED, started))
        .values(status=BatchStatus.RUNNING)
    )
    return BatchStatus.RUNNING if running.rowcount == 1 else None
