"""Benchmarks of the Python Execution Agent: scripts/bench BENCHMARK [options].

Each benchmark writes its results as JSON under ``bench-results/`` (by default), prints the
same JSON on stdout and a short human summary on stderr.

    sandbox     the engine (a warm SandboxPool) against a fresh ``python -I -S`` per execution
    streaming   ``exec-agent serve`` (embedded): a print's way to the client over SSE and the
                WebSocket (p50, p99; a local pipe's as the floor), and what streaming adds to a
                print(1) run against a plain one
    http        ``exec-agent serve`` (embedded) through each ingress, loaded by ``wrk``:
                executions and /health, beside a fresh ``python -I -S`` per execution measured
                in the same run
    burst       an RL trainer's burst: 128 connections of one key (allowed 128 in flight) for
                20 s; every answer a 200, every answered execution stored, none left unfinished
    humaneval   HumanEval's canonical solutions judged by the engine, the Ray Data pipeline and
                POST /v1/batches, against OpenAI's own harness
    all         every benchmark above in turn, and every goal met or not in one list

Exit status: 0 when every execution gave the expected result, 1 when any failed (the results
are still written: a failure is reported, not hidden), 2 on bad arguments.

This file is the entry point; the benchmarks live in ``benchlib/`` (its docstring maps them).
The names below are re-exported for the tests, which load this file by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if SCRIPTS_DIR not in sys.path:  # loaded by path (as the tests do), not run as a script
    sys.path.insert(0, SCRIPTS_DIR)
from benchlib.cli import build_parser, main  # noqa: E402
from benchlib.http import engine_share, http_goal_met, http_ratios  # noqa: E402
from benchlib.humaneval_data import (  # noqa: E402
    humaneval_outcome,
    humaneval_problems,
    humaneval_rows,
)
from benchlib.humaneval_reference import enable_reference_exec  # noqa: E402
from benchlib.wrk import WrkTarget, lua_string, parse_wrk_output, run_wrk, wrk_measurement  # noqa: E402
from serve_process import percentile  # noqa: E402

__all__ = [
    "WrkTarget",
    "build_parser",
    "enable_reference_exec",
    "engine_share",
    "http_goal_met",
    "http_ratios",
    "humaneval_outcome",
    "humaneval_problems",
    "humaneval_rows",
    "lua_string",
    "main",
    "parse_wrk_output",
    "percentile",
    "run_wrk",
    "wrk_measurement",
]

if __name__ == "__main__":
    sys.exit(main())
