"""The paths ``scripts/bench humaneval`` judges the problems through: a SandboxPool alone, the
Ray Data pipeline (``executors.run_programs``, a local pool) and ``POST /v1/batches`` of
``exec-agent serve``; each returns its counted outcome and what it ran with."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from serve_process import ServeProcess, free_port

from executors import ExecutionRequest, SandboxConfig, SandboxPool

from .common import BENCH_LIMITS, MAX_FAILURE_EXAMPLES, MIB, reported_service
from .humaneval_data import HUMANEVAL_TIMEOUT_S, humaneval_outcome

HUMANEVAL_BATCH_WAIT_S = 30


def humaneval_engine(
    rows: Sequence[dict[str, Any]], wrong: Sequence[dict[str, Any]], slots: int
) -> dict[str, Any]:
    """A warm SandboxPool alone, ``slots`` threads: the floor under the other paths. Then the
    wrong solutions, each judged by both judges: how many passed (the goal: none)."""
    from concurrent.futures import ThreadPoolExecutor

    def requests(rows: Sequence[dict[str, Any]], judge: str) -> list[ExecutionRequest]:
        return [
            ExecutionRequest.model_validate(
                {"code": row["code"], "test_code": row["test_code"], "judge": judge}
                | {"runtime": row["runtime"], "limits": BENCH_LIMITS}
            )
            for row in rows
        ]

    pool = SandboxPool(SandboxConfig(), slots=slots)
    report = pool.start()
    wrong_passed: dict[str, list[str]] = {}
    try:
        with ThreadPoolExecutor(max_workers=slots) as threads:
            began = time.perf_counter()
            records = [
                record.to_api() for record in threads.map(pool.run, requests(rows, "isolated"))
            ]
            elapsed = time.perf_counter() - began
            for judge in ("isolated", "in_process"):
                judged = threads.map(pool.run, requests(wrong, judge))
                wrong_passed[judge] = [
                    row["task_id"]
                    for row, record in zip(wrong, judged, strict=True)
                    if record.passed
                ]
    finally:
        pool.close()
    return humaneval_outcome(rows, records, elapsed) | {
        "wrong_solutions": len(wrong),
        "wrong_passed": {judge: len(ids) for judge, ids in wrong_passed.items()},
        "wrong_passed_examples": {
            judge: ids[:MAX_FAILURE_EXAMPLES] for judge, ids in wrong_passed.items()
        },
        "slots": slots,
        "isolation": report.summary() | {"errors": report.errors},
    }


def humaneval_pipeline(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Ray Data through ``SandboxMapper`` on a local pool, on a local Ray of its own.

    The time runs from ``run_programs`` to its last row: the mapper actor and its pool start
    within it; the Ray start before it is reported apart (``ray_start_s``).
    """
    import ray
    from ray.data import DataContext

    from executors import run_programs

    gcs_variable = "RAY_GCS_SERVER_PORT"  # never Redis's 6379 nor the service's 6380
    previous = os.environ.get(gcs_variable)
    os.environ[gcs_variable] = str(free_port())
    began = time.perf_counter()
    try:
        ray.init(
            address="local",
            num_cpus=args.slots + 1,  # one per slot, and one for Ray Data's mapper and tasks
            object_store_memory=200 * MIB,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            namespace="exec-agent-bench-humaneval",
        )
    finally:
        if previous is None:
            del os.environ[gcs_variable]
        else:
            os.environ[gcs_variable] = previous
    ray_start_s = time.perf_counter() - began
    try:
        DataContext.get_current().enable_progress_bars = False
        began = time.perf_counter()
        records = run_programs(
            rows,
            mapper_options={
                "backend": "local",
                "max_in_flight": args.max_in_flight,
                "local_slots": args.slots,
                "default_limits": BENCH_LIMITS,
                "max_limits": BENCH_LIMITS,
                "sandbox_config": SandboxConfig(),
            },
            batch_size=args.batch_size,
        )
        elapsed = time.perf_counter() - began
    finally:
        ray.shutdown()
    return humaneval_outcome(rows, records, elapsed) | {
        "ray_start_s": round(ray_start_s, 2),
        "slots": args.slots,
        "max_in_flight": args.max_in_flight,
        "batch_size": args.batch_size,
    }


def humaneval_http(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """``POST /v1/batches`` of every problem to ``exec-agent serve`` (its default ingress), then
    ``GET /v1/batches/{id}`` until done; the time runs from the POST to the last record."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as tmp:
        extra_env = {"MAX_CONCURRENT_EXECUTIONS": str(args.slots)}
        service = ServeProcess(Path(tmp), slots=None, executor_queue=None, extra_env=extra_env)
        with reported_service(service, result):
            key = service.create_key("bench-proxy")
            result["start_s"] = round(service.start(), 2)
            headers = {"Authorization": f"Bearer {key}"}
            items = [
                {
                    "code": row["code"],
                    "test_code": row["test_code"],
                    "runtime": row["runtime"],
                    "limits": BENCH_LIMITS.to_api(),
                }
                for row in rows
            ]
            with httpx.Client(base_url=service.url, headers=headers, timeout=120.0) as client:
                ready = client.get("/health/ready").json()
                began = time.perf_counter()
                created = client.post("/v1/batches", json={"items": items})
                if created.status_code != 202:
                    raise RuntimeError(
                        f"POST /v1/batches: {created.status_code} {created.text[:300]}"
                    )
                batch_id = created.json()["id"]
                deadline = began + HUMANEVAL_TIMEOUT_S
                while True:
                    answer = client.get(
                        f"/v1/batches/{batch_id}", params={"wait_s": HUMANEVAL_BATCH_WAIT_S}
                    )
                    answer.raise_for_status()
                    batch = answer.json()
                    if batch["status"] == "done":
                        break
                    if time.perf_counter() > deadline:
                        raise RuntimeError(
                            f"batch not done in {HUMANEVAL_TIMEOUT_S} s: {batch['done']}/{batch['total']}"
                        )
                elapsed = time.perf_counter() - began
            result |= humaneval_outcome(rows, batch["items"], elapsed)
            result["isolation"] = ready.get("checks", {}).get("sandbox")
            result["slots"] = args.slots
    return result
