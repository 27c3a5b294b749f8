"""``scripts/bench compat``: a verl-style reward loop through SandboxFusion's API against the same
work through the service's own.

verl's ``sandbox_fusion`` reward scores a batch of generated programs by posting one
``run_code`` per (program, test case), its input as ``stdin``, with 128 or more requests in
flight, and compares each answer's stdout with the expected output. Here ``--programs``
programs (most right, some wrong, some crashing: the verdicts differ) meet ``--cases`` cases
each, three ways, against one ``exec-agent serve`` (embedded) in the same run:

- ``compat``: ``POST /compat/sandbox-fusion/k/{key}/run_code``, one call per (program, case),
  ``--in-flight`` at a time: the drop-in, as verl sends it (its key in the path);
- ``executions``: the same calls as ``POST /v1/executions``: the floor, the service's own
  one-call form, so that the difference is what the compatibility layer costs;
- ``batches``: the same work as ``POST /v1/batches`` (one item per call, one batch per
  program, as many batches in flight as keep ``--in-flight`` items running), each waited for
  with ``GET /v1/batches/{id}?wait_s=``.

Reported per way: calls (test cases judged) per second over the whole loop, the latency of
each HTTP call (p50, p99; for batches, a batch's), the verdicts (pass, fail, error), and
whether every verdict equals the expected one and the three ways agree. A verdict is
``pass`` when the run finished with exit status 0 and its stdout, stripped, equals the
case's expected output, ``fail`` otherwise, ``error`` when the service could not judge (a
SandboxError, a non-2xx answer, an internal error).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from serve_process import RATE_LIMIT_PER_MINUTE, ServeProcess, percentile, positive_int

from executors import SandboxConfig

from .common import (
    MAX_FAILURE_EXAMPLES,
    add_output,
    add_runtime_argument,
    host_info,
    reported_service,
    timestamp,
)

COMPAT_PROGRAMS = 64
COMPAT_CASES = 8
COMPAT_IN_FLIGHT = 128
RUN_TIMEOUT_S = 5
BATCH_WAIT_S = 30
CALL_TIMEOUT_S = 120.0
WAYS = ("compat", "executions", "batches")

# The programs verl would judge: read two integers, print their sum. Right ones, a wrong one
# and one that crashes on some inputs, so that the verdicts are not all alike.
RIGHT = "a, b = map(int, input().split())\nprint(a + b)\n"
RIGHT_ALSO = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"
WRONG = "a, b = map(int, input().split())\nprint(a - b)\n"
CRASHES_ON_ODD = (
    "a, b = map(int, input().split())\nif (a + b) % 2:\n    raise ValueError(a + b)\nprint(a + b)\n"
)
KINDS = (
    ("right", RIGHT),
    ("right", RIGHT_ALSO),
    ("wrong", WRONG),
    ("crashes_on_odd", CRASHES_ON_ODD),
)
"""One in four programs of each kind (a right one in two)."""

Work = list[dict[str, Any]]
"""One dict per call: program index, its code and kind, the case's stdin and expected stdout,
and the expected verdict."""


def make_work(programs: int, cases: int, seed: int = 18) -> Work:
    """``programs`` x ``cases`` calls, with the verdict each must get."""
    rng = random.Random(seed)  # noqa: S311 - test inputs, reproducible by design
    work: Work = []
    for program in range(programs):
        kind, code = KINDS[program % len(KINDS)]
        for _ in range(cases):
            a, b = rng.randrange(-1000, 1000), rng.randrange(-1000, 1000)
            if kind == "right":
                expected = "pass"
            elif kind == "wrong":
                expected = "pass" if b == 0 else "fail"
            else:
                expected = "fail" if (a + b) % 2 else "pass"
            work.append(
                {
                    "program": program,
                    "code": code,
                    "stdin": f"{a} {b}\n",
                    "expected_stdout": f"{a + b}",
                    "expected": expected,
                }
            )
    return work


def compat_verdict(answer: dict[str, Any], expected_stdout: str) -> str:
    """SandboxFusion's answer judged as verl judges it."""
    if answer.get("status") == "SandboxError":
        return "error"
    run = answer.get("run_result") or {}
    if answer.get("status") != "Success" or run.get("return_code") != 0:
        return "fail"
    return "pass" if (run.get("stdout") or "").strip() == expected_stdout else "fail"


def record_verdict(record: dict[str, Any], expected_stdout: str) -> str:
    """One of the service's execution records judged the same way."""
    status = record.get("status")
    if status == "internal_error":
        return "error"
    if status != "ok" or record.get("exit_code") != 0:
        return "fail"
    return "pass" if (record.get("stdout") or "").strip() == expected_stdout else "fail"


async def _bounded(calls: list[Callable[[], Awaitable[None]]], in_flight: int) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def run_calls(
    url: str, key: str, work: Work, way: str, in_flight: int, runtime: str
) -> dict[str, Any]:
    """``work`` one call per item through ``compat`` or ``executions``."""
    verdicts: list[str] = [""] * len(work)
    latencies: list[float] = []
    problems: list[str] = []
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    headers = {} if way == "compat" else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=CALL_TIMEOUT_S, headers=headers
    ) as client:

        def call(index: int) -> Callable[[], Awaitable[None]]:
            item = work[index]

            async def go() -> None:
                began = time.perf_counter()
                try:
                    if way == "compat":
                        answer = await client.post(
                            f"/compat/sandbox-fusion/k/{key}/run_code",
                            json={
                                "code": item["code"],
                                "language": "python",
                                "stdin": item["stdin"],
                                "run_timeout": RUN_TIMEOUT_S,
                            },
                        )
                    else:
                        answer = await client.post(
                            "/v1/executions",
                            json={
                                "code": item["code"],
                                "stdin": item["stdin"],
                                "runtime": runtime,
                                "limits": {"wall_timeout_s": RUN_TIMEOUT_S},
                            },
                        )
                except httpx.HTTPError as exc:
                    verdicts[index] = "error"
                    problems.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - began)
                if answer.status_code != 200:
                    verdicts[index] = "error"
                    problems.append(f"{answer.status_code}: {answer.text[:200]}")
                    return
                judge = compat_verdict if way == "compat" else record_verdict
                verdicts[index] = judge(answer.json(), item["expected_stdout"])

            return go

        began = time.perf_counter()
        await _bounded([call(index) for index in range(len(work))], in_flight)
        elapsed = time.perf_counter() - began
    return _measured(work, verdicts, latencies, problems, elapsed)


async def run_batches(
    url: str, key: str, work: Work, in_flight: int, runtime: str
) -> dict[str, Any]:
    """``work`` as one batch per program, ``in_flight`` items at most in flight."""
    verdicts: list[str] = [""] * len(work)
    latencies: list[float] = []
    problems: list[str] = []
    by_program: dict[int, list[int]] = {}
    for index, item in enumerate(work):
        by_program.setdefault(item["program"], []).append(index)
    per_batch = max(len(indexes) for indexes in by_program.values())
    batches_in_flight = max(1, in_flight // per_batch)
    async with httpx.AsyncClient(
        base_url=url,
        timeout=CALL_TIMEOUT_S,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=batches_in_flight),
    ) as client:

        def batch(indexes: list[int]) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                began = time.perf_counter()
                items = [
                    {
                        "code": work[index]["code"],
                        "stdin": work[index]["stdin"],
                        "runtime": runtime,
                        "limits": {"wall_timeout_s": RUN_TIMEOUT_S},
                    }
                    for index in indexes
                ]
                try:
                    created = await client.post("/v1/batches", json={"items": items})
                    created.raise_for_status()
                    batch_id = created.json()["id"]
                    while True:
                        answer = await client.get(
                            f"/v1/batches/{batch_id}", params={"wait_s": BATCH_WAIT_S}
                        )
                        answer.raise_for_status()
                        state = answer.json()
                        if state["status"] == "done":
                            break
                except httpx.HTTPError as exc:
                    for index in indexes:
                        verdicts[index] = "error"
                    problems.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - began)
                for index, record in zip(indexes, state["items"], strict=True):
                    verdicts[index] = record_verdict(record, work[index]["expected_stdout"])

            return go

        began = time.perf_counter()
        await _bounded([batch(indexes) for indexes in by_program.values()], batches_in_flight)
        elapsed = time.perf_counter() - began
    result = _measured(work, verdicts, latencies, problems, elapsed)
    result["batches_in_flight"] = batches_in_flight
    return result


def _measured(
    work: Work, verdicts: list[str], latencies: list[float], problems: list[str], elapsed: float
) -> dict[str, Any]:
    wrong = [index for index, item in enumerate(work) if verdicts[index] != item["expected"]]
    return {
        "calls": len(work),
        "seconds": round(elapsed, 2),
        "calls_per_s": round(len(work) / elapsed, 1) if elapsed else None,
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
            "p99": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        },
        "verdicts": dict(sorted(Counter(verdicts).items())),
        "wrong_verdicts": len(wrong),
        "wrong_examples": [
            {"program": work[i]["program"], "stdin": work[i]["stdin"], "got": verdicts[i]}
            for i in wrong[:MAX_FAILURE_EXAMPLES]
        ],
        "problems": problems[:MAX_FAILURE_EXAMPLES],
        "_verdicts": verdicts,
    }


def bench_compat(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    work = make_work(args.programs, args.cases)
    result: dict[str, Any] = {
        "benchmark": "compat",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "programs": args.programs,
            "cases": args.cases,
            "calls": len(work),
            "in_flight": args.in_flight,
            "runtime": args.runtime,
            "expected_verdicts": dict(sorted(Counter(item["expected"] for item in work).items())),
            "ways": {
                "compat": "POST /compat/sandbox-fusion/k/{key}/run_code, one call per case",
                "executions": "POST /v1/executions, one call per case (the floor)",
                "batches": "POST /v1/batches, one batch per program, GET ...?wait_s=",
            },
            "key_max_concurrent": args.in_flight,
            "key_rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
            "service": "exec-agent serve: embedded SQLite, in-process limiter, default executor "
            "settings, Serve's proxy",
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-compat-") as tmp:
        # The compat routes run in the server's default runtime: the same as the others'.
        service = ServeProcess(
            Path(tmp),
            slots=None,
            executor_queue=None,
            extra_env={"DEFAULT_RUNTIME": args.runtime},
        )
        with reported_service(service, result):
            key = service.create_key("bench-compat", max_concurrent=args.in_flight)
            result["start_s"] = round(service.start(), 2)
            # Warm the path once (imports, connections) outside the measurement.
            asyncio.run(run_calls(service.url, key, work[: args.cases], "compat", 4, args.runtime))
            ways: dict[str, Any] = {}
            for way in WAYS:
                if way == "batches":
                    ways[way] = asyncio.run(
                        run_batches(service.url, key, work, args.in_flight, args.runtime)
                    )
                else:
                    ways[way] = asyncio.run(
                        run_calls(service.url, key, work, way, args.in_flight, args.runtime)
                    )
            seen = {way: ways[way].pop("_verdicts") for way in WAYS}
            result["ways"] = ways
            result["verdicts_equal"] = seen["compat"] == seen["executions"] == seen["batches"]
            floor = ways["executions"]["calls_per_s"]
            result["compat_vs_floor"] = (
                round(ways["compat"]["calls_per_s"] / floor, 2) if floor else None
            )
    result["failed"] = _failed(result)
    return result


def _failed(result: dict[str, Any]) -> int:
    if "error" in result:
        return 1
    wrong = sum(int(part["wrong_verdicts"]) for part in result["ways"].values())
    return wrong + (0 if result["verdicts_equal"] else 1)


def summarize_compat(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"compat: a verl-style loop, {config['programs']} programs x {config['cases']} cases "
        f"= {config['calls']} calls, {config['in_flight']} in flight; expected "
        f"{config['expected_verdicts']}"
    ]
    if "error" in result:
        lines.append(f"  ERROR {result['error']}")
    for way, part in result.get("ways", {}).items():
        latency = part["latency_ms"]
        lines.append(
            f"  {way:<10} {part['calls_per_s']} calls/s ({part['seconds']} s); latency p50 "
            f"{latency['p50']} ms, p99 {latency['p99']} ms; verdicts {part['verdicts']}, "
            f"{part['wrong_verdicts']} not as expected"
        )
    if "verdicts_equal" in result:
        lines.append(
            f"  the three ways' verdicts equal: {result['verdicts_equal']}; compat / floor "
            f"(/v1/executions): {result['compat_vs_floor']}"
        )
    return "\n".join(lines)


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench compat``."""
    compat = benchmarks.add_parser(
        "compat",
        help="a verl-style reward loop through SandboxFusion's run_code, against /v1/batches",
        description="Start `exec-agent serve` (embedded), and judge PROGRAMS x CASES calls "
        "(two integers in, their sum out; right, wrong and crashing programs) three ways with "
        "IN_FLIGHT in flight: POST /compat/sandbox-fusion/k/{key}/run_code as verl sends it, "
        "POST /v1/executions (the floor), and POST /v1/batches; calls per second, p50/p99, "
        "and whether every verdict is the expected one and the ways agree.",
    )
    compat.add_argument(
        "--programs",
        type=positive_int,
        default=COMPAT_PROGRAMS,
        help="programs judged (default: %(default)s)",
    )
    compat.add_argument(
        "--cases",
        type=positive_int,
        default=COMPAT_CASES,
        help="test cases per program, one call each (default: %(default)s)",
    )
    compat.add_argument(
        "--in-flight",
        type=positive_int,
        default=COMPAT_IN_FLIGHT,
        help="calls in flight, and the key's in-flight cap (default: %(default)s)",
    )
    add_runtime_argument(compat)
    add_output(compat, "compat", bench_compat, summarize_compat)
