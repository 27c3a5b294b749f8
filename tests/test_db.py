"""The persistence layer against real databases: SQLite (a temporary file) and PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (user postgres, database test). Each use gets a schema
of its own (``exec_agent_test_<random>``, selected through ``search_path``), dropped afterwards,
so runs never collide; the PostgreSQL half is skipped, saying why, only if the server is down.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import Column, Integer, MetaData, select, text, update
from sqlalchemy.exc import StatementError

from executors import CaseSpec, ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.db import Database, executions, instances, keys, migrate
from serve_app.db.engine import POOL_SIZE, create_engine, normalize_url
from serve_app.db.executions import Idempotency
from serve_app.db.models import ApiKey, AuditEvent, Base, Execution, ServiceInstance
from serve_app.db.types import CleanJSON, CleanText, clean_json, clean_text
from serve_app.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseNotReadyError,
    DatabaseUnavailableError,
    InvalidRequestError,
    NotFoundError,
)
from serve_app.settings import Settings
from tests.support.databases import DATABASE_BACKENDS, empty_database
from tests.support.limits import MIB, SMALL_LIMITS

SECRET = SecretStr("test-api-key-secret-0123456789abcdef")
LIMITS = SMALL_LIMITS
BACKENDS = DATABASE_BACKENDS
FILES: dict[str, str | bytes] = {"a.txt": "A", "blob.bin": b"\x00\xff\x80"}
ARTIFACTS = [
    {"path": "out/a.csv", "size_bytes": 4, "media_type": "text/csv", "base64": "YSxiCg=="},
    {"path": "out/é.png", "size_bytes": 3, "media_type": "image/png", "base64": "AP+A"},
]


# --- databases


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with empty_database(request.param, tmp_path) as url:
        yield url


# --- helpers


def new_key(
    database: Database,
    name: str = "alice",
    rate_limit_per_minute: int | None = None,
    max_concurrency: int | None = None,
) -> keys.NewKey:
    with database.session() as session:
        return keys.create_key(
            session,
            SECRET,
            name,
            rate_limit_per_minute=rate_limit_per_minute,
            max_concurrency=max_concurrency,
        )


def authenticate(database: Database, presented: str, secret: SecretStr = SECRET) -> ApiKey | None:
    with database.session() as session:
        return keys.authenticate(session, presented, secret)


def insert(
    database: Database,
    key_id: int,
    code: str = "print(1)",
    *,
    judging: dict[str, Any] | None = None,
    **options: object,
) -> Execution:
    """Insert an execution; ``judging`` (``test_code``, ``cases``) goes in unvalidated, so that
    dirty text reaches the column types."""
    with database.session() as session:
        request = ExecutionRequest.model_construct(
            code=code,
            stdin="in",
            files=FILES,
            runtime="minimal",
            limits=LIMITS,
            **(judging or {}),
        )
        return executions.insert_execution(session, key_id, request, **options)  # type: ignore[arg-type]


def finish(database: Database, execution_id: uuid.UUID, **fields: object) -> Execution:
    record = ExecutionRecord.model_validate(
        {"status": "ok", "exit_code": 0, "stdout": "1\n", "limits": {}, **fields}
    )
    with database.session() as session:
        return executions.finish_execution(session, execution_id, record)


def set_created_at(database: Database, execution_id: uuid.UUID, moment: datetime) -> None:
    with database.session() as session:
        session.execute(
            update(Execution).where(Execution.id == execution_id).values(created_at=moment)
        )


# --- migrations and engines


def test_migrations_create_exactly_the_models(empty_url: str) -> None:
    settings = Settings(database_url=empty_url)
    database = Database.from_url(empty_url)
    try:
        with pytest.raises(DatabaseNotReadyError, match="exec-agent db upgrade"):
            migrate.check_schema(database.engine)
        migrate.upgrade(settings)
        migrate.upgrade(settings)  # a current database is left as it is
        migrate.check_schema(database.engine)
        assert migrate.current_revision(database.engine) == migrate.head_revision()
        with database.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []

        command.downgrade(migrate.alembic_config(settings), "base")
        tables = sqlalchemy.inspect(database.engine).get_table_names()
        assert set(tables) <= {"alembic_version"}
    finally:
        database.dispose()


def test_executions_stored_before_runtimes_read_as_records(empty_url: str) -> None:
    """Rows of revision 0003 (no runtime, no artifacts) read as records and requests after
    0004: no runtime (the engine's default), no artifacts, none left out."""
    settings = Settings(database_url=empty_url)
    command.upgrade(migrate.alembic_config(settings), "0003")
    database = Database.from_url(empty_url)
    try:
        key = new_key(database)
        old = {
            "id": uuid.uuid4(),
            "key_id": key.row.id,
            "code": "print(1)",
            "stdin": "",
            "files": {"a.txt": "A"},
            "limits": LIMITS.model_dump(),
            "status": "ok",
            "exit_code": 0,
            "stdout": "1\n",
            "stderr": "",
            "stdout_truncated": False,
            "stderr_truncated": False,
            "cached": False,
            "created_at": datetime.now(UTC),
            "finished_at": datetime.now(UTC),
        }
        # Only the columns revision 0003 has (the model's would add artifacts_truncated).
        columns = Execution.__table__.c
        table = sqlalchemy.Table(
            "executions", MetaData(), *(Column(name, columns[name].type) for name in old)
        )
        with database.engine.begin() as connection:
            connection.execute(sqlalchemy.insert(table).values(old))
        migrate.upgrade(settings)
        with database.session() as session:
            row = executions.get_execution(session, key.row.id, old["id"])
            assert row is not None
            record, request = executions.to_record(row), executions.to_request(row)
        assert (record.runtime, record.artifacts, record.artifacts_truncated) == (None, [], False)
        assert (request.runtime, request.files) == (None, {"a.txt": "A"})
    finally:
        database.dispose()


def test_schema_comparison_sees_a_difference(database: Database) -> None:
    # The comparison above proves something only if it notices what differs.
    altered = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(altered)
    altered.tables["api_keys"].append_column(Column("extra", Integer))
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, altered) != []


def test_check_schema_refuses_an_unknown_revision(database: Database) -> None:
    set_version = text("UPDATE alembic_version SET version_num = :revision")
    with database.engine.begin() as connection:
        connection.execute(set_version, {"revision": "future"})
    try:
        with pytest.raises(DatabaseNotReadyError, match="unknown to this version"):
            migrate.check_schema(database.engine)
    finally:
        with database.engine.begin() as connection:
            connection.execute(set_version, {"revision": migrate.head_revision()})


def test_sqlite_engine_is_configured(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 5000
        assert path.exists()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u:p@db:5432/x", "postgresql+psycopg"),
        ("postgres://u@db/x", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/x", "postgresql+psycopg"),
        ("sqlite:///./data/exec_agent.db", "sqlite"),
    ],
)
def test_urls_pick_psycopg_3(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


@pytest.mark.parametrize("url", ["nonsense", "mysql://u:pw@db/x", "foo://u:pw@db/x"])
def test_other_urls_are_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as caught:
        create_engine(url)
    assert "pw" not in str(caught.value)


def test_postgres_engine_has_a_sized_pool() -> None:
    engine = create_engine("postgresql://u@127.0.0.1:1/x")  # never connected
    assert engine.dialect.driver == "psycopg"
    assert engine.pool.size() == POOL_SIZE  # type: ignore[attr-defined]
    assert engine.pool._pre_ping
    engine.dispose()


def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(ConflictError):
        insert(database, key_id=424242)


def test_times_are_aware_utc(database: Database) -> None:
    key = new_key(database)
    with database.session() as session:
        stored = session.get(ApiKey, key.row.id)
        assert stored is not None
        session.expire(stored)
        assert stored.created_at.tzinfo is UTC
    with pytest.raises(StatementError, match="naive datetime"), database.session() as session:
        session.execute(update(ApiKey).values(revoked_at=datetime(2024, 1, 1)))


# --- API keys


def test_key_is_created_and_authenticates(database: Database) -> None:
    new = new_key(database, "alice", rate_limit_per_minute=30, max_concurrency=2)
    assert new.plaintext.startswith("ea_") and len(new.plaintext) == keys.KEY_CHARS
    found = authenticate(database, new.plaintext)
    assert found is not None
    assert (found.name, found.rate_limit_per_minute, found.max_concurrency) == ("alice", 30, 2)
    assert authenticate(database, new.plaintext, SecretStr("another secret")) is None


def test_revoked_key_is_refused_at_once(database: Database) -> None:
    new = new_key(database)
    with database.session() as session:
        revoked = keys.revoke_key(session, "alice")
    assert revoked.revoked_at is not None
    assert authenticate(database, new.plaintext) is None
    with database.session() as session:  # again: nothing changes, no error
        assert keys.revoke_key(session, "alice").revoked_at == revoked.revoked_at
    with pytest.raises(NotFoundError), database.session() as session:
        keys.revoke_key(session, "nobody")


def _near_misses(key: str) -> dict[str, str]:
    flip = {"a": "b", "b": "a", "0": "1", "1": "0", "-": "_", "_": "-"}

    def changed(index: int) -> str:
        char = key[index]
        return key[:index] + flip.get(char, "a" if char != "a" else "b") + key[index + 1 :]

    return {
        "last character": changed(-1),
        "first secret character": changed(16),
        "lookup id": changed(5),
        "prefix": "eb" + key[2:],
        "upper case": key.upper(),
        "truncated": key[:-1],
        "only the lookup part": key[:15],
        "only the prefix": "ea_",
        "empty": "",
        "trailing space": key + " ",
        "trailing newline": key + "\n",
        "trailing CRLF": key + "\r\n",
        "leading space": " " + key,
        "a character more": key + "A",
        "very long": key + "A" * 1_000_000,
        "NUL inside": key[:20] + "\x00" + key[21:],
        "lone surrogate": key[:20] + "\udcff" + key[21:],
        "non-ASCII": key[:20] + "é" + key[21:],
    }


def test_near_miss_keys_are_refused(database: Database) -> None:
    key = new_key(database).plaintext
    other = new_key(database, "bob").plaintext
    misses = _near_misses(key)
    misses["another key's secret"] = key[:16] + other[16:]
    for what, presented in misses.items():
        assert presented != key, what
        assert authenticate(database, presented) is None, what
    assert authenticate(database, key) is not None


def test_keys_are_stored_only_as_hmacs(database: Database) -> None:
    new = new_key(database)
    with database.session() as session:
        keys.revoke_key(session, "alice")
    secret_part = new.plaintext[16:]
    with database.engine.connect() as connection:
        for table in (ApiKey.__table__, AuditEvent.__table__):
            dump = repr(connection.execute(select(table)).all())
            assert new.plaintext not in dump and secret_part not in dump
        stored = connection.exec_driver_sql("SELECT key_hash FROM api_keys").scalar_one()
    assert stored == keys.hash_key(new.plaintext, SECRET)


def test_key_names_are_unique_and_plain(database: Database) -> None:
    new_key(database, "ci.runner@team-1_a")
    with pytest.raises(ConflictError, match="exists"):
        new_key(database, "ci.runner@team-1_a")
    for name in ("", " alice", "a b", "alice\n", "é", "-dash", "x" * 65):
        with pytest.raises(InvalidRequestError):
            new_key(database, name)
    with pytest.raises(InvalidRequestError):
        new_key(database, "zero", rate_limit_per_minute=0)
    with database.session() as session:
        assert [key.name for key in keys.list_keys(session)] == ["ci.runner@team-1_a"]


def test_key_changes_are_audited(database: Database) -> None:
    new_key(database)
    with database.session() as session:
        keys.revoke_key(session, "alice", source_address="cli")
        keys.revoke_key(session, "alice")  # already revoked: no second event
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(event.kind, event.key_name) for event in events] == [
        ("key_created", "alice"),
        ("key_revoked", "alice"),
    ]
    assert events[1].source_address == "cli"


# --- executions


def test_execution_is_inserted_queued_and_finished_once(database: Database) -> None:
    key = new_key(database).row
    execution = insert(database, key.id, request_id="req-1")
    record = executions.to_record(execution)
    assert record.status == ExecutionStatus.QUEUED and record.finished_at is None
    assert record.limits == LIMITS.to_api()

    with database.session() as session:
        assert executions.start_execution(session, execution.id)
        assert not executions.start_execution(session, execution.id)
    done = finish(database, execution.id, wall_time_s=0.01, peak_memory_bytes=5 * MIB)
    with pytest.raises(ConflictError, match="finished already"):
        finish(database, execution.id, status="internal_error", stdout="second")
    with database.session() as session:
        stored = executions.get_execution(session, key.id, execution.id)
        assert stored is not None
        record = executions.to_record(stored)
    assert record.status == ExecutionStatus.OK and record.stdout == "1\n"
    assert record.peak_memory_bytes == 5 * MIB and record.finished_at == done.finished_at
    assert record.started_at is not None and record.created_at <= record.started_at
    assert stored.code == "print(1)" and stored.request_id == "req-1"
    # Binary files are stored in their API form (JSON holds no bytes) and run as they came.
    assert stored.files == {"a.txt": "A", "blob.bin": {"base64": "AP+A"}}
    assert executions.to_request(stored).files == FILES
    assert executions.to_request(stored).runtime == record.runtime == "minimal"
    assert (record.artifacts, record.artifacts_truncated) == ([], False)


def test_an_execution_inserted_running_is_finished_without_reading_back(
    database: Database,
) -> None:
    key = new_key(database).row
    inserted = insert(database, key.id, running=True)
    assert inserted.status == ExecutionStatus.RUNNING
    assert inserted.started_at is not None and inserted.started_at == inserted.created_at
    with database.session() as session:
        assert not executions.start_execution(session, inserted.id)  # running already
    result = ExecutionRecord.model_validate(
        {
            "status": "ok",
            "exit_code": 0,
            "stdout": "1\x00\n",
            "stderr": "warned",
            "stdout_truncated": True,
            "limits": {},
            "wall_time_s": 0.5,
            "cpu_time_s": 0.25,
            "peak_memory_bytes": 1024,
            "passed": True,
            "runtime": "minimal",
            "artifacts": ARTIFACTS,
            "artifacts_truncated": True,
        }
    )
    assert set(executions._RESULT_COLUMNS) <= set(result.model_dump()) | {
        "case_results",
        "finished_at",
    }  # every result column is one of the record's fields: each is checked below
    with database.session() as session:
        answer = executions.finish_inserted_execution(session, inserted, result)
    assert (answer.stderr, answer.stdout_truncated, answer.passed) == ("warned", True, True)
    assert [artifact.model_dump() for artifact in answer.artifacts] == ARTIFACTS
    assert (answer.artifacts_truncated, answer.runtime) == (True, "minimal")
    with database.session() as session:
        stored = executions.get_execution(session, key.id, inserted.id)
        assert stored is not None
        assert answer == executions.to_record(stored)  # the answer is what is stored
    assert answer.stdout == "1\n" and answer.started_at == inserted.started_at
    with pytest.raises(ConflictError, match="finished already"), database.session() as session:
        executions.finish_inserted_execution(session, inserted, result)


def test_finishing_needs_a_known_execution_and_a_terminal_status(database: Database) -> None:
    key = new_key(database).row
    with pytest.raises(NotFoundError):
        finish(database, uuid.uuid4())
    execution = insert(database, key.id)
    with pytest.raises(ValueError, match="terminal"):
        finish(database, execution.id, status="running")


def test_racing_finishers_write_once(database: Database) -> None:
    execution = insert(database, new_key(database).row.id)
    racers = 6
    barrier = threading.Barrier(racers)
    outcomes: list[str] = []

    def race(index: int) -> None:
        barrier.wait()
        try:
            finish(database, execution.id, stdout=f"racer {index}")
            outcomes.append(f"won {index}")
        except ConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=race, args=(index,)) for index in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [outcome for outcome in outcomes if outcome.startswith("won")]
    assert len(outcomes) == racers and len(winners) == 1
    with database.session() as session:
        stored = session.get(Execution, execution.id)
        assert stored is not None and stored.stdout == f"racer {winners[0].split()[1]}"


def test_dirty_text_is_stored_clean(database: Database) -> None:
    key = new_key(database).row
    cases = [CaseSpec.model_construct(stdin="x\x00y", expected_stdout="\ud800!")]
    judging = {"test_code": "t\x00", "cases": cases}
    execution = insert(database, key.id, request_id="id\x00\udcff", judging=judging)
    undecodable = b"ok\xff\xfe".decode("utf-8", "surrogateescape")
    finish(database, execution.id, stdout="a\x00b\x00", stderr=undecodable + "\udfff\ud800")
    with database.session() as session:
        stored = session.get(Execution, execution.id, populate_existing=True)
        assert stored is not None
        assert stored.stdout == "ab"
        assert stored.stderr == "ok\ufffd\ufffd\ufffd\ufffd"
        assert stored.request_id == "id\ufffd" and stored.test_code == "t"
        assert stored.cases == [{"stdin": "xy", "expected_stdout": "\ufffd!"}]


def test_every_text_column_is_cleaned() -> None:
    # The one sanitising function reaches every column through its type; a plain Text would not.
    # (Enums are strings too, but only their members get in.)
    columns = [column for table in Base.metadata.tables.values() for column in table.columns]
    for column in columns:
        plain = isinstance(column.type, sqlalchemy.String | sqlalchemy.JSON)
        assert not plain or isinstance(column.type, sqlalchemy.Enum), column
    cleaned = [column for column in columns if isinstance(column.type, CleanText | CleanJSON)]
    assert len(cleaned) >= 20  # names, hashes, code, outputs, JSON request parts, ...


def test_clean_text() -> None:
    assert clean_text("plain é ✓") == "plain é ✓"
    assert clean_text(b"\xff\xfeok\x00") == "\ufffd\ufffdok"
    assert clean_text("a\x00\x00b\udc80") == "ab\ufffd"
    assert clean_text("") == ""
    assert clean_json({"bad\x00key": ["\ud800", 1, None]}) == {"badkey": ["\ufffd", 1, None]}


def test_another_keys_execution_is_invisible(database: Database) -> None:
    alice, bob = new_key(database, "alice").row, new_key(database, "bob").row
    idempotency = Idempotency(key="k1", fingerprint="f")
    execution = insert(database, alice.id, idempotency=idempotency)
    with database.session() as session:
        assert executions.get_execution(session, bob.id, execution.id) is None
        assert executions.get_execution(session, alice.id, execution.id) is not None
        assert executions.list_executions(session, bob.id, limit=10).items == []
        assert executions.find_by_idempotency_key(session, bob.id, idempotency) is None


@pytest.mark.parametrize("limit", [1, 4, 5, 100])
def test_cursor_pages_every_execution_once_newest_first(database: Database, limit: int) -> None:
    alice, bob = new_key(database, "alice").row, new_key(database, "bob").row
    base = datetime(2026, 1, 1, tzinfo=UTC)
    created: dict[uuid.UUID, datetime] = {}
    for index in range(20):
        execution = insert(database, alice.id)
        # Five moments, four executions each: ties must be ordered by id, not skipped.
        created[execution.id] = base + timedelta(microseconds=index // 4)
        set_created_at(database, execution.id, created[execution.id])
        insert(database, bob.id)
    expected = sorted(created, key=lambda id_: (created[id_], id_), reverse=True)

    seen: list[uuid.UUID] = []
    cursor: str | None = None
    for page_number in range(100):
        with database.session() as session:
            page = executions.list_executions(session, alice.id, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen += [execution.id for execution in page.items]
        if page_number == 0:
            insert(database, alice.id)  # newer than everything: must not shift later pages
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


def test_bad_cursors_and_limits_are_refused(database: Database) -> None:
    key = new_key(database).row
    good = "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHw" + "0" * 10
    for cursor in ("garbage!", "", "eHx5", "A" * 500, good):
        with pytest.raises(InvalidRequestError), database.session() as session:
            executions.list_executions(session, key.id, limit=5, cursor=cursor)
    for limit in (0, -1, executions.MAX_PAGE_ITEMS + 1):
        with pytest.raises(InvalidRequestError), database.session() as session:
            executions.list_executions(session, key.id, limit=limit)


def test_idempotency_key_returns_the_first_execution(database: Database) -> None:
    alice, bob = new_key(database, "alice").row, new_key(database, "bob").row
    body = {"code": "print(1)", "stdin": ""}
    fingerprint = executions.request_fingerprint(body)
    assert fingerprint == executions.request_fingerprint(dict(reversed(body.items())))
    assert fingerprint != executions.request_fingerprint({**body, "stdin": "x"})
    idempotency = Idempotency(key="retry-1", fingerprint=fingerprint)

    first = insert(database, alice.id, idempotency=idempotency)
    with database.session() as session:
        found = executions.find_by_idempotency_key(session, alice.id, idempotency)
        assert found is not None and found.id == first.id
    with pytest.raises(ConflictError, match="different request body"), database.session() as s:
        executions.find_by_idempotency_key(s, alice.id, Idempotency("retry-1", "other"))
    with pytest.raises(ConflictError):  # a racing second insert loses
        insert(database, alice.id, idempotency=idempotency)
    insert(database, bob.id, idempotency=idempotency)  # keys are scoped to their API key

    # After 24 h the promise ends: lookups miss, and a new execution takes the key over.
    set_created_at(database, first.id, datetime.now(UTC) - timedelta(hours=25))
    with database.session() as session:
        assert executions.find_by_idempotency_key(session, alice.id, idempotency) is None
    second = insert(database, alice.id, idempotency=idempotency)
    with database.session() as session:
        found = executions.find_by_idempotency_key(session, alice.id, idempotency)
        assert found is not None and found.id == second.id
        old = session.get(Execution, first.id, populate_existing=True)
        assert old is not None and old.idempotency_key is None


# --- service instances: takeover of what a dead instance left unfinished


def beat(database: Database, instance_id: str, moment: datetime) -> None:
    with database.session() as session:
        instances.heartbeat(session, instance_id, moment)


def orphans(database: Database, dead_before: datetime) -> list[instances.Orphan]:
    with database.session() as session:
        return instances.orphaned_executions(session, dead_before=dead_before, limit=100)


def test_executions_of_a_silent_instance_are_orphans(database: Database) -> None:
    key_id = new_key(database).row.id
    now = datetime.now(UTC)
    beat(database, "dead", now - timedelta(minutes=5))
    beat(database, "alive", now)
    old = now - timedelta(minutes=2)
    queued = insert(database, key_id, owner="dead")
    running = insert(database, key_id, owner="dead", running=True)
    done = insert(database, key_id, owner="dead")
    finish(database, done.id)
    kept = insert(database, key_id, owner="alive")
    young = insert(database, key_id, owner="never-registered")
    unowned = insert(database, key_id)
    for row in (queued, running, done, kept, unowned):
        set_created_at(database, row.id, old)

    found = orphans(database, dead_before=now - timedelta(seconds=30))

    assert {(o.id, o.owner, o.status) for o in found} == {
        (queued.id, "dead", ExecutionStatus.QUEUED),
        (running.id, "dead", ExecutionStatus.RUNNING),
        (unowned.id, None, ExecutionStatus.QUEUED),
    }
    assert young.id not in {o.id for o in found}  # its owner may not have registered yet


def test_an_orphan_is_claimed_once(database: Database) -> None:
    key_id = new_key(database).row.id
    now = datetime.now(UTC)
    beat(database, "dead", now - timedelta(minutes=5))
    beat(database, "a", now)
    row = insert(database, key_id, owner="dead")
    set_created_at(database, row.id, now - timedelta(minutes=2))
    (orphan,) = orphans(database, dead_before=now - timedelta(seconds=30))

    with database.session() as session:
        first = instances.claim(session, orphan, "a")
    with database.session() as session:
        second = instances.claim(session, orphan, "b")  # same stale view of the owner

    assert first is not None and first.owner == "a" and first.id == row.id
    assert second is None
    assert orphans(database, dead_before=now - timedelta(seconds=30)) == []


def test_a_finished_orphan_is_not_claimed(database: Database) -> None:
    key_id = new_key(database).row.id
    row = insert(database, key_id, owner="dead")
    orphan = instances.Orphan(id=row.id, owner="dead", status=ExecutionStatus.QUEUED)
    finish(database, row.id)
    with database.session() as session:
        assert instances.claim(session, orphan, "a") is None


def test_dead_instances_are_forgotten_once_they_own_nothing(database: Database) -> None:
    key_id = new_key(database).row.id
    now = datetime.now(UTC)
    beat(database, "dead-idle", now - timedelta(minutes=5))
    beat(database, "dead-busy", now - timedelta(minutes=5))
    beat(database, "alive", now - timedelta(minutes=5))
    beat(database, "alive", now)  # a second beat moves the first one's time on
    insert(database, key_id, owner="dead-busy")
    with database.session() as session:
        forgotten = instances.forget_dead_instances(
            session, dead_before=now - timedelta(seconds=30)
        )
    with database.session() as session:
        left = set(session.scalars(select(ServiceInstance.id)))
    assert forgotten == 1
    assert left == {"dead-busy", "alive"}


def test_an_unreachable_database_is_unavailable_not_an_error(tmp_path: Path) -> None:
    database = Database.from_url(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 1}
    )
    try:
        with pytest.raises(DatabaseUnavailableError) as raised, database.session() as session:
            session.execute(text("SELECT 1"))
    finally:
        database.dispose()
    assert raised.value.code == "unavailable"
    assert raised.value.retry_after_s > 0


def test_other_database_errors_stay_errors(database: Database) -> None:
    with pytest.raises(sqlalchemy.exc.DBAPIError), database.session() as session:
        session.execute(text("SELECT * FROM no_such_table"))
