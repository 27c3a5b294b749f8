"""How many of a batch's items run at once, and when a replica refuses more batches.

The service is the real one (SQLite, the in-process limiter); the executor handle is one that
holds every run until the test releases it, so that what is in flight can be counted. Issue 10
item 3: a batch's running items hold leases of their key's in-flight cap, and one key gets only
its share of the replica's batch backlog.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.api import BatchCreate, ExecutionCreate, RequestBounds, validate_body
from serve_app.db import Database, audit, batches, keys
from serve_app.db.models import ApiKey
from serve_app.errors import OverloadedError, RateLimitedError
from serve_app.http import ExecutionService
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings
from tests.support.polling import eventually_async
from tests.support.settings import migrated_sqlite_settings
from tests.support.stand_ins import RunsStandIn

ITEMS_PER_BATCH = 3


class HeldExecutor(RunsStandIn):
    """A handle whose runs all wait for ``release``; counts how many are in flight at most."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most = 0

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        record = ExecutionRecord(status=ExecutionStatus.OK, limits=request.limits.to_api())
        return record.to_api()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_sqlite_settings(
        tmp_path,
        max_batch_items=ITEMS_PER_BATCH,
        max_concurrent_executions=1,  # one slot, one replica: at most 2 items in flight
        executor_num_replicas_max=1,
        executor_num_replicas_min=1,
        max_concurrent_per_key=100,
    )


def batch_body(settings: Settings, items: int = ITEMS_PER_BATCH) -> BatchCreate:
    return validate_body(
        BatchCreate,
        {"items": [{"code": f"print({n})"} for n in range(items)]},
        RequestBounds.from_settings(settings),
    )


def new_key(database: Database, settings: Settings, name: str, **limits: int) -> ApiKey:
    with database.session() as session:
        return keys.create_key(session, settings.api_key_secret, name, **limits).row


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (up to 10 s) for ``condition()``: the background tasks run meanwhile."""
    await eventually_async(condition, 10, what, interval_s=0.05)


async def until_done(database: Database, key: ApiKey, batch_id: str) -> None:
    def done() -> bool:
        with database.session() as session:
            view = batches.get_batch(session, key.id, uuid.UUID(batch_id))
        return view is not None and view.done == view.total

    await eventually_async(done, 10, "the batch finishes", interval_s=0.1)


def test_items_in_flight_and_the_backlog_are_bounded(settings: Settings) -> None:
    database = Database.from_settings(settings)
    executor = HeldExecutor()
    body = batch_body(settings)

    async def scenario() -> None:
        service = ExecutionService(settings, database, build_rate_limiter(settings), executor)
        per_key = service.max_pending_batch_items_per_key // ITEMS_PER_BATCH
        backlog = service.max_pending_batch_items // ITEMS_PER_BATCH
        # Several keys fill the backlog, each within its share.
        owners = [new_key(database, settings, f"batcher-{n}") for n in range(backlog // per_key)]
        owners.append(new_key(database, settings, "batcher-last"))
        created = []
        for n in range(backlog):
            owner = owners[n // per_key]
            created.append((owner, await service.create_batch(owner, body)))
        await until(lambda: executor.in_flight == 2 * backlog, "every batch's items running")
        # Each batch keeps at most twice the executors' slots in flight: 2 of its 3 items.
        assert executor.most == 2 * backlog, executor.most
        with pytest.raises(OverloadedError):
            await service.create_batch(owners[-1], body)  # the replica's backlog is full
        executor.release.set()
        owner, first = created[0]
        await until_done(database, owner, first.id)
        await service.create_batch(owners[-1], body)  # room again
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()


def test_one_key_gets_only_its_share_of_the_backlog(settings: Settings) -> None:
    """Issue 10 item 3: one key filling the replica's batch backlog left every other key
    ``overloaded``; now it is refused (429, audited) once its share is used."""
    database = Database.from_settings(settings)
    executor = HeldExecutor()
    body = batch_body(settings)

    async def scenario() -> None:
        service = ExecutionService(settings, database, build_rate_limiter(settings), executor)
        greedy = new_key(database, settings, "greedy")
        other = new_key(database, settings, "other")
        share = service.max_pending_batch_items_per_key
        assert ITEMS_PER_BATCH <= share < service.max_pending_batch_items
        for _ in range(share // ITEMS_PER_BATCH):
            await service.create_batch(greedy, body)
        with pytest.raises(RateLimitedError) as refused:
            await service.create_batch(greedy, body)
        assert refused.value.retry_after_s > 0
        first = await service.create_batch(other, body)  # the others still get in
        executor.release.set()
        await until_done(database, other, first.id)
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
        with database.session() as session:
            events = audit.list_events(session, key_name="greedy")
        refusals = [e.details for e in events if e.kind == "rate_limited"]
        assert refusals == [{"limit": "batch_backlog", "max_pending_items": 7}]
    finally:
        database.dispose()


def test_running_batch_items_hold_leases_of_their_keys_cap(settings: Settings) -> None:
    """Issue 10 item 3: batch items ran outside the key's in-flight cap (no lease each), so
    two batches ran twice the cap and a key's own requests were not held back by them."""
    database = Database.from_settings(settings)
    executor = HeldExecutor()
    body = batch_body(settings)
    wait = validate_body(
        ExecutionCreate, {"code": "print(1)"}, RequestBounds.from_settings(settings)
    )

    async def scenario() -> None:
        limiter = build_rate_limiter(settings)
        service = ExecutionService(settings, database, limiter, executor)
        key = new_key(database, settings, "capped", max_concurrency=2)
        first = await service.create_batch(key, body)
        second = await service.create_batch(key, body)
        await until(lambda: executor.in_flight == 2, "two items running")
        await asyncio.sleep(0.3)  # the other items had every chance to start: they wait
        assert (executor.in_flight, await limiter.in_flight(key.lookup_id)) == (2, 2)
        with pytest.raises(RateLimitedError):
            await service.create(key, wait)  # the key's cap is used by its batch items
        executor.release.set()
        await until_done(database, key, first.id)
        await until_done(database, key, second.id)  # waiting items ran, none failed
        for batch_id in (first.id, second.id):
            with database.session() as session:
                view = batches.get_batch(session, key.id, uuid.UUID(batch_id))
            assert view is not None
            assert {str(row.status) for row in view.items} == {"ok"}
        assert executor.most == 2
        # Every lease given back: a chunk gives its own back just after storing its records.
        for _ in range(100):
            if await limiter.in_flight(key.lookup_id) == 0:
                break
            await asyncio.sleep(0.05)
        assert await limiter.in_flight(key.lookup_id) == 0
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()


def test_items_go_to_the_executors_in_chunks_of_a_replicas_slots(
    tmp_path: Path, settings: Settings
) -> None:
    """Issue 12: a batch's items are sent a replica's slots at a time, in one call each (and
    one write to start them, one to store their records); each still gets its own record."""
    chunked = settings.model_copy(
        update={"max_concurrent_executions": 2, "max_batch_items": 5, "max_concurrent_per_key": 4}
    )
    database = Database.from_settings(chunked)
    executor = HeldExecutor()

    async def scenario() -> None:
        service = ExecutionService(chunked, database, build_rate_limiter(chunked), executor)
        key = new_key(database, chunked, "chunked")
        created = await service.create_batch(key, batch_body(chunked, 5))
        # The key's cap (4) allows two chunks of two at once; the fifth item waits.
        await until(lambda: executor.in_flight == 4, "two chunks running")
        await asyncio.sleep(0.3)
        assert executor.batch_calls == [2, 2]
        executor.release.set()
        await until_done(database, key, created.id)
        assert sorted(executor.batch_calls) == [2, 2]  # the last item went alone: run.remote
        assert executor.most == 4
        with database.session() as session:
            view = batches.get_batch(session, key.id, uuid.UUID(created.id))
        assert view is not None
        assert [str(row.status) for row in view.items] == ["ok"] * 5
        assert all(row.started_at is not None and row.finished_at for row in view.items)
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()


def test_chunks_of_two_batches_never_deadlock_on_the_keys_cap(settings: Settings) -> None:
    """A chunk takes the leases that are free (one waited for, the rest only if free): two
    batches of one key whose chunks each held a part of an odd cap would otherwise wait for
    each other for ever."""
    chunked = settings.model_copy(update={"max_concurrent_executions": 2})
    database = Database.from_settings(chunked)
    executor = HeldExecutor()

    async def scenario() -> None:
        limiter = build_rate_limiter(chunked)
        service = ExecutionService(chunked, database, limiter, executor)
        key = new_key(database, chunked, "odd-cap", max_concurrency=3)
        first = await service.create_batch(key, batch_body(chunked))
        second = await service.create_batch(key, batch_body(chunked))
        await until(lambda: executor.in_flight == 3, "the key's cap in flight")
        executor.release.set()
        await until_done(database, key, first.id)
        await until_done(database, key, second.id)
        assert executor.most == 3
        assert await limiter.in_flight(key.lookup_id) == 0
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()


def test_a_waiting_get_answers_when_its_run_ends_here_not_at_its_next_poll(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``wait_s`` read of a batch or a background execution that ends on this replica is
    woken by its end: with the reads' back-off made longer than the test's patience, only
    the wake can answer it in time."""
    from serve_app.http.service import polling

    monkeypatch.setattr(polling, "POLL_FIRST_S", 120.0)
    monkeypatch.setattr(polling, "POLL_MAX_S", 120.0)
    database = Database.from_settings(settings)
    executor = HeldExecutor()
    queued = validate_body(
        ExecutionCreate, {"code": "print(1)", "wait": False}, RequestBounds.from_settings(settings)
    )

    async def scenario() -> None:
        service = ExecutionService(settings, database, build_rate_limiter(settings), executor)
        key = new_key(database, settings, "waiter")
        batch = await service.create_batch(key, batch_body(settings))
        single = await service.create(key, queued)
        waiting_batch = asyncio.ensure_future(service.batch(key, batch.id, wait_s=60))
        waiting_single = asyncio.ensure_future(service.get(key, str(single.record.id), wait_s=60))
        await asyncio.sleep(0.3)
        assert not waiting_batch.done() and not waiting_single.done()
        executor.release.set()
        done_batch, done_single = await asyncio.wait_for(
            asyncio.gather(waiting_batch, waiting_single), timeout=20
        )
        assert done_batch.status == "done" and done_batch.done == ITEMS_PER_BATCH
        assert done_single.status is ExecutionStatus.OK
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()
