"""Batches: stored with all their items at once, run in the background.

Items run at most the key's in-flight cap at a time (each holding a lease of it while it runs,
shared with the key's other requests) and no more than twice the executors' slots; waiting
items queue, they never fail. They go to the executors in chunks of up to one replica's slots:
one write to start them, one call and one write of their records per chunk (per lane: a
chunk's items whose runtime has executors of its own go there in a call of their own). A batch is refused whole (nothing stored) if an item breaks the
import policy, or the key's share of the replica's batch backlog, or the backlog, is full.
Identical cached items run once. The stored batch status follows once, at the end (the API
derives it from the items anyway): a write per item would cost more than the items themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque

from ray.serve.exceptions import BackPressureError

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.api import BatchCreate
from serve_app.cache import CachedResult
from serve_app.db import batches, executions
from serve_app.db.models import ApiKey, BatchStatus
from serve_app.errors import DatabaseUnavailableError, NotFoundError
from serve_app.http.service.answers import BatchAccepted, BatchAnswer
from serve_app.http.service.executions import BACKGROUND_RETRY_S, CacheAs, Executions, Parts
from serve_app.http.service.polling import poll
from serve_app.http.service.results import copy_of
from serve_app.http.service.runner import Runner

__all__ = ["Batches"]

_Firsts = dict[str, asyncio.Future[ExecutionRecord | None]]
"""The first item of each cached fingerprint in a batch, and (once known) its record."""


class Batches:
    """One replica's batches."""

    def __init__(
        self, parts: Parts, executions: Executions, runner: Runner, slots: int, chunk_runs: int
    ) -> None:
        """``slots``: the executors' in all; ``chunk_runs``: one executor replica's (the most
        items one call carries)."""
        self._parts = parts
        self._executions = executions
        self._runner = runner
        self._slots = slots
        self._chunk_runs = chunk_runs

    async def create(
        self, key: ApiKey, body: BatchCreate, *, request_id: str | None = None
    ) -> BatchAccepted:
        """Accept a batch: store it with its items, then run them in the background."""
        for body_item in body.items:
            await self._parts.admission.check_policy(key, body_item)
        items = [self._executions.accept(body_item) for body_item in body.items]
        self._parts.admission.check_batch_room(key, len(items))
        self._parts.admission.hold_batch_items(key, len(items))  # before any await: batches count
        try:
            new = await self._parts.transact(
                lambda session: batches.insert_batch(
                    session, key.id, items, request_id, owner=self._parts.owner
                )
            )
        except BaseException:
            self._parts.admission.drop_batch_items(key, len(items))
            raise
        cache_as = [
            self._executions.cache_as(key, item) if body_item.cache else None
            for item, body_item in zip(items, body.items, strict=True)
        ]
        # The key's cap, but no more than keeps every slot busy with one run waiting behind
        # it: more in flight would only wait in Serve's router, which backs off.
        in_flight = min(self._parts.admission.cap(key), 2 * self._slots)
        self._parts.wakers.add(new.batch.id)
        self._parts.background.spawn(self._run(key, new, items, cache_as, in_flight))
        return BatchAccepted(id=str(new.batch.id), total=len(items))

    async def _run(
        self,
        key: ApiKey,
        new: batches.NewBatch,
        items: list[ExecutionRequest],
        cache_as: list[CacheAs | None],
        in_flight: int,
    ) -> None:
        """Run a batch's items, about ``in_flight`` at a time, each under a lease of the key's
        cap. Items without ``cache`` run in chunks (:meth:`_run_chunks`); items with it one by
        one, once per fingerprint: the first runs (unless the cache has it), the others copy
        its result."""
        gate = asyncio.Semaphore(in_flight)
        firsts: _Firsts = {}
        chunked: deque[tuple[uuid.UUID, ExecutionRequest]] = deque(
            (execution_id, item)
            for execution_id, item, where in zip(new.item_ids, items, cache_as, strict=True)
            if where is None
        )

        async def run_item(execution_id: uuid.UUID, item: ExecutionRequest, where: CacheAs) -> None:
            try:
                if await self._finish_from_cache(execution_id, where, firsts):
                    return
                async with gate:
                    lease = await self._parts.admission.wait_for_lease(key)
                    # run_in_background gives the lease back.
                    record = await self._executions.run_in_background(
                        execution_id, item, lease, cache_as=where
                    )
                if not firsts[where[1]].done():
                    firsts[where[1]].set_result(record)
            finally:
                self._parts.admission.drop_batch_items(key, 1)
                if not firsts[where[1]].done():
                    firsts[where[1]].set_result(None)

        chunk = max(1, min(self._chunk_runs, in_flight))
        workers = min(-(-in_flight // chunk), -(-len(chunked) // chunk))
        try:
            await asyncio.gather(
                *(
                    run_item(execution_id, item, where)
                    for execution_id, item, where in zip(new.item_ids, items, cache_as, strict=True)
                    if where is not None
                ),
                *(self._run_chunks(key, chunked, chunk) for _ in range(workers)),
            )
            await self.refresh(new.batch.id)
        finally:
            self._parts.wakers.wake(new.batch.id)

    async def _run_chunks(
        self, key: ApiKey, waiting: deque[tuple[uuid.UUID, ExecutionRequest]], chunk: int
    ) -> None:
        """Take up to ``chunk`` waiting items at a time, as many as the key has leases free
        for (at least one, waited for), and run them as one call to one executor replica:
        one write marks them running, one call runs them, one transaction stores their
        records. Per item this saves two transactions and a handle call (more than a short
        program costs to run)."""
        while waiting:
            leases = [await self._parts.admission.wait_for_lease(key)]
            try:
                leases += await self._parts.admission.more_leases(key, min(chunk, len(waiting)) - 1)
                taken = [waiting.popleft() for _ in range(min(len(leases), len(waiting)))]
                if taken:  # else the other workers took the rest while this one waited
                    try:
                        await self._run_chunk(taken)
                    finally:
                        self._parts.admission.drop_batch_items(key, len(taken))
            finally:
                for lease in leases:
                    await self._parts.admission.release(lease)

    async def _run_chunk(self, taken: list[tuple[uuid.UUID, ExecutionRequest]]) -> None:
        """Run ``taken`` (queued items) and store their records: one call per lane (the
        executors of their runtime, :meth:`Runner.lane`), the lanes at once."""
        started = await self._parts.results.start_many([execution_id for execution_id, _ in taken])
        lanes: dict[str | None, list[tuple[uuid.UUID, ExecutionRequest]]] = {}
        for execution_id, item in taken:
            if execution_id in started:
                lanes.setdefault(self._runner.lane(item), []).append((execution_id, item))
        await asyncio.gather(*(self._run_lane(runs) for runs in lanes.values()))

    async def _run_lane(self, runs: list[tuple[uuid.UUID, ExecutionRequest]]) -> None:
        """Run ``runs`` (started, of one lane) in one call and store their records; the
        executors' refusals are retried until they take it (a batch waits its turn)."""
        ids = [execution_id for execution_id, _ in runs]
        requests = [item for _, item in runs]
        try:
            while True:
                try:
                    records = await self._runner.run_many(ids, requests)
                    break
                except BackPressureError:
                    await asyncio.sleep(BACKGROUND_RETRY_S)
        except asyncio.CancelledError:
            # The replica is stopping: the records still end (as for one run).
            failed = [(i, ExecutionRecord.internal_error(item)) for i, item in runs]
            self._parts.background.spawn(self._parts.results.finish_many(failed))
            raise
        await self._parts.results.finish_many(list(zip(ids, records, strict=True)))

    async def _finish_from_cache(
        self, execution_id: uuid.UUID, cache_as: CacheAs, firsts: _Firsts
    ) -> bool:
        """Finish a batch item with a cached result, or with the result of the same item
        earlier in its batch; False if it must run (it is then the first of its kind)."""
        fingerprint = cache_as[1]
        first = firsts.get(fingerprint)
        if first is None:
            firsts[fingerprint] = asyncio.get_running_loop().create_future()
            hit = await self._parts.cache.get(*cache_as)
            if hit is None:
                return False
            firsts[fingerprint].set_result(copy_of(hit, hit.execution_id))
            record = copy_of(hit, execution_id)
        else:
            earlier = await first
            if earlier is None or earlier.status is ExecutionStatus.INTERNAL_ERROR:
                return False
            record = copy_of(CachedResult(earlier.id, earlier), execution_id)
        await self._parts.results.finish(execution_id, record)
        return True

    async def refresh(self, batch_id: uuid.UUID) -> None:
        """Bring the stored batch status up to date with its items."""
        # The stored status only follows (the API derives it from the items): a write that
        # cannot be made now waits for the batch's next refresh.
        with contextlib.suppress(DatabaseUnavailableError):
            await self._parts.transact(
                lambda session: batches.refresh_batch_status(session, batch_id)
            )

    async def get(self, key: ApiKey, batch_id: str, wait_s: float = 0.0) -> BatchAnswer:
        """The key's batch with its records in request order; with ``wait_s``, once done or
        after that long."""
        try:
            wanted = uuid.UUID(batch_id)
        except ValueError:
            raise NotFoundError("no such batch") from None

        async def progress() -> batches.BatchProgress:
            found = await self._parts.transact(
                lambda session: batches.batch_progress(session, key.id, wanted)
            )
            if found is None:
                raise NotFoundError("no such batch")
            return found

        wake = self._parts.wakers.get(wanted)
        await poll(progress, lambda found: found.status is BatchStatus.DONE, wait_s, wake)
        view = await self._parts.transact(
            lambda session: batches.get_batch(session, key.id, wanted)
        )
        if view is None:
            raise NotFoundError("no such batch")
        return BatchAnswer(
            id=str(view.id),
            status=str(view.status),
            total=view.total,
            done=view.done,
            items=[executions.to_record(row) for row in view.items],
        )
