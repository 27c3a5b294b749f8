"""Timing a task from client threads, and the two tasks the benchmarks time that way: one run
through a warm SandboxPool, and the floor: a fresh ``python -I -S -c CODE`` per execution."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_process import percentile

from executors import ExecutionRequest, ExecutionStatus, SandboxPool

from .common import BENCH_LIMITS, MAX_FAILURE_EXAMPLES, short

FRESH_TIMEOUT_S = 30.0

Task = Callable[[], str | None]
"""One execution: returns None when it gave the expected result, else why not."""


@dataclass(frozen=True)
class Measurement:
    clients: int
    latencies_s: list[float]
    failures: list[str]
    """One reason per failed execution, in completion order."""
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        executions = len(self.latencies_s)
        ms = [value * 1000 for value in self.latencies_s]
        return {
            "clients": self.clients,
            "executions": executions,
            "ok": executions - len(self.failures),
            "failed": len(self.failures),
            "failure_examples": self.failures[:MAX_FAILURE_EXAMPLES],
            "elapsed_s": round(self.elapsed_s, 4),
            "throughput_per_s": round(executions / self.elapsed_s, 2) if self.elapsed_s else None,
            "latency_ms": {
                "p50": round(percentile(ms, 50), 3),
                "p90": round(percentile(ms, 90), 3),
                "p99": round(percentile(ms, 99), 3),
                "mean": round(statistics.fmean(ms), 3),
                "min": round(min(ms), 3),
                "max": round(max(ms), 3),
            },
        }


def measure(task: Task, executions: int, clients: int) -> Measurement:
    """Run ``task`` ``executions`` times from ``clients`` threads, all starting together.

    Latency is client-side, around each call; the window runs from the common start to the
    last call's end.
    """
    lock = threading.Lock()
    taken = 0
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        nonlocal taken
        start.wait()
        while True:
            with lock:
                if taken >= executions:
                    return
                taken += 1
            began = time.perf_counter()
            try:
                reason = task()
            except Exception as exc:  # noqa: BLE001 - counted and reported as a failure, never fatal to the run
                reason = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - began
            with lock:
                latencies.append(latency)
                if reason is not None:
                    failures.append(reason)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Measurement(clients, latencies, failures, time.perf_counter() - began)


def measure_both(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then ``parallel`` (``--clients`` threads) and ``sequential`` (one client)."""
    if args.warmup:
        measure(task, args.warmup, args.clients)
    return {
        "parallel": measure(task, args.n, args.clients).to_json(),
        "sequential": measure(task, args.n, 1).to_json(),
    }


def engine_task(
    pool: SandboxPool, code: str, expect_stdout: str | None, runtime: str | None = None
) -> Task:
    request = ExecutionRequest(code=code, limits=BENCH_LIMITS, runtime=runtime)

    def run() -> str | None:
        record = pool.run(request)
        if record.status != ExecutionStatus.OK:
            return f"status {record.status.value} (exit {record.exit_code}, signal {record.signal}), stderr {short(record.stderr)}"
        if expect_stdout is not None and record.stdout != expect_stdout:
            return f"stdout {short(record.stdout)}, expected {short(expect_stdout)}"
        return None

    return run


def fresh_task(python: str, code: str, expect_stdout: str | None) -> Task:
    argv = [python, "-I", "-S", "-c", code]
    expected = None if expect_stdout is None else expect_stdout.encode()

    def run() -> str | None:
        done = subprocess.run(argv, capture_output=True, timeout=FRESH_TIMEOUT_S, check=False)
        if done.returncode != 0:
            return f"exit {done.returncode}, stderr {short(done.stderr)}"
        if expected is not None and done.stdout != expected:
            return f"stdout {short(done.stdout)}, expected {short(expected)}"
        return None

    return run
