"""``scripts/bench.py``: the structure of its results and that the counts add up (never timings)."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from executors import ISOLATION_LAYERS

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "min", "max"}


@functools.cache
def load_bench() -> ModuleType:
    """scripts/ is not a package: load the script as a module by path."""
    spec = importlib.util.spec_from_file_location("bench_script", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_percentile_interpolates_between_ranks() -> None:
    percentile = load_bench().percentile
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize("argv", [[], ["sandbox", "--n", "0"], ["sandbox", "--clients", "-1"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().build_parser().parse_args(argv)
    assert exc.value.code == 2


def check_measurement(part: dict, clients: int, executions: int) -> None:
    assert part["clients"] == clients
    assert part["executions"] == executions
    assert part["ok"] + part["failed"] == executions
    assert part["failed"] == 0, part["failure_examples"]
    assert part["failure_examples"] == []
    assert part["elapsed_s"] > 0
    assert part["throughput_per_s"] > 0
    assert set(part["latency_ms"]) == LATENCY_KEYS
    assert all(value > 0 for value in part["latency_ms"].values())


@pytest.mark.sandbox
def test_sandbox_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "sandbox.json"
    argv = [sys.executable, str(BENCH), "sandbox", "--n", "20", "--warmup", "2", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "ratio: throughput" in done.stderr

    assert result["benchmark"] == "sandbox"
    assert {"cpus", "kernel", "python"} <= set(result["host"])
    assert result["config"]["n"] == 20
    assert (result["config"]["clients"], result["config"]["slots"]) == (2, 2)
    assert result["engine"]["slots"] == 2
    for part in (result["engine"], result["fresh_subprocess"]):
        check_measurement(part["parallel"], clients=2, executions=20)
        check_measurement(part["sequential"], clients=1, executions=20)
    assert result["failed"] == 0

    assert set(result["ratio"]) == {"throughput", "p50_latency", "sequential_p50_latency"}
    assert all(value > 0 for value in result["ratio"].values())
    assert result["goal"]["throughput_ratio"] == 5.0
    assert isinstance(result["goal"]["met"], bool)

    isolation = result["isolation"]
    assert set(isolation["layers"]) | set(isolation["missing"]) == set(ISOLATION_LAYERS)
    assert isolation["ok"] == (not isolation["missing"])
