"""Single executions: accept one program, run it now or in the background, answer its record.

Every accepted execution is inserted first (``queued``; ``running`` at once when the request
waits for it, saving a write), then finished exactly once (:mod:`.results`). An
``Idempotency-Key`` replays the execution it already names; ``cache`` answers from an identical
earlier result. A request the executors' bounded queue refuses was never accepted: its row is
removed and the client gets 503 ``overloaded``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ray.serve.exceptions import BackPressureError
from sqlalchemy.orm import Session

from executors import (
    ARTIFACTS_DIR,
    TERMINAL_STATUSES,
    Artifact,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    JudgeMode,
    Limits,
)
from serve_app.api import ExecutionCreate
from serve_app.cache import CachedResult, ResultCache, cache_fingerprint
from serve_app.db import executions
from serve_app.db.models import ApiKey, Execution
from serve_app.errors import ConflictError, NotFoundError, OverloadedError
from serve_app.http.service.admission import OVERLOADED_RETRY_AFTER_S, Admission, ExecutionBody
from serve_app.http.service.answers import ExecutionPage
from serve_app.http.service.background import BackgroundTasks
from serve_app.http.service.polling import Wakers, poll
from serve_app.http.service.results import Results, copy_of
from serve_app.http.service.runner import Runner
from serve_app.http.service.transactions import Transact
from serve_app.ratelimit import Lease

__all__ = ["BACKGROUND_DEADLINE_S", "CacheAs", "Created", "Executions", "Parts"]

logger = logging.getLogger(__name__)

BACKGROUND_RETRY_S = 0.5
"""A background run the executors' queue refused tries again after this long..."""
BACKGROUND_DEADLINE_S = 60.0
"""...until this long has passed; then it ends as ``internal_error`` (batch items wait on)."""

CacheAs = tuple[int, str]
"""Where a result is cached: the key's id and the request's fingerprint."""


@dataclass(frozen=True)
class Parts:
    """What single executions and batches share: the replica's components they work with."""

    transact: Transact
    admission: Admission
    results: Results
    cache: ResultCache
    background: BackgroundTasks
    owner: str
    """This replica's instance id: the owner of what it accepts."""
    wakers: Wakers
    """The background runs and batches going on here, whose pollers wake when they end."""


class Created:
    """The outcome of ``create``: the record to answer with, and whether it is finished."""

    def __init__(self, record: ExecutionRecord) -> None:
        self.record = record

    @property
    def terminal(self) -> bool:
        return self.record.status in TERMINAL_STATUSES


def _abandon(run: asyncio.Future[ExecutionRecord] | None) -> None:
    """Cancel a run started early that is not wanted after all; its outcome is dropped."""
    if run is not None:
        run.cancel()
        run.add_done_callback(lambda done: done.cancelled() or done.exception())


class Executions:
    """One replica's single executions (batch items run through :meth:`run_in_background`)."""

    def __init__(self, parts: Parts, runner: Runner, limits: tuple[Limits, Limits]) -> None:
        self._parts = parts
        self._runner = runner
        self._default_limits, self._max_limits = limits

    def accept(self, body: ExecutionBody) -> ExecutionRequest:
        """What will run for ``body``: its program and judging, with the effective limits."""
        limits = body.limits.resolve(self._default_limits, self._max_limits)
        return ExecutionRequest(
            code=body.code,
            stdin=body.stdin,
            files=body.files,
            runtime=body.runtime,
            test_code=body.test_code,
            judge=JudgeMode(body.judge),
            cases=body.cases,
            limits=limits,
        )

    @staticmethod
    def cache_as(key: ApiKey, request: ExecutionRequest) -> CacheAs:
        return key.id, cache_fingerprint(request)

    async def create(
        self,
        key: ApiKey,
        body: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Created:
        """Accept ``body``: run it now (``wait``) or in the background; or replay the execution
        an ``Idempotency-Key`` already names, or answer from the result cache (``cache``).
        Code the import policy refuses is refused first, before anything is stored or run."""
        await self._parts.admission.check_policy(key, body)
        item = self.accept(body)
        idempotency = None
        if idempotency_key is not None:
            fingerprint = executions.request_fingerprint(body.model_dump(mode="json"))
            idempotency = executions.Idempotency(idempotency_key, fingerprint)
            replay = await self._replay(key, idempotency)
            if replay is not None:
                return replay
        cache_as = self.cache_as(key, item) if body.cache else None
        if cache_as is not None:
            hit = await self._parts.cache.get(*cache_as)
            if hit is not None:
                return Created(await self._store_copy(key, item, hit, request_id, idempotency))
        if not body.wait and self._parts.background.room() <= 0:
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S)
        lease = await self._parts.admission.lease(key)
        try:
            execution_id = uuid.uuid4()
            # A waited run without an Idempotency-Key starts while its row is inserted (the
            # answer still waits for both): its latency loses the insert. With the key, the
            # insert's conflict check comes first: a replay must not run the program again.
            early = (
                asyncio.ensure_future(self._runner.run(execution_id, item, background=False))
                if body.wait and idempotency is None
                else None
            )
            try:
                row = await self._insert(
                    lambda session: executions.insert_execution(
                        session,
                        key.id,
                        item,
                        request_id=request_id,
                        idempotency=idempotency,
                        running=body.wait,
                        owner=self._parts.owner,
                        execution_id=execution_id,
                    ),
                    item,
                )
            except ConflictError:
                _abandon(early)
                replay = await self._replay(key, idempotency) if idempotency else None
                if replay is None:
                    raise
                return replay
            except BaseException:
                _abandon(early)  # nothing stored: the program's run is not wanted
                raise
            if body.wait:
                # Inserted as running already: one write fewer before the run.
                return Created(
                    await self.run(
                        row.id,
                        item,
                        background=False,
                        inserted=row,
                        cache_as=cache_as,
                        started=early,
                    )
                )
            self._parts.wakers.add(row.id)
            self._parts.background.spawn(
                self.run_in_background(
                    row.id, item, lease, cache_as=cache_as, deadline_s=BACKGROUND_DEADLINE_S
                )
            )
            lease = None  # the task gives it back
            return Created(executions.to_record(row))
        finally:
            await self._parts.admission.release(lease)

    async def _insert(
        self, insert: Callable[[Session], Execution], request: ExecutionRequest
    ) -> Execution:
        """The row ``insert`` stores. If the request is cancelled meanwhile (its client went
        away), the insert may still commit: what it stored then ends as ``internal_error``,
        never left queued or running with nobody to finish it."""
        task = self._parts.background.detach(self._parts.transact(insert))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:

            def abandon(inserted: asyncio.Task[Execution]) -> None:
                if inserted.cancelled() or inserted.exception() is not None:
                    return  # nothing stored
                internal_error = ExecutionRecord.internal_error(request)
                finish = self._parts.results.finish(inserted.result().id, internal_error)
                self._parts.background.detach(finish)

            task.add_done_callback(abandon)
            raise

    async def _store_copy(
        self,
        key: ApiKey,
        item: ExecutionRequest,
        hit: CachedResult,
        request_id: str | None,
        idempotency: executions.Idempotency | None,
    ) -> ExecutionRecord:
        """Store and answer a new execution that reuses ``hit``'s result (a cache hit)."""
        # Cached before MAX_RECORD_BYTES was lowered, perhaps: the cap holds for copies too.
        capped = CachedResult(hit.execution_id, await self._parts.results.capped(hit.record))

        def store(session: Session) -> ExecutionRecord:
            row = executions.insert_execution(
                session,
                key.id,
                item,
                request_id=request_id,
                idempotency=idempotency,
                running=True,
                owner=self._parts.owner,
            )
            return executions.finish_inserted_execution(session, row, copy_of(capped, row.id))

        try:
            return await self._parts.results.store_copy(store)
        except ConflictError:
            replay = await self._replay(key, idempotency) if idempotency else None
            if replay is None:
                raise
            return replay.record

    async def _replay(self, key: ApiKey, idempotency: executions.Idempotency) -> Created | None:
        row = await self._parts.transact(
            lambda session: executions.find_by_idempotency_key(session, key.id, idempotency)
        )
        return None if row is None else Created(executions.to_record(row))

    async def run(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        *,
        background: bool,
        inserted: Execution | None = None,
        cache_as: CacheAs | None = None,
        started: asyncio.Future[ExecutionRecord] | None = None,
    ) -> ExecutionRecord:
        """Run through the executors and finish the stored execution (``inserted``: the row
        this request inserted, running); with ``cache_as``, cache the result there.
        ``started``: the run, started already (awaiting it here cancels it with the caller)."""
        try:
            if started is None:
                record = await self._runner.run(execution_id, request, background=background)
            else:
                record = await started
        except BackPressureError:
            if background:
                raise
            await self._parts.results.discard(execution_id, request)
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S) from None
        except asyncio.CancelledError:
            # The client went away (or the replica is stopping): the record still ends.
            internal_error = ExecutionRecord.internal_error(request)
            self._parts.background.spawn(self._parts.results.finish(execution_id, internal_error))
            raise
        finished = await self._parts.results.finish(execution_id, record, inserted)
        if cache_as is not None and finished.status is not ExecutionStatus.INTERNAL_ERROR:
            await self._parts.cache.put(*cache_as, execution_id, finished)
        return finished

    async def run_in_background(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        lease: Lease | None,
        *,
        cache_as: CacheAs | None = None,
        deadline_s: float | None = None,
    ) -> ExecutionRecord | None:
        """Run a queued execution and give ``lease`` back; the executors' refusals are retried
        until ``deadline_s`` (then ``internal_error``), without end if None (a batch item waits
        its turn). The record, or None if it was not queued any more."""
        loop = asyncio.get_running_loop()
        deadline = None if deadline_s is None else loop.time() + deadline_s
        try:
            if not await self._parts.results.start(execution_id):
                return None
            while True:
                try:
                    return await self.run(execution_id, request, background=True, cache_as=cache_as)
                except BackPressureError:
                    if deadline is not None and loop.time() >= deadline:
                        logger.warning("execution %s: executors stayed at capacity", execution_id)
                        return await self._parts.results.finish(
                            execution_id, ExecutionRecord.internal_error(request)
                        )
                    await asyncio.sleep(BACKGROUND_RETRY_S)
        finally:
            self._parts.wakers.wake(execution_id)
            await self._parts.admission.release(lease)

    async def get(self, key: ApiKey, execution_id: str, wait_s: float = 0.0) -> ExecutionRecord:
        """The key's execution; with ``wait_s``, once terminal or after that long."""
        try:
            wanted = uuid.UUID(execution_id)
        except ValueError:
            raise NotFoundError("no such execution") from None

        async def read() -> Execution:
            row = await self._parts.transact(
                lambda session: executions.get_execution(session, key.id, wanted)
            )
            if row is None:
                raise NotFoundError("no such execution")
            return row

        wake = self._parts.wakers.get(wanted)
        row = await poll(read, lambda row: row.status in TERMINAL_STATUSES, wait_s, wake)
        return executions.to_record(row)

    async def artifact(self, key: ApiKey, execution_id: str, path: str) -> Artifact:
        """An artifact of the key's execution, by its path (``out/plot.png``; the ``out/`` may be
        left out); :class:`NotFoundError` if there is none by that path."""
        record = await self.get(key, execution_id)
        for wanted in (path, f"{ARTIFACTS_DIR}/{path}"):
            for artifact in record.artifacts:
                if artifact.path == wanted:
                    return artifact
        raise NotFoundError("no such artifact")

    async def page(self, key: ApiKey, limit: int, cursor: str | None) -> ExecutionPage:
        """A page of the key's executions, newest first."""
        page = await self._parts.transact(
            lambda session: executions.list_executions(session, key.id, limit=limit, cursor=cursor)
        )
        return ExecutionPage(
            items=[executions.to_record(row) for row in page.items], next_cursor=page.next_cursor
        )
