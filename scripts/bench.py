"""Benchmarks of the Python Execution Agent: scripts/bench BENCHMARK [options].

Each benchmark writes its results as JSON under ``bench-results/`` (by default), prints the
same JSON on stdout and a short human summary on stderr.

    sandbox   the engine (a warm SandboxPool) against a fresh ``python -I -S`` per execution

Exit status: 0 when every execution gave the expected result, 1 when any failed (the results
are still written: a failure is reported, not hidden), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from executors import ExecutionRequest, ExecutionStatus, Limits, SandboxConfig, SandboxPool

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench-results"
MIB = 1024 * 1024

DEFAULT_CODE = "print(1)"
DEFAULT_CODE_STDOUT = "1\n"
THROUGHPUT_GOAL = 5.0
"""The engine must run trivial programs at least this many times faster than fresh processes."""
MAX_FAILURE_EXAMPLES = 5
FRESH_TIMEOUT_S = 30.0

# The service's default limits (serve_app.settings: DEFAULT_TIMEOUT, DEFAULT_MEMORY_MB, ...),
# fixed here so that a .env or the environment cannot change what is measured.
BENCH_LIMITS = Limits(
    wall_timeout_s=5.0,
    cpu_time_s=5.0,
    memory_bytes=256 * MIB,
    max_output_bytes=1 * MIB,
    max_processes=64,
    max_file_bytes=16 * MIB,
    disk_bytes=64 * MIB,
)

Task = Callable[[], str | None]
"""One execution: returns None when it gave the expected result, else why not."""


# --------------------------------------------------------------------------- measuring


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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


def _short(text: str | bytes, limit: int = 80) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- sandbox


def engine_task(pool: SandboxPool, code: str, expect_stdout: str | None) -> Task:
    request = ExecutionRequest(code=code, limits=BENCH_LIMITS)

    def run() -> str | None:
        record = pool.run(request)
        if record.status != ExecutionStatus.OK:
            return f"status {record.status.value} (exit {record.exit_code}, signal {record.signal}), stderr {_short(record.stderr)}"
        if expect_stdout is not None and record.stdout != expect_stdout:
            return f"stdout {_short(record.stdout)}, expected {_short(expect_stdout)}"
        return None

    return run


def fresh_task(python: str, code: str, expect_stdout: str | None) -> Task:
    argv = [python, "-I", "-S", "-c", code]
    expected = None if expect_stdout is None else expect_stdout.encode()

    def run() -> str | None:
        done = subprocess.run(argv, capture_output=True, timeout=FRESH_TIMEOUT_S, check=False)
        if done.returncode != 0:
            return f"exit {done.returncode}, stderr {_short(done.stderr)}"
        if expected is not None and done.stdout != expected:
            return f"stdout {_short(done.stdout)}, expected {_short(expected)}"
        return None

    return run


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def bench_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    expect = args.expect_stdout
    if expect is None and args.code == DEFAULT_CODE:
        expect = DEFAULT_CODE_STDOUT

    pool = SandboxPool(config, slots=args.slots)
    began = time.perf_counter()
    report = pool.start()
    try:
        engine = {"slots": args.slots, "start_s": round(time.perf_counter() - began, 4)}
        engine |= measure_both(engine_task(pool, args.code, expect), args)
    finally:
        pool.close()
    isolation = report.summary() | {"errors": report.errors}
    # The pool is closed before the baseline runs: its idle slots take nothing from it.
    fresh = measure_both(fresh_task(config.python_executable, args.code, expect), args)

    ratio = {
        "throughput": _ratio(
            engine["parallel"]["throughput_per_s"], fresh["parallel"]["throughput_per_s"]
        ),
        "p50_latency": _ratio(
            fresh["parallel"]["latency_ms"]["p50"], engine["parallel"]["latency_ms"]["p50"]
        ),
        "sequential_p50_latency": _ratio(
            fresh["sequential"]["latency_ms"]["p50"], engine["sequential"]["latency_ms"]["p50"]
        ),
    }
    failed = sum(
        part[mode]["failed"] for part in (engine, fresh) for mode in ("parallel", "sequential")
    )
    return {
        "benchmark": "sandbox",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_info(config),
        "config": {
            "n": args.n,
            "warmup": args.warmup,
            "clients": args.clients,
            "slots": args.slots,
            "code": args.code,
            "expect_stdout": expect,
            "limits": BENCH_LIMITS.to_api(),
            "fresh_command": [config.python_executable, "-I", "-S", "-c", args.code],
        },
        "engine": engine,
        "fresh_subprocess": fresh,
        "ratio": ratio,
        "goal": {
            "throughput_ratio": THROUGHPUT_GOAL,
            # Figures from failed executions prove nothing: the goal needs them all to succeed.
            "met": failed == 0
            and ratio["throughput"] is not None
            and ratio["throughput"] >= THROUGHPUT_GOAL,
        },
        "failed": failed,
        "isolation": isolation,
    }


def summarize_sandbox(result: dict[str, Any]) -> str:
    config, iso = result["config"], result["isolation"]
    layers = len(iso["layers"])
    total = layers + len(iso["missing"])
    lines = [
        f"sandbox: {config['n']} executions of {config['code']!r} per measurement, "
        f"{config['clients']} clients, {config['slots']} slots",
        f"  isolation: mode {iso['mode']}, {layers}/{total} layers"
        + (f", MISSING {', '.join(iso['missing'])}" if iso["missing"] else " (complete)"),
    ]
    for name, part in (
        ("engine", result["engine"]),
        ("fresh subprocess", result["fresh_subprocess"]),
    ):
        par, seq = part["parallel"], part["sequential"]
        lat = par["latency_ms"]
        lines.append(
            f"  {name:<17} {par['throughput_per_s']:>8.1f}/s  p50 {lat['p50']:.2f} ms  "
            f"p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  mean {lat['mean']:.2f}  |  alone: "
            f"p50 {seq['latency_ms']['p50']:.2f} ms  p99 {seq['latency_ms']['p99']:.2f}  |  "
            f"failed {par['failed'] + seq['failed']}"
        )
    ratio, goal = result["ratio"], result["goal"]
    lines.append(
        f"  ratio: throughput x{ratio['throughput']}, p50 latency x{ratio['p50_latency']}; "
        f"goal x{goal['throughput_ratio']}: {'met' if goal['met'] else 'NOT met'}"
    )
    if result["failed"]:
        lines.append(f"  FAILED EXECUTIONS: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- common


def host_info(config: SandboxConfig) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "sandbox_python": config.python_executable,
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 all executions as expected, 1 some failed, 2 bad arguments.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    sandbox = benchmarks.add_parser(
        "sandbox",
        help="the engine (warm SandboxPool) against a fresh python subprocess per execution",
        description="Run a trivial program through a SandboxPool and as a fresh "
        "`python -I -S -c` subprocess per execution, with the same clients and count; "
        "report latency, throughput and their ratio, with the isolation layers in force.",
    )
    sandbox.add_argument(
        "--n",
        type=positive_int,
        default=400,
        help="executions per measurement (default: %(default)s)",
    )
    sandbox.add_argument(
        "--warmup",
        type=non_negative_int,
        default=20,
        help="unmeasured executions first (default: %(default)s)",
    )
    sandbox.add_argument(
        "--clients",
        type=positive_int,
        default=2,
        help="parallel client threads (default: %(default)s)",
    )
    sandbox.add_argument(
        "--slots",
        type=positive_int,
        default=2,
        help="sandbox slots in the pool (default: %(default)s)",
    )
    sandbox.add_argument("--code", default=DEFAULT_CODE, help="the program (default: %(default)r)")
    sandbox.add_argument(
        "--expect-stdout",
        default=None,
        help=f"the stdout every execution must give (default: {DEFAULT_CODE_STDOUT!r} for the "
        "default program, else unchecked; status ok / exit 0 is always checked)",
    )
    sandbox.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "sandbox.json",
        help="where to write the JSON (default: bench-results/sandbox.json)",
    )
    sandbox.set_defaults(run=bench_sandbox, summarize=summarize_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = args.run(args)
    write_result(result, args.out)
    print(args.summarize(result), file=sys.stderr)
    print(f"  results: {args.out}", file=sys.stderr)
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
