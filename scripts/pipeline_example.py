"""A Ray Data pipeline of programs run in sandboxes: the example for ``executors.SandboxMapper``.

Builds a small dataset of programs (some succeed, some fail, time out, or are judged with
``test_code`` or ``cases``; one row is invalid), maps it through the sandbox executors
(``executors.run_programs``) and prints one JSON object: the row count and the counts by
status, by ``passed``, by ``executor`` (``serve``: the deployed service's pool; ``local``: a
pool the pipeline started) and of rows with an ``error``.

    python scripts/pipeline_example.py                           # a local Ray, or RAY_ADDRESS
    python scripts/pipeline_example.py --address ray://HEAD:10001  # through Ray Client
    python scripts/submit_job.py --address http://HEAD:8265       # as a Ray job

Run as a Ray job (``scripts/submit_job.py``) it joins the job's cluster. Exit status 0 when every
row came back as expected (:data:`PROGRAMS`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

TIMEOUT_S = 1.0
SQUARE = "print(int(input()) ** 2)"
PROGRAMS: tuple[tuple[str, str, dict[str, Any]], ...] = (  # expected status and passed, row
    ("ok", "null", {"code": "print('hello from the sandbox')"}),
    ("ok", "null", {"code": "print(sum(range(int(input()))))", "stdin": "10"}),
    (
        "ok",
        "null",
        {"code": "print(open('data.txt').read().upper())", "files": {"data.txt": "abc"}},
    ),
    ("nonzero_exit", "null", {"code": "raise ValueError('fails on purpose')"}),
    ("timeout", "null", {"code": "while True: pass", "limits": {"wall_timeout_s": TIMEOUT_S}}),
    (
        "ok",
        "true",
        {"code": "def add(a, b):\n    return a + b", "test_code": "assert add(2, 3) == 5"},
    ),
    (
        "nonzero_exit",
        "false",
        {"code": "def add(a, b):\n    return a - b", "test_code": "assert add(2, 3) == 5"},
    ),
    (
        "ok",
        "true",
        {
            "code": SQUARE,
            "cases": [
                {"stdin": "3", "expected_stdout": "9"},
                {"stdin": "4", "expected_stdout": "16"},
            ],
        },
    ),
    (
        "ok",
        "false",
        {
            "code": SQUARE,
            "cases": [
                {"stdin": "3", "expected_stdout": "9"},
                {"stdin": "4", "expected_stdout": "17"},
            ],
        },
    ),
    ("error", "null", {"code": "print(1)", "limits": {"memory_mb": 0}}),
)
"""Each program with the status its row must end with (``error``: refused, no record) and its
``passed`` (``null``: not judged)."""


def build_rows(count: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``count`` rows cycling through :data:`PROGRAMS`, and the counts they must give."""
    rows, status, passed = [], Counter[str](), Counter[str]()
    for index in range(count):
        expected_status, expected_passed, row = PROGRAMS[index % len(PROGRAMS)]
        rows.append({"name": f"program-{index}", **row})
        status[expected_status] += 1
        passed[expected_passed] += 1
    return rows, {"status": dict(sorted(status.items())), "passed": dict(sorted(passed.items()))}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status (``error`` for rows without a record), passed and executor."""
    status = Counter(row["status"] if row["status"] is not None else "error" for row in rows)
    passed = Counter(
        "null" if row["passed"] is None else str(bool(row["passed"])).lower() for row in rows
    )
    executor = Counter(row["executor"] for row in rows if row["executor"] is not None)
    return {
        "rows": len(rows),
        "status": dict(sorted(status.items())),
        "passed": dict(sorted(passed.items())),
        "executor": dict(sorted(executor.items())),
        "errors": sum(1 for row in rows if row["error"] is not None),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--address",
        default=None,
        help="ray.init's address: ray://HOST:PORT (Ray Client), HOST:PORT, auto; default: "
        "RAY_ADDRESS, the job's cluster, or a new local Ray",
    )
    parser.add_argument("--rows", type=int, default=len(PROGRAMS), help="dataset rows")
    parser.add_argument(
        "--backend",
        choices=("auto", "serve", "local"),
        default="auto",
        help="the service's executor deployment if deployed (auto), it alone, or a local pool",
    )
    parser.add_argument("--app-name", default="exec-agent", help="the Serve application")
    parser.add_argument("--max-in-flight", type=int, default=4, help="rows in flight per mapper")
    parser.add_argument("--mappers", type=int, default=1, help="mapper actors")
    parser.add_argument("--local-slots", type=int, default=2, help="the local pool's slots")
    parser.add_argument(
        "--local-num-cpus", type=float, default=0.0, help="CPUs the local pool reserves"
    )
    parser.add_argument(
        "--batch-format", choices=("pandas", "numpy"), default="pandas", help="batch format"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    from executors import run_programs

    rows, expected = build_rows(args.rows)
    ray.init(address=args.address, log_to_driver=False)
    try:
        results = run_programs(
            rows,
            mapper_options={
                "backend": args.backend,
                "app_name": args.app_name,
                "max_in_flight": args.max_in_flight,
                "local_slots": args.local_slots,
                "local_num_cpus": args.local_num_cpus,
            },
            mappers=args.mappers,
            batch_size=args.batch_size,
            batch_format=args.batch_format,
        )
    finally:
        ray.shutdown()
    summary = summarize(results)
    summary["expected"] = expected
    summary["as_expected"] = all(summary[name] == expected[name] for name in expected)
    print(json.dumps(summary), flush=True)
    return 0 if summary["as_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
