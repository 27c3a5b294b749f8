"""The engine's value objects (executors/_models.py): limits, requests, records."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from executors._models import (
    MAX_CASES,
    MIB,
    CaseResult,
    CaseSpec,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    LimitsRequest,
)
from tests.support.limits import API_LIMIT_FIELDS, SERVICE_DEFAULT_LIMITS, SERVICE_MAX_LIMITS

DEFAULTS = SERVICE_DEFAULT_LIMITS
MAXIMA = SERVICE_MAX_LIMITS


def request(**overrides: object) -> ExecutionRequest:
    fields: dict[str, object] = {"code": "print(1)", "limits": DEFAULTS, **overrides}
    return ExecutionRequest.model_validate(fields)


# --- LimitsRequest.resolve


def test_resolve_of_empty_request_is_the_defaults() -> None:
    assert LimitsRequest().resolve(DEFAULTS, MAXIMA) == DEFAULTS


def test_resolve_fills_gaps_and_converts_memory_mb() -> None:
    limits = LimitsRequest(memory_mb=100, wall_timeout_s=2.5).resolve(DEFAULTS, MAXIMA)
    assert limits.memory_bytes == 100 * MIB
    assert limits.wall_timeout_s == 2.5
    assert limits.cpu_time_s == DEFAULTS.cpu_time_s
    assert limits.max_processes == DEFAULTS.max_processes


def test_resolve_names_every_field_over_the_maximum() -> None:
    asked = LimitsRequest(wall_timeout_s=31, memory_mb=513, max_processes=65)
    with pytest.raises(ValueError, match="over the server maximum") as caught:
        asked.resolve(DEFAULTS, MAXIMA)
    message = str(caught.value)
    for name in ("wall_timeout_s", "memory_bytes", "max_processes"):
        assert name in message
    assert "cpu_time_s" not in message


def test_resolve_accepts_exactly_the_maximum() -> None:
    asked = LimitsRequest(wall_timeout_s=30, memory_mb=512, max_file_bytes=64 * MIB)
    assert asked.resolve(DEFAULTS, MAXIMA).within(MAXIMA) == []


@pytest.mark.parametrize("field", API_LIMIT_FIELDS)
@pytest.mark.parametrize("value", [0, -1])
def test_limits_request_refuses_zero_and_negative(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        LimitsRequest.model_validate({field: value})


@pytest.mark.parametrize("field", ["wall_timeout_s", "cpu_time_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_limits_request_refuses_nan_and_infinity(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        LimitsRequest.model_validate({field: value})


@pytest.mark.parametrize("field", ["memory_mb", "max_processes"])
def test_integer_limits_refuse_fractions(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        LimitsRequest.model_validate({field: 1.5})


def test_limits_request_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="memory_bytes"):
        LimitsRequest.model_validate({"memory_bytes": 1})


@given(
    wall=st.none() | st.floats(min_value=1e-3, max_value=60),
    memory_mb=st.none() | st.integers(min_value=1, max_value=1024),
    processes=st.none() | st.integers(min_value=1, max_value=128),
)
def test_resolve_never_exceeds_the_maxima(
    wall: float | None, memory_mb: int | None, processes: int | None
) -> None:
    asked = LimitsRequest(wall_timeout_s=wall, memory_mb=memory_mb, max_processes=processes)
    try:
        limits = asked.resolve(DEFAULTS, MAXIMA)
    except ValueError:
        return
    assert limits.within(MAXIMA) == []


# --- Limits


def test_limits_to_api_speaks_memory_mb() -> None:
    api = DEFAULTS.to_api()
    assert api["memory_mb"] == 256
    assert isinstance(api["memory_mb"], int)
    assert "memory_bytes" not in api
    assert set(api) == set(API_LIMIT_FIELDS)


def test_limits_to_api_keeps_fractional_mebibytes() -> None:
    limits = DEFAULTS.model_copy(update={"memory_bytes": 3 * MIB // 2})
    assert limits.to_api()["memory_mb"] == 1.5


def test_limits_refuse_a_file_larger_than_the_disk() -> None:
    with pytest.raises(ValidationError, match="disk_bytes"):
        Limits.model_validate({**DEFAULTS.model_dump(), "max_file_bytes": 65 * MIB})


# --- ExecutionRequest


@pytest.mark.parametrize("field", ["code", "stdin"])
def test_request_refuses_nul(field: str) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        request(**{field: "a\x00b"})


@pytest.mark.parametrize("field", ["code", "stdin"])
def test_request_refuses_lone_surrogates(field: str) -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        request(**{field: "x = '\ud800'"})


def test_request_refuses_nul_in_file_content() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        request(files={"data.txt": "a\x00"})


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../escape.txt", "a/../../b", "a/..", "./x", "", "a\\b", "a\nb", "\ud800"],
)
def test_request_refuses_paths_outside_the_working_directory(path: str) -> None:
    with pytest.raises(ValidationError):
        request(files={path: "content"})


def test_request_accepts_plain_relative_paths() -> None:
    files = {"data.txt": "1 2\n", "pkg/module.py": "X = 1\n"}
    assert request(files=files).files == files


def test_request_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="wait"):
        request(wait=False)


# --- ExecutionRecord


def test_record_to_api_is_plain_json() -> None:
    record = ExecutionRecord(status="ok", exit_code=0, stdout="hi\n", limits=DEFAULTS.to_api())
    api = record.to_api()
    assert json.loads(json.dumps(api)) == api
    assert api["status"] == "ok"
    assert api["limits"]["memory_mb"] == 256
    assert isinstance(api["id"], str)
    assert api["passed"] is None


# --- judged requests and records


def test_a_request_with_test_code_or_cases_is_judged() -> None:
    cases = [{"stdin": "1", "expected_stdout": "1"}, {"expected_stdout": ""}]
    judged = request(test_code="assert True", cases=cases)
    assert judged.cases == [CaseSpec(stdin="1", expected_stdout="1"), CaseSpec(expected_stdout="")]
    assert judged.judged and request(test_code="").judged and request(cases=cases[:1]).judged
    assert not request().judged


@pytest.mark.parametrize("count", [0, MAX_CASES + 1])
def test_cases_number_from_one_to_the_maximum(count: int) -> None:
    with pytest.raises(ValidationError, match="cases"):
        request(cases=[{"expected_stdout": ""}] * count)
    assert len(request(cases=[{"expected_stdout": ""}] * MAX_CASES).cases or []) == MAX_CASES


def test_a_case_needs_its_expected_stdout_and_nothing_else() -> None:
    with pytest.raises(ValidationError, match="expected_stdout"):
        request(cases=[{"stdin": "1"}])
    with pytest.raises(ValidationError, match="input"):
        request(cases=[{"expected_stdout": "", "input": "1"}])


@pytest.mark.parametrize("field", ["stdin", "expected_stdout"])
def test_case_text_refuses_nul(field: str) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        request(cases=[{"expected_stdout": "", field: "a\x00b"}])


def test_test_code_refuses_nul_and_lone_surrogates() -> None:
    for text, reason in (("a\x00b", "NUL"), ("x = '\ud800'", "surrogate")):
        with pytest.raises(ValidationError, match=reason):
            request(test_code=text)


def test_record_to_api_has_cases_only_when_there_are_cases() -> None:
    plain = ExecutionRecord(status="ok", limits=DEFAULTS.to_api())
    assert "cases" not in plain.to_api()
    result = CaseResult(status=ExecutionStatus.OK, passed=True, stdout="1\n", exit_code=0)
    judged = plain.model_copy(update={"passed": True, "cases": [result]})
    api = judged.to_api()
    assert api["passed"] is True
    assert api["cases"] == [result.model_dump(mode="json")]
    assert api["cases"][0]["status"] == "ok"
    assert ExecutionRecord.model_validate(api) == judged


def test_an_internal_error_record_says_passed_false_only_when_judged() -> None:
    judged = ExecutionRecord.internal_error(request(test_code="assert True"))
    assert (judged.status, judged.passed) == (ExecutionStatus.INTERNAL_ERROR, False)
    assert judged.finished_at is not None
    assert ExecutionRecord.internal_error(request()).passed is None
