"""What the benchmarks share: the fixed limits and program, host facts, the JSON output, and a
served ``exec-agent serve`` whose failure is reported rather than raised."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_process import REPO_ROOT, ServeProcess

from executors import Limits, SandboxConfig

RESULTS_DIR = REPO_ROOT / "bench-results"
MIB = 1024 * 1024

DEFAULT_CODE = "print(1)"
DEFAULT_CODE_STDOUT = "1\n"
MAX_FAILURE_EXAMPLES = 5

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


def expected_stdout(args: argparse.Namespace) -> str | None:
    """``--expect-stdout``; unset, ``print(1)``'s output for the default program, else None."""
    expect: str | None = args.expect_stdout
    if expect is None and args.code == DEFAULT_CODE:
        return DEFAULT_CODE_STDOUT
    return expect


def short(text: str | bytes, limit: int = 80) -> str:
    """``text`` (bytes decoded) cut to ``limit`` characters, as a repr for a failure message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def rounded_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to two places; None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    """The JSON to ``out`` (its directories made) and the same to stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def add_output(
    parser: argparse.ArgumentParser,
    name: str,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    summarize: Callable[[dict[str, Any]], str],
) -> None:
    """A benchmark's last option, ``--out`` (bench-results/NAME.json by default), and the
    functions that run it and sum its result up for stderr."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help=f"where to write the JSON (default: bench-results/{name}.json)",
    )
    parser.set_defaults(run=run, summarize=summarize)


@contextlib.contextmanager
def reported_service(service: ServeProcess, result: dict[str, Any]) -> Iterator[None]:
    """Run the block against ``service``: a failure in it goes to ``result["error"]`` (with the
    service's log tail), not up; then drain the service (SIGINT, its exit status in
    ``result["drain_exit_status"]``) and end what Ray left behind in its process group."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a part that cannot run is reported, not fatal
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["drain_exit_status"] = service.stop(drain_signal=signal.SIGINT)
        service.kill_group()
        if "error" in result:
            result["log_tail"] = service.log_tail(25)


def add_runtime_argument(parser: Any) -> None:
    """``--runtime``: the runtime the benchmark's programs name (default ``minimal``: these
    benchmarks measure the service's path against baselines that import nothing (a fresh
    ``python -I -S``, OpenAI's harness);
    what a runtime's preloading costs is ``scripts/bench runtimes``' to measure)."""
    parser.add_argument(
        "--runtime",
        default="minimal",
        help="the runtime the programs run in (default: %(default)s; the service's default is "
        "scientific, whose cost scripts/bench runtimes measures)",
    )
