"""Executions: inserted when accepted (``queued``), finished exactly once, read by their key only.

Every lookup takes the caller's key id: another key's execution is indistinguishable from one that
does not exist. Finishing is a conditional UPDATE (``WHERE status`` is not terminal), so of two
racing writers exactly one wins, on both backends, without locks.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Table, Update, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from executors import (
    TERMINAL_STATUSES,
    Artifact,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    JudgeMode,
    Limits,
)
from serve_app import files as api_files
from serve_app.db import cursor as cursors
from serve_app.db.models import Execution
from serve_app.db.types import clean_json, clean_text
from serve_app.errors import ConflictError, InvalidRequestError, NotFoundError

__all__ = [
    "IDEMPOTENCY_TTL",
    "Idempotency",
    "Page",
    "as_stored",
    "discard_unfinished",
    "find_by_idempotency_key",
    "finish_execution",
    "finish_executions",
    "finish_inserted_execution",
    "get_execution",
    "insert_execution",
    "list_executions",
    "request_columns",
    "request_fingerprint",
    "start_execution",
    "start_executions",
    "to_record",
    "to_request",
    "with_finish_time",
]

IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_PAGE_ITEMS = 100
_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
_RESULT_COLUMNS = (
    "status",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "wall_time_s",
    "cpu_time_s",
    "peak_memory_bytes",
    "passed",
    "case_results",
    "cached",
    "cached_from",
    "artifacts",
    "artifacts_truncated",
    "result",
    "stream_dropped_bytes",
    "finished_at",
)
"""What a terminal write sets (:func:`_result_values`), ``started_at`` aside."""


def _finish_statement(*, with_start: bool) -> Update:
    """The conditional UPDATE of a terminal write, built once: building a statement costs more
    than running it on this path (one per execution), and a built one keeps its cache key."""
    table: Table = Execution.__table__  # type: ignore[assignment]
    columns = (*_RESULT_COLUMNS, "started_at") if with_start else _RESULT_COLUMNS
    return (
        update(table)
        .where(table.c.id == bindparam("finished_id"), table.c.status.in_(_UNFINISHED))
        .values({name: bindparam(name) for name in columns})
    )


_FINISH = {started: _finish_statement(with_start=started) for started in (False, True)}
_INSERT = insert(Execution.__table__)  # type: ignore[arg-type]  # a Table: see _finish_statement
_NEW_ROW: dict[str, Any] = {
    **{name: None for name in _RESULT_COLUMNS},
    "stdout": "",
    "stderr": "",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "cached": False,
    "artifacts_truncated": False,
}
"""What a new row holds before its result (the columns' defaults, written explicitly)."""


@dataclass(frozen=True)
class Idempotency:
    """An ``Idempotency-Key`` header and the fingerprint of the body it came with."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Page:
    """One page of a key's executions, newest first; ``next_cursor`` is None on the last."""

    items: list[Execution]
    next_cursor: str | None


def request_fingerprint(body: Any) -> str:
    """SHA-256 of ``body`` as canonical JSON: equal for equal requests, however formatted."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def insert_execution(
    session: Session,
    key_id: int,
    request: ExecutionRequest,
    *,
    request_id: str | None = None,
    idempotency: Idempotency | None = None,
    batch_id: uuid.UUID | None = None,
    position: int | None = None,
    running: bool = False,
    owner: str | None = None,
    execution_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
) -> Execution:
    """Record an accepted request, status ``queued``; with ``running``, ``running`` at once
    (started now: one write instead of insert then :func:`start_execution`). ``owner`` is the
    service instance that will finish it (:mod:`serve_app.db.instances`); ``execution_id``
    the id chosen for it (default: a new one); ``session_id`` the session it is a call in.

    With ``idempotency``, raise :class:`ConflictError` if the key's ``Idempotency-Key`` is held
    by another execution of the last 24 h (a racing request: look it up with
    :func:`find_by_idempotency_key`); an older holder gives it up.
    """
    now = datetime.now(UTC)
    if idempotency is not None:
        _release_stale_idempotency_key(session, key_id, idempotency.key, now)
    values = {
        **_NEW_ROW,
        "id": execution_id or uuid.uuid4(),
        "key_id": key_id,
        "request_id": request_id,
        "idempotency_key": idempotency.key if idempotency else None,
        "request_fingerprint": idempotency.fingerprint if idempotency else None,
        "owner": owner,
        **request_columns(request),
        "status": ExecutionStatus.RUNNING if running else ExecutionStatus.QUEUED,
        "batch_id": batch_id,
        "position": position,
        "session_id": session_id,
        "created_at": now,
        "started_at": now if running else None,
    }
    # A prebuilt INSERT on the session's connection, not the ORM's unit of work: on this path
    # (once per execution) the flush machinery cost more than the statement. The row answered
    # is built from the same values, detached from the session, as the ORM's would be after
    # the session closes.
    try:
        session.connection().execute(_INSERT, values)
    except IntegrityError:
        # Most likely a racing request with the same Idempotency-Key; else a batch position
        # taken twice, or a key or batch that does not exist (a bug of the caller).
        raise ConflictError(
            "conflicts with a stored execution: Idempotency-Key or batch position in use"
        ) from None
    return Execution(**values)


def request_columns(request: ExecutionRequest) -> dict[str, Any]:
    """The columns holding what was asked, as every insert (one, or a batch's) writes them."""
    return {
        "code": request.code,
        "stdin": request.stdin,
        "files": api_files.to_api(request.files),
        "runtime": request.runtime,
        "test_code": request.test_code,
        "judge": str(request.judge),
        "cases": None if request.cases is None else [case.model_dump() for case in request.cases],
        "limits": request.limits.model_dump(),
    }


def _release_stale_idempotency_key(
    session: Session, key_id: int, idempotency_key: str, now: datetime
) -> None:
    # The unique constraint holds forever; the promise lasts 24 h. Past that, the old execution
    # forgets the key so a new one can take it.
    session.execute(
        update(Execution)
        .where(
            Execution.key_id == key_id,
            Execution.idempotency_key == idempotency_key,
            Execution.created_at < now - IDEMPOTENCY_TTL,
        )
        .values(idempotency_key=None),
        execution_options={"synchronize_session": False},
    )


def find_by_idempotency_key(
    session: Session, key_id: int, idempotency: Idempotency
) -> Execution | None:
    """The key's execution of the last 24 h under this ``Idempotency-Key``, or None.

    Raise :class:`ConflictError` if it was made from a different body.
    """
    row = session.scalar(
        select(Execution).where(
            Execution.key_id == key_id,
            Execution.idempotency_key == idempotency.key,
            Execution.created_at >= datetime.now(UTC) - IDEMPOTENCY_TTL,
        )
    )
    if row is not None and row.request_fingerprint != idempotency.fingerprint:
        raise ConflictError("Idempotency-Key was used with a different request body")
    return row


def start_execution(session: Session, execution_id: uuid.UUID) -> bool:
    """Mark a queued execution ``running``; False if it is not queued (any more)."""
    started = session.scalars(
        update(Execution)
        .where(Execution.id == execution_id, Execution.status == ExecutionStatus.QUEUED)
        .values(status=ExecutionStatus.RUNNING, started_at=datetime.now(UTC))
        .returning(Execution.id)
    ).one_or_none()
    return started is not None


def start_executions(session: Session, execution_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Mark queued executions ``running`` in one statement; the ids that were still queued."""
    started = session.scalars(
        update(Execution)
        .where(Execution.id.in_(execution_ids), Execution.status == ExecutionStatus.QUEUED)
        .values(status=ExecutionStatus.RUNNING, started_at=datetime.now(UTC))
        .returning(Execution.id),
        execution_options={"synchronize_session": False},
    ).all()
    return set(started)


def discard_unfinished(session: Session, execution_id: uuid.UUID) -> None:
    """Forget an execution the executors refused before it ran (its client got 503); nothing
    if it finished meanwhile."""
    session.execute(
        delete(Execution).where(Execution.id == execution_id, Execution.status.in_(_UNFINISHED))
    )


def finish_execution(
    session: Session, execution_id: uuid.UUID, record: ExecutionRecord
) -> Execution:
    """Write ``record``'s terminal result; only the first terminal write succeeds.

    Raise :class:`ConflictError` if the execution is terminal already, :class:`NotFoundError`
    if there is no such execution.
    """
    if record.status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal status: {record.status}")
    finished = session.scalars(
        update(Execution)
        .where(Execution.id == execution_id, Execution.status.in_(_UNFINISHED))
        .values(**_result_values(record))
        .returning(Execution),
        execution_options={"populate_existing": True},
    ).one_or_none()
    if finished is not None:
        return finished
    if session.get(Execution, execution_id) is None:
        raise NotFoundError(f"no execution {execution_id}")
    raise ConflictError(f"execution {execution_id} is finished already")


def finish_inserted_execution(
    session: Session, inserted: Execution, record: ExecutionRecord
) -> ExecutionRecord:
    """:func:`finish_execution` for an execution this process inserted (``inserted``, as
    :func:`insert_execution` returned it): one UPDATE, no row read back; the answer is what
    :func:`to_record` of the stored row gives, built from ``inserted`` and the values written.
    Same errors as :func:`finish_execution`.
    """
    if record.status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal status: {record.status}")
    record = with_finish_time(record)
    values = _result_values(record)
    written = session.connection().execute(
        _FINISH["started_at" in values], {"finished_id": inserted.id, **values}
    )
    if written.rowcount != 1:
        if session.get(Execution, inserted.id) is None:
            raise NotFoundError(f"no execution {inserted.id}")
        raise ConflictError(f"execution {inserted.id} is finished already")
    return as_stored(inserted, record)


def finish_executions(
    session: Session, results: Sequence[tuple[uuid.UUID, ExecutionRecord]]
) -> list[uuid.UUID]:
    """Write many terminal records in one transaction (a batch's chunk); the ids written. An
    execution finished already keeps its record (the first terminal write wins, as in
    :func:`finish_execution`); one that does not exist is skipped the same way."""
    connection = session.connection()
    written: list[uuid.UUID] = []
    for execution_id, record in results:
        if record.status not in TERMINAL_STATUSES:
            raise ValueError(f"not a terminal status: {record.status}")
        values = _result_values(with_finish_time(record))
        statement = _FINISH["started_at" in values]
        if connection.execute(statement, {"finished_id": execution_id, **values}).rowcount == 1:
            written.append(execution_id)
    return written


def with_finish_time(record: ExecutionRecord) -> ExecutionRecord:
    """``record`` with ``finished_at`` set (now, if it has none), so that every later write of
    it, and every answer built from it, agree."""
    if record.finished_at is not None:
        return record
    return record.model_copy(update={"finished_at": datetime.now(UTC)})


def as_stored(inserted: Execution, record: ExecutionRecord) -> ExecutionRecord:
    """The record :func:`to_record` will give once ``record`` is written as the result of
    ``inserted`` (a row this process inserted), built without reading it back."""
    values = _result_values(record)
    return record.model_copy(
        update={
            "id": inserted.id,
            "stdout": clean_text(record.stdout),
            "stderr": clean_text(record.stderr),
            "cases": None if values["case_results"] is None else clean_json(values["case_results"]),
            "artifacts": [Artifact.model_validate(a) for a in clean_json(values["artifacts"])],
            "limits": Limits.model_validate(inserted.limits).to_api(),
            "runtime": inserted.runtime,
            "session_id": inserted.session_id,
            "result": None if record.result is None else clean_text(record.result),
            "created_at": inserted.created_at,
            "started_at": values.get("started_at", inserted.started_at),
            "finished_at": values["finished_at"],
        }
    )


def _result_values(record: ExecutionRecord) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": record.status,
        "exit_code": record.exit_code,
        "signal": record.signal,
        "stdout": record.stdout,
        "stderr": record.stderr,
        "stdout_truncated": record.stdout_truncated,
        "stderr_truncated": record.stderr_truncated,
        "wall_time_s": record.wall_time_s,
        "cpu_time_s": record.cpu_time_s,
        "peak_memory_bytes": record.peak_memory_bytes,
        "passed": record.passed,
        "case_results": None
        if record.cases is None
        else [case.model_dump(mode="json") for case in record.cases],
        "cached": record.cached,
        "cached_from": record.cached_from,
        "artifacts": [artifact.model_dump() for artifact in record.artifacts],
        "artifacts_truncated": record.artifacts_truncated,
        "result": record.result,
        "stream_dropped_bytes": record.stream_dropped_bytes,
        "finished_at": record.finished_at or datetime.now(UTC),
    }
    if record.started_at is not None:  # else keep the time start_execution wrote, if any
        values["started_at"] = record.started_at
    return values


def get_execution(session: Session, key_id: int, execution_id: uuid.UUID) -> Execution | None:
    """The key's execution ``execution_id``; None if absent or another key's."""
    return session.scalar(
        select(Execution).where(Execution.id == execution_id, Execution.key_id == key_id)
    )


def list_executions(
    session: Session, key_id: int, *, limit: int, cursor: str | None = None
) -> Page:
    """A page of the key's executions, newest first, after ``cursor`` (a previous page's)."""
    if not 1 <= limit <= MAX_PAGE_ITEMS:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE_ITEMS}")
    query = select(Execution).where(Execution.key_id == key_id)
    if cursor is not None:
        query = query.where(cursors.older_than(cursors.decode(cursor)))
    query = query.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    return Page(items=rows[:limit], next_cursor=cursors.encode(rows[limit - 1]))


def _columns(row: Execution, model: type[BaseModel]) -> dict[str, Any]:
    """The row's columns named as ``model``'s fields."""
    return {name: getattr(row, name) for name in model.model_fields}


def to_record(row: Execution) -> ExecutionRecord:
    """The API's execution record of a stored execution: the columns of the same names, but
    ``limits`` as the API shows them, ``cases`` the cases' results (the row's ``cases`` are
    the request's) and no artifacts before it finished."""
    return ExecutionRecord.model_validate(
        _columns(row, ExecutionRecord)
        | {
            "limits": Limits.model_validate(row.limits).to_api(),
            "cases": row.case_results,
            "artifacts": row.artifacts or [],
        }
    )


def to_request(row: Execution) -> ExecutionRequest:
    """What the executors run for a stored execution (to run one accepted elsewhere)."""
    return ExecutionRequest.model_validate(
        _columns(row, ExecutionRequest)
        | {"judge": row.judge or JudgeMode.ISOLATED, "files": api_files.from_api(row.files)}
    )
