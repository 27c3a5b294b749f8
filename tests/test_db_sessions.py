"""Sessions against real databases: SQLite (a temporary file) and PostgreSQL (127.0.0.1:5432).

The databases are made as in ``tests/test_db.py``: one migrated database per backend for the
session, emptied after each test. What is checked: the per-key cap holds under racing
reservations, pages are newest first, ending is idempotent and counted once, and a session's
calls are stored as executions with ``session_id`` and ``result``.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from executors import EndReason, ExecutionRecord, ExecutionRequest, SessionStatus
from serve_app.db import Database, executions, keys, sessions
from serve_app.db.models import LiveSession
from serve_app.errors import InvalidRequestError
from tests.support.limits import SMALL_LIMITS

SECRET = SecretStr("test-api-key-secret-0123456789abcdef")


@pytest.fixture
def key_id(database: Database) -> int:
    return new_key(database, "alice")


def new_key(database: Database, name: str) -> int:
    with database.session() as session:
        return keys.create_key(session, SECRET, name).row.id


def asked(ttl_s: float = 3600.0) -> sessions.NewSession:
    return sessions.NewSession(
        id=uuid.uuid4(),
        runtime="minimal",
        limits=SMALL_LIMITS,
        idle_timeout_s=600.0,
        ttl_s=ttl_s,
        request_id="req-1",
    )


def reserve(database: Database, key_id: int, cap: int = 8) -> LiveSession | None:
    with database.session() as session:
        return sessions.reserve(session, key_id, asked(), cap)


def placed(row: LiveSession, host: str = "SessionHost-0") -> sessions.Placed:
    return sessions.Placed(
        host=host,
        node_id="node-1",
        created_at=row.created_at,
        last_used_at=row.created_at,
        expires_at=row.expires_at,
    )


def place(database: Database, row: LiveSession, host: str = "SessionHost-0") -> LiveSession:
    with database.session() as session:
        stored = sessions.record_placement(session, row.id, placed(row, host))
    assert stored is not None
    return stored


def end(database: Database, session_id: uuid.UUID, reason: EndReason) -> bool:
    with database.session() as session:
        return sessions.end_session(
            session, session_id, sessions.Ended(reason, datetime.now(UTC), f"ended: {reason}")
        )


def get(database: Database, key_id: int, session_id: uuid.UUID) -> LiveSession | None:
    with database.session() as session:
        return sessions.get_session(session, key_id, session_id)


# --- reserving under the cap


def test_a_reservation_is_active_unplaced_and_reads_back_in_api_units(
    database: Database, key_id: int
) -> None:
    row = reserve(database, key_id)
    assert row is not None
    assert (row.status, row.host, row.calls, row.request_id) == (
        SessionStatus.ACTIVE,
        None,
        0,
        "req-1",
    )
    assert row.expires_at - row.created_at == timedelta(hours=1)
    info = sessions.to_info(row)
    assert info.limits == SMALL_LIMITS.to_api()
    assert info.limits["memory_mb"] == 64
    assert (info.status, info.terminated_reason, info.message) == ("active", None, None)
    answer = info.to_api()
    assert set(answer) >= {
        "id",
        "status",
        "runtime",
        "limits",
        "idle_timeout_s",
        "created_at",
        "last_used_at",
        "expires_at",
        "terminated_reason",
    }
    assert answer["created_at"].endswith("Z")


def test_the_cap_refuses_past_max_active_and_ended_ones_do_not_count(
    database: Database, key_id: int
) -> None:
    rows = [reserve(database, key_id, cap=2) for _ in range(2)]
    assert all(row is not None for row in rows)
    assert reserve(database, key_id, cap=2) is None
    other = new_key(database, "bob")
    assert reserve(database, other, cap=2) is not None  # a cap per key
    first = rows[0]
    assert first is not None
    assert end(database, first.id, EndReason.DELETED)
    assert reserve(database, key_id, cap=2) is not None


def test_racing_reservations_never_exceed_the_cap(database: Database, key_id: int) -> None:
    cap, racers = 3, 12
    barrier = threading.Barrier(racers)

    def race(_: int) -> bool:
        barrier.wait()
        with database.session() as session:
            return sessions.reserve(session, key_id, asked(), cap) is not None

    with ThreadPoolExecutor(racers) as pool:
        won = list(pool.map(race, range(racers)))
    assert won.count(True) == cap
    with database.session() as session:
        assert len(sessions.active_sessions(session, key_id=key_id, placed_before=_future())) == cap


def test_an_unplaced_reservation_can_be_forgotten_a_placed_one_not(
    database: Database, key_id: int
) -> None:
    unplaced, kept = reserve(database, key_id), reserve(database, key_id)
    assert unplaced is not None and kept is not None
    place(database, kept)
    with database.session() as session:
        sessions.forget_unplaced(session, unplaced.id)
        sessions.forget_unplaced(session, kept.id)
    assert get(database, key_id, unplaced.id) is None
    assert get(database, key_id, kept.id) is not None


# --- placement, calls, ending


def test_placement_and_calls_are_recorded(database: Database, key_id: int) -> None:
    row = reserve(database, key_id)
    assert row is not None
    stored = place(database, row, "SessionHost-3")
    assert (stored.host, stored.node_id) == ("SessionHost-3", "node-1")
    later = stored.last_used_at + timedelta(seconds=5)
    with database.session() as session:
        sessions.touch(session, row.id, last_used_at=later, calls=2)
        # A late writer with an older state moves nothing back.
        sessions.touch(session, row.id, last_used_at=stored.last_used_at, calls=1)
    got = get(database, key_id, row.id)
    assert got is not None and (got.last_used_at, got.calls) == (later, 2)


def test_ending_is_idempotent_and_the_first_reason_stays(database: Database, key_id: int) -> None:
    row = reserve(database, key_id)
    assert row is not None
    place(database, row)
    assert end(database, row.id, EndReason.IDLE)
    assert not end(database, row.id, EndReason.DELETED)
    got = get(database, key_id, row.id)
    assert got is not None
    assert (got.status, got.terminated_reason, got.message) == (
        SessionStatus.TERMINATED,
        EndReason.IDLE,
        "ended: idle",
    )
    assert got.terminated_at is not None
    with database.session() as session:  # an ended session takes no placement either
        assert sessions.record_placement(session, row.id, placed(row)) is None
    assert sessions.to_info(got).terminated_reason == "idle"


def test_racing_enders_flip_the_row_once(database: Database, key_id: int) -> None:
    row = reserve(database, key_id)
    assert row is not None
    reasons = [EndReason.DELETED, EndReason.IDLE, EndReason.LOST, EndReason.SHUTDOWN] * 2
    barrier = threading.Barrier(len(reasons))

    def race(reason: EndReason) -> bool:
        barrier.wait()
        return end(database, row.id, reason)

    with ThreadPoolExecutor(len(reasons)) as pool:
        flipped = list(pool.map(race, reasons))
    assert flipped.count(True) == 1


def test_many_are_ended_at_once_and_only_active_ones_count(database: Database, key_id: int) -> None:
    rows = [reserve(database, key_id) for _ in range(3)]
    ids = [row.id for row in rows if row is not None]
    assert end(database, ids[0], EndReason.DELETED)
    now = datetime.now(UTC)
    with database.session() as session:
        flipped = sessions.end_sessions(
            session, [(session_id, sessions.Ended(EndReason.SHUTDOWN, now)) for session_id in ids]
        )
    assert flipped == [(ids[1], EndReason.SHUTDOWN), (ids[2], EndReason.SHUTDOWN)]


def test_the_sweeper_sees_placed_active_sessions_and_stale_reservations(
    database: Database, key_id: int
) -> None:
    placed_row, pending, ended = (reserve(database, key_id) for _ in range(3))
    assert placed_row is not None and pending is not None and ended is not None
    place(database, placed_row)
    place(database, ended)
    end(database, ended.id, EndReason.IDLE)
    with database.session() as session:
        now = sessions.active_sessions(session)
        stale = sessions.active_sessions(session, placed_before=_future())
    assert [row.id for row in now] == [placed_row.id]
    assert {row.id for row in stale} == {placed_row.id, pending.id}


# --- reading


def test_another_keys_session_is_invisible(database: Database, key_id: int) -> None:
    row = reserve(database, key_id)
    assert row is not None
    other = new_key(database, "bob")
    assert get(database, other, row.id) is None
    assert get(database, key_id, uuid.uuid4()) is None
    with database.session() as session:
        assert sessions.list_sessions(session, other, limit=10).items == []


def test_pages_are_newest_first_and_complete(database: Database, key_id: int) -> None:
    ids = []
    for _ in range(5):
        row = reserve(database, key_id, cap=10)
        assert row is not None
        ids.append(row.id)
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        with database.session() as session:
            page = sessions.list_sessions(session, key_id, limit=2, cursor=cursor)
        seen += [row.id for row in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    with database.session() as session, pytest.raises(InvalidRequestError):
        sessions.list_sessions(session, key_id, limit=0)
    with database.session() as session, pytest.raises(InvalidRequestError, match="cursor"):
        sessions.list_sessions(session, key_id, limit=2, cursor="not-a-cursor")


# --- calls stored as executions


def test_a_call_is_stored_with_its_session_and_result(database: Database, key_id: int) -> None:
    row = reserve(database, key_id)
    assert row is not None
    request = ExecutionRequest(code="x + 1", runtime="minimal", limits=SMALL_LIMITS)
    with database.session() as session:
        inserted = executions.insert_execution(
            session, key_id, request, running=True, owner="i-1", session_id=row.id
        )
    record = ExecutionRecord.model_validate(
        {"status": "ok", "exit_code": 0, "limits": {}, "session_id": row.id, "result": "2"}
    )
    with database.session() as session:
        answered = executions.finish_inserted_execution(session, inserted, record)
    with database.session() as session:
        stored = executions.get_execution(session, key_id, inserted.id)
        assert stored is not None
        read = executions.to_record(stored)
    assert (read.session_id, read.result, read.status) == (row.id, "2", "ok")
    assert answered.model_dump() == read.model_dump()
    with database.session() as session:
        plain = executions.insert_execution(session, key_id, request, running=True)
        finished = executions.finish_execution(
            session, plain.id, ExecutionRecord(status="ok", limits={})
        )
        assert (finished.session_id, finished.result) == (None, None)


def _future() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)
