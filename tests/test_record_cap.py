"""``MAX_RECORD_BYTES``: no execution record stored or answered is bigger (issue 10 item 3).

A judged run keeps a stdout and a stderr per case: 97 bytes of code with 4 cases made a record
of 62.9 MB. :func:`cap_record` is tested as the pure function it is, then through the real
service (SQLite, the in-process limiter) with an executor handle answering such a record.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from executors import Artifact, ExecutionRecord, ExecutionRequest, ExecutionStatus
from executors._models import CaseResult
from serve_app.api import ExecutionCreate, RequestBounds, validate_body
from serve_app.db import Database, executions, keys
from serve_app.files import encode_base64
from serve_app.http import ExecutionService
from serve_app.http._record_size import cap_record, record_bytes
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import KIB, MIB, Settings
from tests.support.settings import migrated_sqlite_settings
from tests.support.stand_ins import RunsStandIn

CAP = 64 * KIB


def huge(cases: int = 4, stream_chars: int = 200_000, text: str = "x") -> ExecutionRecord:
    case = CaseResult(
        status=ExecutionStatus.OK,
        passed=True,
        stdout=text * stream_chars,
        stderr=text * stream_chars,
    )
    return ExecutionRecord(
        status=ExecutionStatus.OK,
        limits={},
        stdout="head\n" + text * stream_chars,
        stderr="short",
        passed=True,
        cases=[case] * cases,
    )


def api_bytes(record: ExecutionRecord) -> int:
    return len(json.dumps(record.to_api(), ensure_ascii=False, separators=(",", ":")).encode())


def test_a_record_within_the_cap_is_unchanged() -> None:
    record = ExecutionRecord(status=ExecutionStatus.OK, limits={}, stdout="hello\n")
    assert cap_record(record, CAP) is record


@pytest.mark.parametrize("text", ["x", "é", "\x01", "\U0001f600", '"\\'])
def test_outputs_are_cut_to_fit_and_flagged(text: str) -> None:
    record = huge(text=text)
    assert record_bytes(record) > 10 * CAP
    capped = cap_record(record, CAP)
    assert record_bytes(capped) <= CAP
    assert api_bytes(capped) <= CAP  # as any JSON encoder would write it
    assert CAP - record_bytes(capped) < CAP // 4  # the room is used, not thrown away
    # Each stream keeps its beginning; the short ones are whole and not flagged.
    assert capped.stdout.startswith("head\n") and capped.stdout_truncated
    assert (capped.stderr, capped.stderr_truncated) == ("short", False)
    assert capped.cases is not None
    for case in capped.cases:
        assert case.stdout_truncated and case.stderr_truncated
        assert case.stdout and text * 10 in case.stdout
    # Everything else is as it was.
    assert capped.model_dump(exclude={"stdout", "stdout_truncated", "cases"}) == record.model_dump(
        exclude={"stdout", "stdout_truncated", "cases"}
    )


def test_the_share_is_fair_between_streams() -> None:
    record = huge(cases=100, stream_chars=50_000)
    capped = cap_record(record, 256 * KIB)
    assert capped.cases is not None
    lengths = {len(case.stdout) for case in capped.cases} | {len(capped.stdout)}
    assert max(lengths) - min(lengths) <= 8, lengths


def test_a_session_calls_result_is_cut_like_an_output() -> None:
    # The engine caps a result like a stream (max_output_bytes): more than a small cap holds.
    record = ExecutionRecord(
        status=ExecutionStatus.OK, limits={}, stdout="x" * 200_000, result="'" + "y" * 200_000
    )
    capped = cap_record(record, CAP)
    assert record_bytes(capped) <= CAP
    assert capped.result is not None and capped.result.startswith("'yyy")
    assert capped.stdout_truncated and capped.stdout.startswith("xxx")
    short = record.model_copy(update={"result": "2"})
    assert cap_record(short, CAP).result == "2"  # a short one is whole


def with_artifacts(record: ExecutionRecord, count: int, each_bytes: int) -> ExecutionRecord:
    artifacts = [
        Artifact(
            path=f"out/{index:02}.bin",
            size_bytes=each_bytes,
            media_type="application/octet-stream",
            base64=encode_base64(bytes([index]) * each_bytes),
        )
        for index in range(count)
    ]
    return record.model_copy(update={"artifacts": artifacts})


def test_artifacts_within_the_cap_stay_whole() -> None:
    record = with_artifacts(ExecutionRecord(status=ExecutionStatus.OK, limits={}), 3, 4 * KIB)
    assert cap_record(record, CAP) is record


def test_artifacts_past_the_outputs_share_are_left_out_from_the_last() -> None:
    # Ten artifacts of 8 KiB (about 11 KiB of base64 each) and loud outputs, under 64 KiB.
    record = with_artifacts(huge(), 10, 8 * KIB)
    capped = cap_record(record, CAP)
    assert record_bytes(capped) <= CAP
    assert capped.artifacts_truncated and not record.artifacts_truncated
    kept = len(capped.artifacts)
    assert 0 < kept < 10
    assert capped.artifacts == record.artifacts[:kept]  # the first ones, whole
    streams = [capped, *(capped.cases or ())]
    outputs = sum(len(owner.stdout) + len(owner.stderr) for owner in streams)
    assert outputs >= CAP // 4 - 1024  # the outputs keep their share


def test_quiet_outputs_leave_the_artifacts_all_but_what_does_not_fit() -> None:
    quiet = ExecutionRecord(status=ExecutionStatus.OK, limits={}, stdout="done\n")
    record = with_artifacts(quiet, 10, 8 * KIB)
    capped = cap_record(record, CAP)
    assert record_bytes(capped) <= CAP < record_bytes(record)
    assert capped.artifacts_truncated and capped.stdout == "done\n"
    assert len(capped.artifacts) == (CAP - 1024) // record_bytes(
        with_artifacts(quiet, 1, 8 * KIB)
    )  # as many as fit, each about 11 KiB of JSON


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_sqlite_settings(tmp_path, max_record_bytes=CAP)


class HugeRecords(RunsStandIn):
    """An executor handle that answers every run with a record of several MiB."""

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        record = huge().model_copy(update={"limits": request.limits.to_api()})
        return record.to_api()


def test_the_service_stores_and_answers_capped_records(settings: Settings) -> None:
    database = Database.from_settings(settings)
    body = validate_body(
        ExecutionCreate,
        {"code": "print(1)", "cases": [{"stdin": "", "expected_stdout": ""}] * 4},
        RequestBounds.from_settings(settings),
    )

    async def scenario() -> tuple[ExecutionRecord, ExecutionRecord]:
        service = ExecutionService(settings, database, build_rate_limiter(settings), HugeRecords())
        with database.session() as session:
            key = keys.create_key(session, settings.api_key_secret, "loud").row
        answered = (await service.create(key, body)).record
        await service.aclose(5.0)
        with database.session() as session:
            row = executions.get_execution(session, key.id, answered.id)
            assert row is not None
            return answered, executions.to_record(row)

    try:
        answered, stored = asyncio.run(scenario())
    finally:
        database.dispose()
    assert record_bytes(huge()) > MIB
    # The answer's cases are the stored JSON (plain dicts): validated again to be measured.
    answered = ExecutionRecord.model_validate(answered.model_dump(mode="json", warnings=False))
    for record in (answered, stored):
        assert record.status is ExecutionStatus.OK
        assert record_bytes(record) <= CAP
        assert record.stdout_truncated and record.cases is not None
        assert all(case.stdout_truncated for case in record.cases)
    assert stored.stdout == answered.stdout


class ManyArtifacts(RunsStandIn):
    """An executor handle that answers every run quietly, with 160 KiB of artifacts."""

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        quiet = ExecutionRecord(
            status=ExecutionStatus.OK, limits=request.limits.to_api(), stdout="done\n"
        )
        return with_artifacts(quiet, 20, 8 * KIB).to_api()


def test_the_service_leaves_out_artifacts_past_the_cap(settings: Settings) -> None:
    database = Database.from_settings(settings)
    body = validate_body(ExecutionCreate, {"code": "pass"}, RequestBounds.from_settings(settings))

    async def scenario() -> tuple[ExecutionRecord, ExecutionRecord]:
        service = ExecutionService(
            settings, database, build_rate_limiter(settings), ManyArtifacts()
        )
        with database.session() as session:
            key = keys.create_key(session, settings.api_key_secret, "artist").row
        answered = (await service.create(key, body)).record
        await service.aclose(5.0)
        with database.session() as session:
            row = executions.get_execution(session, key.id, answered.id)
            assert row is not None
            return answered, executions.to_record(row)

    try:
        answered, stored = asyncio.run(scenario())
    finally:
        database.dispose()
    assert answered == stored
    assert record_bytes(stored) <= CAP and stored.artifacts_truncated
    assert 0 < len(stored.artifacts) < 20 and stored.stdout == "done\n"
    assert [artifact.path for artifact in stored.artifacts] == [
        f"out/{index:02}.bin" for index in range(len(stored.artifacts))
    ]
