"""``scripts/bench runtimes``: the scientific runtime through the engine against a fresh
``python -I`` of the same environment doing the same work (issue 13's goal: 20x per execution);
what preloading adds to ``print(1)`` against ``minimal``; and each runtime's memory per idle
slot (its zygote and the spare it keeps ready: proportional set sizes)."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from serve_process import positive_int

from executors import (
    MINIMAL,
    RUNTIMES,
    SCIENTIFIC,
    ExecutionRequest,
    ExecutionStatus,
    SandboxConfig,
    SandboxPool,
)

from .common import (
    BENCH_LIMITS,
    add_output,
    host_info,
    non_negative_int,
    rounded_ratio,
    short,
    timestamp,
)
from .measure import FRESH_TIMEOUT_S, Task, measure

SPEEDUP_GOAL = 20.0
"""The engine must run the scientific workload at least this many times faster per execution
than a fresh interpreter (issue 13)."""
WORKLOAD = (
    "import numpy, pandas, matplotlib.pyplot as plt\n"
    "df = pandas.DataFrame({'x': range(100), 'y': [i * i for i in range(100)]})\n"
    "print(int(df['y'].sum()))\n"
    "plt.plot(df['x'], df['y'])\n"
    "plt.savefig('out/plot.png')\n"
    "plt.close()\n"  # both sides draw one figure: the engine would save an open one again
)
WORKLOAD_STDOUT = "328350\n"
PRINT_CODE = "print(1)"


def engine_task(pool: SandboxPool, code: str, runtime: str, stdout: str) -> Task:
    request = ExecutionRequest(code=code, limits=BENCH_LIMITS, runtime=runtime)

    def run() -> str | None:
        record = pool.run(request)
        if record.status != ExecutionStatus.OK or record.stdout != stdout:
            return f"status {record.status.value}, stdout {short(record.stdout)}, stderr {short(record.stderr)}"
        if code == WORKLOAD and [a.path for a in record.artifacts] != ["out/plot.png"]:
            return f"artifacts {[a.path for a in record.artifacts]}"
        return None

    return run


def fresh_task(config: SandboxConfig, workdir: Path) -> Task:
    """A fresh ``python -I`` with the runtime's packages on its path and the runtime's
    environment, in a working directory with ``out/``, as the sandbox gives its programs."""
    runtime = RUNTIMES[SCIENTIFIC]
    site_packages = runtime.site_packages(config.runtimes_dir)
    bootstrap = f"import sys; sys.path.append({str(site_packages)!r}); exec(sys.stdin.read())"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **runtime.env}
    env["MPLCONFIGDIR"] = str(workdir / "mplconfig")  # its font list built once, below
    (workdir / "out").mkdir(exist_ok=True)
    argv = [config.python_executable, "-I", "-c", bootstrap]

    def run() -> str | None:
        done = subprocess.run(
            argv,
            input=WORKLOAD.encode(),
            capture_output=True,
            cwd=workdir,
            env=env,
            timeout=FRESH_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or done.stdout != WORKLOAD_STDOUT.encode():
            return (
                f"exit {done.returncode}, stdout {short(done.stdout)}, stderr {short(done.stderr)}"
            )
        return None

    return run


def idle_memory(pool: SandboxPool) -> dict[str, dict[str, float]]:
    """Per runtime, per slot: the zygote's and its ready spare's proportional set size (what
    the slot costs the machine beyond what the processes share), and their unique set size."""
    memory: dict[str, dict[str, float]] = {}
    for runtime, pids in pool.zygote_pids().items():
        pss = uss = 0
        for pid in pids:
            zygote = psutil.Process(pid)
            for process in (zygote, *zygote.children(recursive=True)):
                info = process.memory_full_info()
                pss += info.pss
                uss += info.uss
        memory[runtime] = {
            "pss_mib_per_slot": round(pss / len(pids) / 2**20, 1),
            "uss_mib_per_slot": round(uss / len(pids) / 2**20, 1),
        }
    return memory


def _timed(task: Task, n: int, clients: int) -> dict[str, Any]:
    return measure(task, n, clients).to_json()


def bench_runtimes(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig(default_runtime=SCIENTIFIC)
    pool = SandboxPool(config, slots=args.slots)
    began = time.perf_counter()
    pool.start()
    start_s = time.perf_counter() - began
    try:
        scientific = engine_task(pool, WORKLOAD, SCIENTIFIC, WORKLOAD_STDOUT)
        prints = {rt: engine_task(pool, PRINT_CODE, rt, "1\n") for rt in (MINIMAL, SCIENTIFIC)}
        for task in (scientific, *prints.values()):  # every runtime's zygotes started, warm
            measure(task, args.warmup + args.slots, args.slots)
        engine = {
            "sequential": _timed(scientific, args.n, 1),
            "parallel": _timed(scientific, args.n, args.slots),
        }
        print_one = {rt: _timed(task, args.n_print, args.slots) for rt, task in prints.items()}
        memory = idle_memory(pool)
    finally:
        pool.close()
    with tempfile.TemporaryDirectory(prefix="exec-agent-bench-") as tmp:
        fresh_run = fresh_task(config, Path(tmp))
        measure(fresh_run, 1, 1)  # builds matplotlib's font list once, as the runtime has
        fresh = {
            "sequential": _timed(fresh_run, args.n_fresh, 1),
            "parallel": _timed(fresh_run, args.n_fresh, args.slots),
        }
    speedup = {
        "per_execution_p50": rounded_ratio(
            fresh["sequential"]["latency_ms"]["p50"], engine["sequential"]["latency_ms"]["p50"]
        ),
        "throughput": rounded_ratio(
            engine["parallel"]["throughput_per_s"], fresh["parallel"]["throughput_per_s"]
        ),
    }
    parts = [*engine.values(), *fresh.values(), *print_one.values()]
    failed = sum(part["failed"] for part in parts)
    minimal, sci = print_one[MINIMAL], print_one[SCIENTIFIC]
    return {
        "benchmark": "runtimes",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "slots": args.slots,
            "n": args.n,
            "n_fresh": args.n_fresh,
            "n_print": args.n_print,
            "workload": WORKLOAD,
            "limits": BENCH_LIMITS.to_api(),
            "preloaded": list(RUNTIMES[SCIENTIFIC].preload),
            "pool_start_s": round(start_s, 3),
        },
        "scientific_engine": engine,
        "scientific_fresh_python": fresh,
        "speedup": speedup,
        "print_1": print_one,
        "preload_cost": {
            "print_1_p50_ms_added": round(
                sci["latency_ms"]["p50"] - minimal["latency_ms"]["p50"], 3
            ),
            "print_1_throughput_ratio": rounded_ratio(
                sci["throughput_per_s"], minimal["throughput_per_s"]
            ),
        },
        "idle_memory": memory,
        "goal": {
            "speedup": SPEEDUP_GOAL,
            "met": failed == 0
            and speedup["per_execution_p50"] is not None
            and speedup["per_execution_p50"] >= SPEEDUP_GOAL,
        },
        "failed": failed,
    }


def summarize_runtimes(result: dict[str, Any]) -> str:
    engine, fresh = result["scientific_engine"], result["scientific_fresh_python"]
    speedup, goal = result["speedup"], result["goal"]
    lines = [
        f"runtimes: numpy + pandas + pyplot, a DataFrame sum and a saved plot; "
        f"{result['config']['slots']} slots",
    ]
    for name, part in (("engine (scientific)", engine), ("fresh python -I", fresh)):
        seq, par = part["sequential"], part["parallel"]
        lines.append(
            f"  {name:<20} alone p50 {seq['latency_ms']['p50']:.1f} ms  |  "
            f"{par['clients']} clients {par['throughput_per_s']:.2f}/s"
        )
    lines.append(
        f"  speedup per execution x{speedup['per_execution_p50']}, throughput "
        f"x{speedup['throughput']}; goal x{goal['speedup']}: {'met' if goal['met'] else 'NOT met'}"
    )
    for runtime, part in result["print_1"].items():
        lines.append(
            f"  print(1) in {runtime:<10} {part['throughput_per_s']:.1f}/s  "
            f"p50 {part['latency_ms']['p50']:.2f} ms"
        )
    cost = result["preload_cost"]
    lines.append(
        f"  preloading adds {cost['print_1_p50_ms_added']} ms to print(1) at p50 "
        f"(throughput x{cost['print_1_throughput_ratio']} of minimal's)"
    )
    for runtime, memory in result["idle_memory"].items():
        lines.append(
            f"  idle slot, {runtime:<10} PSS {memory['pss_mib_per_slot']} MiB, "
            f"USS {memory['uss_mib_per_slot']} MiB"
        )
    if result["failed"]:
        lines.append(f"  FAILED EXECUTIONS: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench runtimes``."""
    parser = benchmarks.add_parser(
        "runtimes",
        help="the scientific runtime through the engine against a fresh python -I",
        description="numpy, pandas and matplotlib: a DataFrame sum and a saved plot, through "
        "the engine (scientific runtime, preloaded) and as a fresh `python -I` of the same "
        "environment; print(1) in each runtime; each runtime's memory per idle slot.",
    )
    parser.add_argument(
        "--n", type=positive_int, default=40, help="engine runs (default: %(default)s)"
    )
    parser.add_argument(
        "--n-fresh", type=positive_int, default=8, help="fresh runs (default: %(default)s)"
    )
    parser.add_argument(
        "--n-print",
        type=positive_int,
        default=200,
        help="print(1) runs per runtime (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=4,
        help="unmeasured runs first (default: %(default)s)",
    )
    parser.add_argument(
        "--slots", type=positive_int, default=2, help="slots (default: %(default)s)"
    )
    add_output(parser, "runtimes", bench_runtimes, summarize_runtimes)
