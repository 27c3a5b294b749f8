"""Result writing: each accepted execution's terminal record stored exactly once.

Finishing is a conditional UPDATE (:func:`serve_app.db.executions.finish_execution`): of two
writers only the first wins. Without the database the record is answered as it will be stored
and written again in the background, backing off up to ``FINISH_RETRY_MAX_S``, never dropped.
A record over ``MAX_RECORD_BYTES`` is stored (and answered) with its outputs cut to fit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.orm import Session
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from executors import ExecutionRecord, ExecutionRequest
from serve_app.cache import CachedResult
from serve_app.db import executions
from serve_app.db.models import Execution
from serve_app.errors import ConflictError, DatabaseUnavailableError
from serve_app.http._metrics import IngressMetrics
from serve_app.http._record_size import artifact_bytes, cap_record, record_bytes
from serve_app.http.service.background import BackgroundTasks
from serve_app.http.service.transactions import Transact

__all__ = ["Results", "copy_of"]

logger = logging.getLogger(__name__)

RECORD_CAP_INLINE_BYTES = 256 * 1024
"""Records up to this size are measured and cut on the event loop; larger ones in a thread."""
RECORD_CAP_MARGIN_BYTES = 1024
"""Kept free under ``MAX_RECORD_BYTES`` for what storing fills in after the cut (the row's
id, timestamps and limits: a few hundred bytes at most)."""
FINISH_RETRY_FIRST_S = 0.5
FINISH_RETRY_MAX_S = 30.0
"""A result the database could not take is written again after ``FINISH_RETRY_FIRST_S``,
then backing off (doubling) up to this long."""


def copy_of(
    hit: CachedResult, execution_id: uuid.UUID, *, streamed: bool = False
) -> ExecutionRecord:
    """A new execution's record reusing ``hit``'s result (its outputs and measured usage;
    started and finished now). ``streamed``: the copy is answered as a stream, which holds
    its whole output (``stream_dropped_bytes`` 0; else None, whatever the source's was)."""
    now = datetime.now(UTC)
    return hit.record.model_copy(
        update={
            "id": execution_id,
            "cached": True,
            "cached_from": hit.execution_id,
            "started_at": now,
            "finished_at": now,
            "stream_dropped_bytes": 0 if streamed else None,
        }
    )


class Results:
    """Starts, finishes and forgets stored executions for one replica."""

    def __init__(
        self,
        transact: Transact,
        metrics: IngressMetrics,
        background: BackgroundTasks,
        max_record_bytes: int,
    ) -> None:
        self._transact = transact
        self._metrics = metrics
        self._background = background
        self._spawn = background.spawn
        self._limit = max_record_bytes - RECORD_CAP_MARGIN_BYTES

    async def start(self, execution_id: uuid.UUID) -> bool:
        """Mark a queued execution running; False if it is not queued any more (finished, or
        taken by another instance). Without the database it runs anyway: the finish, retried
        until the database is back, records it, exactly once."""
        try:
            started = await self._transact(
                lambda session: executions.start_execution(session, execution_id)
            )
        except DatabaseUnavailableError:
            return True
        if not started:
            logger.warning("execution %s: not queued any more, not run", execution_id)
        return started

    async def start_many(self, execution_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """:meth:`start` for many executions in one write: the ids to run (all of them without
        the database, as for one)."""
        try:
            started = await self._transact(
                lambda session: executions.start_executions(session, execution_ids)
            )
        except DatabaseUnavailableError:
            return set(execution_ids)
        if len(started) < len(execution_ids):
            logger.warning(
                "%d executions: not queued any more, not run", len(execution_ids) - len(started)
            )
        return started

    async def finish(
        self,
        execution_id: uuid.UUID,
        record: ExecutionRecord,
        inserted: Execution | None = None,
    ) -> ExecutionRecord:
        """Store the terminal record; if the database is down, keep retrying in the background
        and answer with the record as it will be stored. With the row this request
        ``inserted``, the stored record is not read back (one statement fewer). The write
        completes even if the caller is cancelled meanwhile (its client went away)."""
        return await self._background.outlive(self._finish(execution_id, record, inserted))

    async def _finish(
        self, execution_id: uuid.UUID, record: ExecutionRecord, inserted: Execution | None
    ) -> ExecutionRecord:
        record = await self.capped(executions.with_finish_time(record))
        try:
            if inserted is not None:
                row = inserted
                finished = await self._transact(
                    lambda session: executions.finish_inserted_execution(session, row, record)
                )
                self._metrics.execution_stored(finished)
                return finished
            stored = await self._transact(
                lambda session: executions.finish_execution(session, execution_id, record)
            )
        except DatabaseUnavailableError:
            logger.warning(
                "execution %s: result not stored yet: database unavailable", execution_id
            )
            self._spawn(self._finish_later(execution_id, record))
            if inserted is not None:
                return executions.as_stored(inserted, record)
            return record.model_copy(update={"id": execution_id})
        self._metrics.execution_stored(record)
        return executions.to_record(stored)

    async def finish_many(self, results: Sequence[tuple[uuid.UUID, ExecutionRecord]]) -> None:
        """:meth:`finish` for many executions in one transaction (a batch's chunk); without the
        database each is written again in the background, as one would be."""
        await self._background.outlive(self._finish_many(results))

    async def _finish_many(self, results: Sequence[tuple[uuid.UUID, ExecutionRecord]]) -> None:
        capped = [
            (execution_id, await self.capped(executions.with_finish_time(record)))
            for execution_id, record in results
        ]
        try:
            written = await self._transact(
                lambda session: executions.finish_executions(session, capped)
            )
        except DatabaseUnavailableError:
            logger.warning("%d results not stored yet: database unavailable", len(capped))
            for execution_id, record in capped:
                self._spawn(self._finish_later(execution_id, record))
            return
        stored = set(written)
        for execution_id, record in capped:
            if execution_id in stored:
                self._metrics.execution_stored(record)

    async def store_copy(self, store: Callable[[Session], ExecutionRecord]) -> ExecutionRecord:
        """Insert and finish at once (a new execution copying a cached result)."""
        stored = await self._transact(store)
        self._metrics.execution_stored(stored)
        return stored

    async def capped(self, record: ExecutionRecord) -> ExecutionRecord:
        """``record`` within ``MAX_RECORD_BYTES`` (:func:`cap_record`); a big one is measured
        and cut in a worker thread, off the event loop."""
        outputs = len(record.stdout) + len(record.stderr) + len(record.result or "")
        outputs += sum(len(case.stdout) + len(case.stderr) for case in record.cases or ())
        # Even escaped (at most 6 bytes a character), outputs and artifacts fit: nothing to do.
        artifacts = artifact_bytes(record)
        if 6 * outputs + artifacts <= min(self._limit, RECORD_CAP_INLINE_BYTES):
            return record
        if artifacts <= RECORD_CAP_INLINE_BYTES and record_bytes(record) <= RECORD_CAP_INLINE_BYTES:
            return cap_record(record, self._limit)
        return await asyncio.to_thread(cap_record, record, self._limit)

    async def _finish_later(self, execution_id: uuid.UUID, record: ExecutionRecord) -> None:
        """Write ``record`` once the database is back (it finished meanwhile: nothing)."""

        async def attempt() -> None:
            self._metrics.db_write_retry()
            try:
                await self._transact(
                    lambda session: executions.finish_execution(session, execution_id, record)
                )
            except ConflictError:
                return  # finished meanwhile: exactly once still holds
            self._metrics.execution_stored(record)

        await asyncio.sleep(FINISH_RETRY_FIRST_S)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnavailableError),
            wait=wait_exponential(multiplier=2 * FINISH_RETRY_FIRST_S, max=FINISH_RETRY_MAX_S),
        )
        await retrying(attempt)

    async def discard(self, execution_id: uuid.UUID, request: ExecutionRequest) -> None:
        """Forget a run the executors refused (the client gets 503); if the database cannot be
        reached to forget it, it ends as ``internal_error`` once it can. Completes even if the
        caller is cancelled meanwhile."""
        await self._background.outlive(self._discard(execution_id, request))

    async def _discard(self, execution_id: uuid.UUID, request: ExecutionRequest) -> None:
        try:
            await self._transact(
                lambda session: executions.discard_unfinished(session, execution_id)
            )
        except DatabaseUnavailableError:
            self._spawn(self._finish_later(execution_id, ExecutionRecord.internal_error(request)))
