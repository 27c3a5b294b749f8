"""A request cancelled at any point (its client went away) leaves no record unfinished.

The service is the real one (SQLite, the in-process limiter); the executor handle answers at
once. Each synchronous request is cancelled after a growing number of event-loop turns, so
that the cancellation lands while its row is being inserted, while it runs, and while its
record is being written (issue 12's burst: records left ``running`` when wrk stopped).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from executors import TERMINAL_STATUSES, ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.api import ExecutionCreate, RequestBounds, validate_body
from serve_app.db import Database, keys
from serve_app.db.models import Execution
from serve_app.http import ExecutionService
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings
from tests.support.polling import eventually_async
from tests.support.settings import migrated_sqlite_settings
from tests.support.stand_ins import RunsStandIn

TURNS = 40
"""Cancel after 0..TURNS-1 turns of the loop: from before the insert to after the answer."""


class AnsweringExecutor(RunsStandIn):
    """Answers each run after one turn of the loop."""

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        await asyncio.sleep(0)
        record = ExecutionRecord(status=ExecutionStatus.OK, limits=request.limits.to_api())
        return record.to_api()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_sqlite_settings(tmp_path, max_concurrent_per_key=100)


@pytest.mark.parametrize("wait", [True, False])
def test_a_cancelled_request_leaves_no_record_unfinished(settings: Settings, wait: bool) -> None:
    database = Database.from_settings(settings)
    body = validate_body(
        ExecutionCreate, {"code": "print(1)", "wait": wait}, RequestBounds.from_settings(settings)
    )

    def unfinished() -> list[str]:
        with database.session() as session:
            rows = session.scalars(select(Execution)).all()
        return [str(row.status) for row in rows if row.status not in TERMINAL_STATUSES]

    async def scenario() -> int:
        service = ExecutionService(
            settings, database, build_rate_limiter(settings), AnsweringExecutor()
        )
        with database.session() as session:
            key = keys.create_key(session, settings.api_key_secret, "leaver").row
        answered = 0
        for turns in range(TURNS):
            request = asyncio.ensure_future(service.create(key, body))
            for _ in range(turns):
                await asyncio.sleep(0)
            request.cancel()
            try:
                await request
                answered += 1
            except asyncio.CancelledError:
                pass
        await eventually_async(
            lambda: not unfinished(), 10, "every stored execution finished", interval_s=0.1
        )
        await service.aclose(5.0)
        return answered

    try:
        answered = asyncio.run(scenario())
        with database.session() as session:
            stored = session.scalars(select(Execution)).all()
        # Some requests were cancelled before storing anything, some after their answer.
        assert stored and answered < TURNS
        assert all(row.status in TERMINAL_STATUSES for row in stored)
    finally:
        database.dispose()
