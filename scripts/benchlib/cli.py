"""The command line of ``scripts/bench``: one subcommand per benchmark; the chosen one runs, its
JSON is written (and printed), its summary goes to stderr, and the exit status says whether
every execution gave the expected result."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import burst, compat, http, humaneval, runtimes, sandbox, sessions, streaming, suite
from .common import write_result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of the Python Execution Agent: scripts/bench BENCHMARK [options].",
        epilog="Exit status: 0 all executions as expected, 1 some failed, 2 bad arguments.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for benchmark in (sandbox, runtimes, sessions, streaming, http, burst, compat, humaneval):
        benchmark.add_parser(benchmarks)
    suite.add_parser(benchmarks, parser.parse_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = args.run(args)
    write_result(result, args.out)
    print(args.summarize(result), file=sys.stderr)
    print(f"  results: {args.out}", file=sys.stderr)
    return 1 if result.get("failed") else 0
