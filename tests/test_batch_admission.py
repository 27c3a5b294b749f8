"""How many of a batch's items run at once, and when a replica refuses more batches.

The service is the real one (SQLite, the in-process limiter); the executor handle is one that
holds every run until the test releases it, so that what is in flight can be counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.api import BatchCreate, RequestBounds, validate_body
from serve_app.db import Database, batches, keys, migrate
from serve_app.errors import OverloadedError
from serve_app.http import ExecutionService
from serve_app.settings import Settings

ITEMS_PER_BATCH = 3


class HeldExecutor:
    """A handle whose runs all wait for ``release``; counts how many are in flight at most."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most = 0

    @property
    def run(self) -> HeldExecutor:
        return self

    def remote(self, request: ExecutionRequest, **_: Any) -> Any:
        return self._run(request)

    async def _run(self, request: ExecutionRequest) -> dict[str, Any]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        record = ExecutionRecord(status=ExecutionStatus.OK, limits=request.limits.to_api())
        return record.to_api()


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'batches.db'}",
        max_batch_items=ITEMS_PER_BATCH,
        max_concurrent_executions=1,  # one slot, one replica: at most 2 items in flight
        executor_num_replicas_max=1,
        executor_num_replicas_min=1,
        max_concurrent_per_key=100,
    )
    migrate.upgrade(settings)
    yield settings


def test_items_in_flight_and_the_backlog_are_bounded(settings: Settings) -> None:
    database = Database.from_settings(settings)
    executor = HeldExecutor()
    body = validate_body(
        BatchCreate,
        {"items": [{"code": f"print({n})"} for n in range(ITEMS_PER_BATCH)]},
        RequestBounds.from_settings(settings),
    )

    async def scenario() -> None:
        from serve_app.ratelimit import build_rate_limiter

        service = ExecutionService(settings, database, build_rate_limiter(settings), executor)
        with database.session() as session:
            key = keys.create_key(session, settings.api_key_secret, "batcher").row
        first = await service.create_batch(key, body)
        backlog = service.max_pending_batch_items // ITEMS_PER_BATCH
        for _ in range(backlog - 1):
            await service.create_batch(key, body)
        await asyncio.sleep(0.5)
        # Each batch keeps at most twice the executors' slots in flight: 2 of its 3 items.
        assert executor.most == 2 * backlog, executor.most
        with pytest.raises(OverloadedError):
            await service.create_batch(key, body)  # the replica's backlog is full
        executor.release.set()
        for _ in range(100):
            with database.session() as session:
                view = batches.get_batch(session, key.id, uuid.UUID(first["id"]))
            if view is not None and view.done == ITEMS_PER_BATCH:
                break
            await asyncio.sleep(0.1)
        await service.create_batch(key, body)  # room again
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()
