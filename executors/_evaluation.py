"""Judged runs with ``cases``: one sandboxed job per case, and the record that sums them up.

How ``passed`` is decided:

- ``test_code`` (inside each job; see ``executors/_sandbox/zygote.py``): the program proved,
  on a channel of its own that the host reads, that ``test_code`` ran to its end without an
  exception, and the job's status is ``ok``.
- a case: its job's status is ``ok``, its whole standard output was captured and matches
  ``expected_stdout`` (see :func:`outputs_match`), and, with ``test_code``, the test passed
  in that job too (``test_code`` runs after ``code`` in every case; what it prints is part
  of the case's output).
- a record with cases: every case passed.

The record of a run with cases describes one *representative* case: the first whose status is
not ``ok``, else the first that did not pass, else the last. Its status, exit code, signal,
output and truncation flags are the record's, so a ``timeout`` anywhere shows in the status and
the output shown explains the first failure. Usage adds up over the cases (wall and CPU time;
their jobs may run at once in different slots) except ``peak_memory_bytes``, the largest.
Every case's own outcome is in ``cases``, in request order.

A case is judged on its whole output; the record then keeps at most a share of
``max_output_bytes`` of each of its streams (``CASE_OUTPUT_FLOOR_BYTES`` at least, cut flagged):
a record of 100 cases holds about as much output as one run, not a hundred times as much.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from executors._models import (
    CaseResult,
    CaseSpec,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    cut_utf8,
    utc_now,
)

__all__ = ["CASE_OUTPUT_FLOOR_BYTES", "RunJob", "outputs_match", "run_cases"]

CASE_OUTPUT_FLOOR_BYTES = 4096
"""Each case keeps at least this much of each stream, however many cases there are."""

RunJob = Callable[[ExecutionRequest, threading.Event | None], ExecutionRecord]
"""Runs one job to its record (``SandboxPool``'s single-job run)."""


def normalize_output(text: str) -> str:
    """``text`` without trailing whitespace on each line and at the end."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def outputs_match(actual: str, expected: str) -> bool:
    """Whether two outputs are the same but for trailing whitespace (lines and end)."""
    return normalize_output(actual) == normalize_output(expected)


def run_cases(
    request: ExecutionRequest, run_job: RunJob, workers: int, cancel: threading.Event | None
) -> ExecutionRecord:
    """Run ``request`` once per case, up to ``workers`` cases at once; sum up the records.

    ``cancel`` stops every case: running jobs are killed, cases not started yet are skipped;
    both end as ``internal_error``, as the service stopped them.
    """
    if not request.cases:
        raise ValueError("run_cases needs a request with cases")
    created_at = utc_now()
    share = max(CASE_OUTPUT_FLOOR_BYTES, request.limits.max_output_bytes // len(request.cases))

    def run_case(case: CaseSpec) -> tuple[CaseResult, datetime | None]:
        job = request.model_copy(update={"stdin": case.stdin, "cases": None})
        if cancel is not None and cancel.is_set():
            record = ExecutionRecord.internal_error(job)
        else:
            record = run_job(job, cancel)
        result = judge_case(record, case, request.test_code is not None)
        return _keep_share(result, share), record.started_at  # the whole output is dropped here

    with ThreadPoolExecutor(
        max_workers=min(workers, len(request.cases)), thread_name_prefix="sandbox-case"
    ) as executor:
        outcomes = list(executor.map(run_case, request.cases))
    results = [result for result, _ in outcomes]
    started = [at for _, at in outcomes if at is not None]
    return _sum_up(request, started, results, created_at)


def _keep_share(result: CaseResult, share_bytes: int) -> CaseResult:
    """``result`` with each stream cut to ``share_bytes`` (UTF-8), flagged where cut."""
    stdout, stdout_cut = cut_utf8(result.stdout, share_bytes)
    stderr, stderr_cut = cut_utf8(result.stderr, share_bytes)
    if not (stdout_cut or stderr_cut):
        return result
    return result.model_copy(
        update={
            "stdout": stdout,
            "stderr": stderr,
            "stdout_truncated": result.stdout_truncated or stdout_cut,
            "stderr_truncated": result.stderr_truncated or stderr_cut,
        }
    )


_RUN_FIELDS = set(CaseResult.model_fields) - {"passed"}
"""What a case's result copies from its run's record."""
_OUTCOME_FIELDS = _RUN_FIELDS - {"wall_time_s", "cpu_time_s", "peak_memory_bytes"}
"""What the record of a judged run copies from the case it shows (usage is summed)."""


def judge_case(record: ExecutionRecord, case: CaseSpec, with_test_code: bool) -> CaseResult:
    """The outcome of one case's job."""
    passed = (
        record.status == ExecutionStatus.OK
        and not record.stdout_truncated
        and outputs_match(record.stdout, case.expected_stdout)
        and (record.passed is True or not with_test_code)
    )
    return CaseResult(passed=passed, **record.model_dump(include=_RUN_FIELDS))


def _representative(results: Sequence[CaseResult]) -> int:
    """Index of the case the record shows: first not ``ok``, else first failed, else last."""
    for index, result in enumerate(results):
        if result.status != ExecutionStatus.OK:
            return index
    for index, result in enumerate(results):
        if not result.passed:
            return index
    return len(results) - 1


def _sum_up(
    request: ExecutionRequest,
    started: Sequence[datetime],
    results: list[CaseResult],
    created_at: datetime,
) -> ExecutionRecord:
    shown = results[_representative(results)]
    return ExecutionRecord(
        **shown.model_dump(include=_OUTCOME_FIELDS),
        wall_time_s=round(sum(result.wall_time_s or 0.0 for result in results), 6),
        cpu_time_s=round(sum(result.cpu_time_s or 0.0 for result in results), 6),
        peak_memory_bytes=max(result.peak_memory_bytes or 0 for result in results),
        limits=request.limits.to_api(),
        created_at=created_at,
        started_at=min(started, default=None),
        finished_at=utc_now(),
        passed=all(result.passed for result in results),
        cases=results,
        runtime=request.runtime,
    )
