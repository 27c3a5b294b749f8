"""``scripts/bench sandbox``: the engine (a warm SandboxPool) against a fresh ``python -I -S``
per execution, from the same clients and as many times; their ratio, and the isolation layers
in force."""

from __future__ import annotations

import argparse
import time
from typing import Any

from serve_process import positive_int

from executors import SandboxConfig, SandboxPool

from .common import (
    BENCH_LIMITS,
    DEFAULT_CODE,
    DEFAULT_CODE_STDOUT,
    add_output,
    add_runtime_argument,
    expected_stdout,
    host_info,
    non_negative_int,
    rounded_ratio,
    timestamp,
)
from .measure import engine_task, fresh_task, measure_both

THROUGHPUT_GOAL = 2.5
"""The engine must run trivial programs at least this many times faster than fresh processes
(issue 12)."""
THROUGHPUT_STRETCH = 5.0
"""The stretch goal of the same ratio (reported, never required)."""


def bench_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    expect = expected_stdout(args)

    pool = SandboxPool(config, slots=args.slots)
    began = time.perf_counter()
    report = pool.start()
    try:
        engine = {"slots": args.slots, "start_s": round(time.perf_counter() - began, 4)}
        engine |= measure_both(engine_task(pool, args.code, expect, args.runtime), args)
    finally:
        pool.close()
    isolation = report.summary() | {"errors": report.errors}
    # The pool is closed before the baseline runs: its idle slots take nothing from it.
    fresh = measure_both(fresh_task(config.python_executable, args.code, expect), args)

    ratio = {
        "throughput": rounded_ratio(
            engine["parallel"]["throughput_per_s"], fresh["parallel"]["throughput_per_s"]
        ),
        "p50_latency": rounded_ratio(
            fresh["parallel"]["latency_ms"]["p50"], engine["parallel"]["latency_ms"]["p50"]
        ),
        "sequential_p50_latency": rounded_ratio(
            fresh["sequential"]["latency_ms"]["p50"], engine["sequential"]["latency_ms"]["p50"]
        ),
    }
    failed = sum(
        part[mode]["failed"] for part in (engine, fresh) for mode in ("parallel", "sequential")
    )
    return {
        "benchmark": "sandbox",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "n": args.n,
            "warmup": args.warmup,
            "clients": args.clients,
            "slots": args.slots,
            "code": args.code,
            "runtime": args.runtime,
            "expect_stdout": expect,
            "limits": BENCH_LIMITS.to_api(),
            "fresh_command": [config.python_executable, "-I", "-S", "-c", args.code],
        },
        "engine": engine,
        "fresh_subprocess": fresh,
        "ratio": ratio,
        "goal": {
            "throughput_ratio": THROUGHPUT_GOAL,
            "throughput_stretch": THROUGHPUT_STRETCH,
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
        f"goal x{goal['throughput_ratio']} (stretch x{goal['throughput_stretch']}): "
        f"{'met' if goal['met'] else 'NOT met'}"
    )
    if result["failed"]:
        lines.append(f"  FAILED EXECUTIONS: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench sandbox``."""
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
    add_runtime_argument(sandbox)
    sandbox.add_argument(
        "--expect-stdout",
        default=None,
        help=f"the stdout every execution must give (default: {DEFAULT_CODE_STDOUT!r} for the "
        "default program, else unchecked; status ok / exit 0 is always checked)",
    )
    add_output(sandbox, "sandbox", bench_sandbox, summarize_sandbox)
