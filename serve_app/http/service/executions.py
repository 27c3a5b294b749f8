"""Single executions: accept one program, run it now or in the background, answer its record.

Every accepted execution is inserted first (``queued``; ``running`` at once when the request
waits for it, saving a write), then finished exactly once (:mod:`.results`). An
``Idempotency-Key`` replays the execution it already names; ``cache`` answers from an identical
earlier result. A request the executors' bounded queue refuses was never accepted: its row is
removed and the client gets 503 ``overloaded``.

A streamed execution (:meth:`Executions.open_stream`) is accepted the same way, then answered
as the run's events as they come, the stored record last; it always waits for its run (a
``wait: false`` body streams all the same: a stream waits by nature).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    buffered,
    record_event,
)
from serve_app.api import ExecutionCreate
from serve_app.cache import CachedResult, ResultCache, cache_fingerprint
from serve_app.db import executions
from serve_app.db.models import ApiKey, Execution
from serve_app.errors import ConflictError, NotFoundError, OverloadedError
from serve_app.http.service.admission import OVERLOADED_RETRY_AFTER_S, Admission, ExecutionBody
from serve_app.http.service.answers import ExecutionPage
from serve_app.http.service.background import BackgroundTasks
from serve_app.http.service.polling import MAX_WAIT_S, Wakers, poll
from serve_app.http.service.results import Results, copy_of
from serve_app.http.service.runner import Event, Runner
from serve_app.http.service.streams import EventStream, closing, primed, replayed
from serve_app.http.service.transactions import Transact
from serve_app.ratelimit import Lease

if TYPE_CHECKING:
    from executors import StdinChannel

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
    stream_buffer_bytes: int
    """What this replica holds of a stream's output for a client slower than its program
    (``STREAM_BUFFER_BYTES``); past it, chunks are dropped and counted in the record."""


@dataclass(frozen=True)
class _Accepted:
    """A body accepted to run: its request, its ``Idempotency-Key`` and where it is cached."""

    request: ExecutionRequest
    idempotency: executions.Idempotency | None
    cache_as: CacheAs | None


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
        accepted = await self._accepted(key, body, idempotency_key)
        earlier = await self._earlier(key, accepted, request_id)
        if earlier is not None:
            return Created(earlier)
        if not body.wait and self._parts.background.room() <= 0:
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S)
        item, idempotency, cache_as = accepted.request, accepted.idempotency, accepted.cache_as
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
                row = await self._insert_new(
                    key, accepted, execution_id, request_id, running=body.wait
                )
            except ConflictError as conflict:
                _abandon(early)
                return Created(await self._after_conflict(key, idempotency, conflict))
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

    async def _accepted(
        self, key: ApiKey, body: ExecutionCreate, idempotency_key: str | None
    ) -> _Accepted:
        """``body`` checked against the import policy (refused first, before anything is
        stored or run) and made into its request, idempotency and cache place."""
        await self._parts.admission.check_policy(key, body)
        request = self.accept(body)
        idempotency = None
        if idempotency_key is not None:
            fingerprint = executions.request_fingerprint(body.model_dump(mode="json"))
            idempotency = executions.Idempotency(idempotency_key, fingerprint)
        cache_as = self.cache_as(key, request) if body.cache else None
        return _Accepted(request, idempotency, cache_as)

    async def _earlier(
        self, key: ApiKey, accepted: _Accepted, request_id: str | None, *, streamed: bool = False
    ) -> ExecutionRecord | None:
        """The record that answers ``accepted`` without running it: the execution its
        ``Idempotency-Key`` names, or a new one copying a cached result; None: it must run."""
        if accepted.idempotency is not None:
            replay = await self._replay(key, accepted.idempotency)
            if replay is not None:
                return replay.record
        if accepted.cache_as is not None:
            hit = await self._parts.cache.get(*accepted.cache_as)
            if hit is not None:
                return await self._store_copy(
                    key, accepted.request, hit, request_id, accepted.idempotency, streamed=streamed
                )
        return None

    async def _insert_new(
        self,
        key: ApiKey,
        accepted: _Accepted,
        execution_id: uuid.UUID,
        request_id: str | None,
        *,
        running: bool,
    ) -> Execution:
        """Insert the execution of ``accepted`` (:meth:`_insert`); :class:`ConflictError` if its
        ``Idempotency-Key`` names another execution already."""
        return await self._insert(
            lambda session: executions.insert_execution(
                session,
                key.id,
                accepted.request,
                request_id=request_id,
                idempotency=accepted.idempotency,
                running=running,
                owner=self._parts.owner,
                execution_id=execution_id,
            ),
            accepted.request,
        )

    async def _after_conflict(
        self,
        key: ApiKey,
        idempotency: executions.Idempotency | None,
        conflict: ConflictError,
    ) -> ExecutionRecord:
        """The execution an ``Idempotency-Key`` named after all (inserted meanwhile by a
        concurrent request), or ``conflict`` raised again."""
        replay = await self._replay(key, idempotency) if idempotency else None
        if replay is None:
            raise conflict
        return replay.record

    # --- streamed

    async def open_stream(
        self,
        key: ApiKey,
        body: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> EventStream:
        """Accept ``body`` as :meth:`create` does, every refusal raised here (the executors'
        too: 503 ``overloaded``), and open its stream: the run's output as it comes, through
        this replica's bounded buffer, then the stored record. A replay or a cache hit streams
        the record's stdout and stderr (one chunk each, if any) and the record. A body with
        ``wait: false`` streams all the same. Closing the stream before its end (the client
        went away) cancels the run, and the execution ends ``internal_error``. ``stdin``:
        standard input sent while the program runs (:class:`executors.StdinChannel`)."""
        accepted = await self._accepted(key, body, idempotency_key)
        earlier = await self._earlier(key, accepted, request_id, streamed=True)
        if earlier is not None:
            return self._replayed(key, earlier)
        lease = await self._parts.admission.lease(key)
        try:
            try:
                row = await self._insert_new(key, accepted, uuid.uuid4(), request_id, running=True)
            except ConflictError as conflict:
                replay = await self._after_conflict(key, accepted.idempotency, conflict)
                return self._replayed(key, replay)
            events = self._streamed(row, accepted, lease, stdin)
            lease = None  # the stream gives it back, whatever becomes of it
            return await EventStream.open(row.id, events)
        finally:
            await self._parts.admission.release(lease)

    async def _streamed(
        self,
        row: Execution,
        accepted: _Accepted,
        lease: Lease | None,
        stdin: StdinChannel | None,
    ) -> AsyncGenerator[Event, None]:
        """The events of ``row``'s run, its stored record last; ``lease`` given back at the
        end. The first event raises what refuses the run."""
        request = accepted.request
        settled = False  # the row is finished (or forgotten): nothing left to end it
        try:
            try:
                events = await primed(self._runner.run_stream(row.id, request, stdin=stdin))
            except BackPressureError:
                settled = True
                await self._parts.results.discard(row.id, request)
                raise OverloadedError(OVERLOADED_RETRY_AFTER_S) from None
            record = None
            limit = self._parts.stream_buffer_bytes
            async with closing(buffered(events, max_bytes=limit)) as output:
                try:
                    async for event in output:
                        if event.get("type") == "record":
                            record = ExecutionRecord.model_validate(event.get("record"))
                            break
                        yield event
                except Exception as exc:  # noqa: BLE001 - the stream still ends with its record
                    logger.error("execution %s: stream failed: %s", row.id, type(exc).__name__)
            settled = True
            finished = await self._store(
                row.id, record or ExecutionRecord.internal_error(request), row, accepted.cache_as
            )
            await self._parts.admission.release(lease)
            lease = None
            yield record_event(finished)
        finally:
            if not settled:  # closed early (the client went away): the record still ends
                internal_error = ExecutionRecord.internal_error(request)
                self._parts.background.spawn(self._parts.results.finish(row.id, internal_error))
            await self._parts.admission.release(lease)

    def _replayed(self, key: ApiKey, record: ExecutionRecord) -> EventStream:
        """The stream of an execution that needs no run (a replay, a cache hit); a replayed
        one still running streams once it has ended."""
        if record.status in TERMINAL_STATUSES:
            return EventStream(record.id, replayed(record))

        async def terminal() -> ExecutionRecord:
            while True:
                found = await self.get(key, str(record.id), MAX_WAIT_S)
                if found.status in TERMINAL_STATUSES:
                    return found

        return EventStream(record.id, replayed(terminal))

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
        *,
        streamed: bool = False,
    ) -> ExecutionRecord:
        """Store and answer a new execution that reuses ``hit``'s result (a cache hit);
        ``streamed``: answered as a stream."""
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
            copy = copy_of(capped, row.id, streamed=streamed)
            return executions.finish_inserted_execution(session, row, copy)

        try:
            return await self._parts.results.store_copy(store)
        except ConflictError as conflict:
            return await self._after_conflict(key, idempotency, conflict)

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
        return await self._store(execution_id, record, inserted, cache_as)

    async def _store(
        self,
        execution_id: uuid.UUID,
        record: ExecutionRecord,
        inserted: Execution | None,
        cache_as: CacheAs | None,
    ) -> ExecutionRecord:
        """Finish the execution with ``record``; with ``cache_as``, cache what was stored (a
        run the service failed is never cached)."""
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
