"""Batches against real databases: SQLite (a temporary file) and PostgreSQL (127.0.0.1:5432).

The databases are made as in ``tests/test_db.py``: one migrated database per backend for the
session (PostgreSQL in a schema of its own, from ``tests/support/databases.py``), emptied after
each test.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from executors import TERMINAL_STATUSES, Artifact, ExecutionRecord, ExecutionRequest
from serve_app.db import Database, batches, executions, keys
from serve_app.db.batches import BatchView
from serve_app.db.models import Batch, BatchStatus, Execution
from serve_app.errors import ConflictError, InvalidRequestError
from tests.support.limits import SMALL_LIMITS

SECRET = SecretStr("test-api-key-secret-0123456789abcdef")
LIMITS = SMALL_LIMITS
CASES = [{"stdin": "1\n", "expected_stdout": "2"}, {"stdin": "5\n", "expected_stdout": "6"}]


# --- databases


@pytest.fixture
def key_id(database: Database) -> int:
    return new_key(database, "alice")


# --- helpers


def new_key(database: Database, name: str) -> int:
    with database.session() as session:
        return keys.create_key(session, SECRET, name).row.id


def item(number: int, **judging: Any) -> ExecutionRequest:
    return ExecutionRequest(
        code=f"print({number})",
        stdin=f"in {number}",
        files={"n.txt": str(number), "n.bin": bytes([number % 256, 0xFF])},
        runtime="minimal",
        limits=LIMITS,
        **judging,
    )


def insert(database: Database, key_id: int, count: int = 3) -> batches.NewBatch:
    with database.session() as session:
        return batches.insert_batch(session, key_id, [item(n) for n in range(count)], "req-1")


def view(database: Database, key_id: int, batch_id: uuid.UUID) -> BatchView:
    with database.session() as session:
        found = batches.get_batch(session, key_id, batch_id)
    assert found is not None
    return found


def start(database: Database, execution_id: uuid.UUID) -> None:
    with database.session() as session:
        assert executions.start_execution(session, execution_id)


def result(status: str = "ok") -> ExecutionRecord:
    return ExecutionRecord.model_validate(
        {"status": status, "exit_code": 0 if status == "ok" else None, "limits": {}}
    )


def finish(database: Database, execution_id: uuid.UUID, status: str = "ok") -> None:
    with database.session() as session:
        executions.finish_execution(session, execution_id, result(status))


def refresh(database: Database, batch_id: uuid.UUID) -> BatchStatus | None:
    with database.session() as session:
        return batches.refresh_batch_status(session, batch_id)


def stored(database: Database, batch_id: uuid.UUID) -> Batch:
    with database.session() as session:
        row = session.get(Batch, batch_id)
    assert row is not None
    return row


# --- inserting and reading


def test_a_batch_is_inserted_queued_with_its_items_in_request_order(
    database: Database, key_id: int
) -> None:
    items = [item(0), item(1, test_code="assert True"), item(2, cases=CASES)]
    with database.session() as session:
        new = batches.insert_batch(session, key_id, items, "req-7", owner="instance-1")
    assert (new.batch.total, new.batch.status, new.batch.key_id) == (3, BatchStatus.QUEUED, key_id)
    assert new.batch.finished_at is None and len(set(new.item_ids)) == 3

    got = view(database, key_id, new.batch.id)
    assert (got.id, got.total, got.done, got.status) == (new.batch.id, 3, 0, BatchStatus.QUEUED)
    assert [row.id for row in got.items] == new.item_ids
    assert [row.position for row in got.items] == [0, 1, 2]
    assert [row.code for row in got.items] == ["print(0)", "print(1)", "print(2)"]
    assert [(row.stdin, row.files) for row in got.items][2] == (
        "in 2",
        {"n.txt": "2", "n.bin": {"base64": "Av8="}},  # bytes in their API form
    )
    assert [row.test_code for row in got.items] == [None, "assert True", None]
    assert [row.cases for row in got.items] == [None, None, CASES]
    for row in got.items:
        assert (row.key_id, row.batch_id, row.request_id, row.owner) == (
            key_id,
            new.batch.id,
            "req-7",
            "instance-1",
        )
        assert row.status == "queued" and row.started_at is None
        assert row.created_at == new.batch.created_at
        assert row.idempotency_key is None and row.cached is False
        assert executions.to_record(row).limits == LIMITS.to_api()


def test_items_are_ordinary_executions_of_the_key(database: Database, key_id: int) -> None:
    new = insert(database, key_id)
    with database.session() as session:
        first = executions.get_execution(session, key_id, new.item_ids[0])
        page = executions.list_executions(session, key_id, limit=10)
    assert first is not None and first.position == 0
    assert {row.id for row in page.items} == set(new.item_ids)


def test_order_is_by_position_not_by_insertion_or_id(database: Database, key_id: int) -> None:
    # 50 random UUIDs sort in another order than the request: only position orders items.
    new = insert(database, key_id, count=50)
    assert sorted(new.item_ids) != new.item_ids
    got = view(database, key_id, new.batch.id)
    assert [row.id for row in got.items] == new.item_ids
    assert [row.code for row in got.items] == [f"print({n})" for n in range(50)]


def test_another_keys_batch_is_invisible(database: Database, key_id: int) -> None:
    other = new_key(database, "bob")
    new = insert(database, key_id)
    with database.session() as session:
        assert batches.get_batch(session, other, new.batch.id) is None
        assert batches.batch_progress(session, other, new.batch.id) is None
        assert batches.get_batch(session, key_id, uuid.uuid4()) is None
        assert batches.batch_progress(session, key_id, uuid.uuid4()) is None
        assert executions.get_execution(session, other, new.item_ids[0]) is None


def test_an_empty_batch_or_an_unknown_key_is_refused(database: Database, key_id: int) -> None:
    with database.session() as session, pytest.raises(InvalidRequestError, match="at least one"):
        batches.insert_batch(session, key_id, [])
    with database.session() as session, pytest.raises(ConflictError, match="key"):
        batches.insert_batch(session, key_id + 1000, [item(0)])
    with database.session() as session:
        assert session.scalar(select(Batch)) is None
        assert session.scalar(select(Execution)) is None


# --- progress and status


def test_status_follows_the_items_queued_running_done(database: Database, key_id: int) -> None:
    new = insert(database, key_id)
    first, second, third = new.item_ids

    def check(done: int, status: BatchStatus) -> None:
        got = view(database, key_id, new.batch.id)
        assert (got.done, got.status) == (done, status)
        with database.session() as session:
            progress = batches.batch_progress(session, key_id, new.batch.id)
        assert progress is not None
        assert (progress.total, progress.done, progress.started, progress.status) == (
            got.total,
            got.done,
            got.started,
            got.status,
        )

    check(0, BatchStatus.QUEUED)
    assert refresh(database, new.batch.id) is None

    start(database, first)
    check(0, BatchStatus.RUNNING)
    assert stored(database, new.batch.id).status == BatchStatus.QUEUED  # until refreshed
    assert refresh(database, new.batch.id) == BatchStatus.RUNNING
    assert refresh(database, new.batch.id) is None
    assert stored(database, new.batch.id).status == BatchStatus.RUNNING

    finish(database, first)
    finish(database, second, "timeout")  # finished without being started first
    check(2, BatchStatus.RUNNING)
    assert refresh(database, new.batch.id) is None
    assert stored(database, new.batch.id).finished_at is None

    finish(database, third, "internal_error")
    check(3, BatchStatus.DONE)
    assert refresh(database, new.batch.id) == BatchStatus.DONE
    assert refresh(database, new.batch.id) is None
    row = stored(database, new.batch.id)
    assert row.status == BatchStatus.DONE and row.finished_at is not None
    assert row.finished_at >= row.created_at


def test_a_chunk_is_started_and_finished_in_one_transaction_each(
    database: Database, key_id: int
) -> None:
    """Issue 12: a batch's chunk is marked running by one statement and its records stored in
    one transaction; conditional as one at a time: an item not queued is not started again,
    a finished one keeps its first record, an unknown id is skipped."""
    new = insert(database, key_id, 4)
    first, second, third, fourth = new.item_ids
    start(database, third)
    with database.session() as session:
        started = executions.start_executions(session, [first, second, third])
    assert started == {first, second}
    finish(database, second, "timeout")
    unknown = uuid.uuid4()
    artifact = Artifact(
        path="out/one.txt", size_bytes=4, media_type="text/plain", base64="b25lCg=="
    )
    records = [
        (
            first,
            result().model_copy(
                update={
                    "stdout": "one\n",
                    "wall_time_s": 0.25,
                    "artifacts": [artifact],
                    "artifacts_truncated": True,
                }
            ),
        ),
        (second, result()),
        (third, result("nonzero_exit")),
        (unknown, result()),
    ]
    with database.session() as session:
        written = executions.finish_executions(session, records)
    assert written == [first, third]
    got = {row.id: row for row in view(database, key_id, new.batch.id).items}
    assert (str(got[first].status), got[first].stdout, got[first].wall_time_s) == (
        "ok",
        "one\n",
        0.25,
    )
    record = executions.to_record(got[first])
    assert (record.artifacts, record.artifacts_truncated) == ([artifact], True)
    assert record.runtime == "minimal"
    assert executions.to_request(got[first]).files == item(0).files  # binary files too
    assert str(got[second].status) == "timeout"  # the first terminal write stays
    assert str(got[third].status) == "nonzero_exit"
    assert str(got[fourth].status) == "queued"
    assert all(got[done].finished_at is not None for done in (first, second, third))
    assert got[first].started_at is not None  # kept from the start
    with database.session() as session:
        assert executions.start_executions(session, [first, fourth]) == {fourth}
    with pytest.raises(ValueError, match="terminal"), database.session() as session:
        executions.finish_executions(session, [(fourth, result("running"))])


def test_a_batch_finished_before_any_refresh_goes_straight_to_done(
    database: Database, key_id: int
) -> None:
    new = insert(database, key_id, count=2)
    for execution_id in new.item_ids:
        finish(database, execution_id)
    assert refresh(database, new.batch.id) == BatchStatus.DONE
    assert refresh(database, uuid.uuid4()) is None  # no such batch: nothing to do


def test_unfinished_items_are_the_rest_in_order(database: Database, key_id: int) -> None:
    new = insert(database, key_id, count=5)
    start(database, new.item_ids[3])
    finish(database, new.item_ids[0])
    finish(database, new.item_ids[2])
    with database.session() as session:
        rest = batches.unfinished_items(session, new.batch.id)
    assert [row.position for row in rest] == [1, 3, 4]
    assert [row.status for row in rest] == ["queued", "running", "queued"]
    for execution_id in new.item_ids:
        with contextlib.suppress(ConflictError):
            finish(database, execution_id)
    with database.session() as session:
        assert batches.unfinished_items(session, new.batch.id) == []


def test_derive_status() -> None:
    assert batches.derive_status(3, 0, 0) == BatchStatus.QUEUED
    assert batches.derive_status(3, 0, 1) == BatchStatus.RUNNING
    assert batches.derive_status(3, 1, 1) == BatchStatus.RUNNING
    assert batches.derive_status(3, 3, 3) == BatchStatus.DONE


def test_last_items_finished_in_open_transactions_still_end_the_batch(
    database: Database, key_id: int, migrated_url: str
) -> None:
    """Each worker finishes its item and refreshes in one transaction. On PostgreSQL both
    finish before either refreshes (each sees the other's item still running); the batch lock
    makes the second wait for the first commit and count again. SQLite serializes writers."""
    new = insert(database, key_id, count=2)
    together = threading.Barrier(2) if migrated_url.startswith("postgresql") else None

    def worker(execution_id: uuid.UUID) -> BatchStatus | None:
        with database.session() as session:
            executions.finish_execution(session, execution_id, result())
            if together is not None:
                together.wait(timeout=10)
            return batches.refresh_batch_status(session, new.batch.id)

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(worker, new.item_ids))
    assert outcomes.count(BatchStatus.DONE) == 1
    assert stored(database, new.batch.id).status == BatchStatus.DONE


def test_racing_workers_end_the_batch_exactly_once(database: Database, key_id: int) -> None:
    new = insert(database, key_id, count=8)

    def worker(execution_id: uuid.UUID) -> BatchStatus | None:
        start(database, execution_id)
        finish(database, execution_id)
        return refresh(database, new.batch.id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(worker, new.item_ids))
    assert outcomes.count(BatchStatus.DONE) == 1
    assert outcomes.count(BatchStatus.RUNNING) <= 1
    got = view(database, key_id, new.batch.id)
    assert (got.done, got.status) == (8, BatchStatus.DONE)


# --- size


def test_a_thousand_items(database: Database, key_id: int) -> None:
    items = [item(n, cases=CASES if n % 2 else None) for n in range(1000)]
    started = time.perf_counter()
    with database.session() as session:
        new = batches.insert_batch(session, key_id, items)
    insert_s = time.perf_counter() - started
    got = view(database, key_id, new.batch.id)
    assert got.total == len(got.items) == 1000
    assert [row.position for row in got.items] == list(range(1000))
    assert [row.id for row in got.items] == new.item_ids
    assert got.items[999].code == "print(999)" and got.items[999].cases == CASES
    assert (got.done, got.status) == (0, BatchStatus.QUEUED)
    for execution_id in new.item_ids[:10]:
        finish(database, execution_id)
    with database.session() as session:
        progress = batches.batch_progress(session, key_id, new.batch.id)
        assert len(batches.unfinished_items(session, new.batch.id)) == 990
    assert progress is not None and (progress.done, progress.status) == (10, "running")
    assert all(row.status not in TERMINAL_STATUSES for row in got.items)
    # Timing goals belong in scripts/bench, not in assertions; the figure is for the report.
    print(f"inserted a batch of 1000 items in {insert_s * 1000:.0f} ms")
