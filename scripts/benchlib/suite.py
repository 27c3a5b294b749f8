"""``scripts/bench all``: every benchmark in turn with its defaults, one after the other (never
two at once: each needs the machine's cores), each beside its own floor; their JSON together,
their summaries, and every goal met or not in one list."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .common import add_output, write_result

__all__ = ["SUITE", "add_parser", "goals_met", "run_suite", "summarize_suite"]

SUITE = ("sandbox", "runtimes", "sessions", "streaming", "http", "burst", "compat", "humaneval")
"""The benchmarks ``all`` runs, cheapest first."""

ParseArgs = Callable[[list[str]], argparse.Namespace]


def goals_met(result: dict[str, Any]) -> dict[str, bool]:
    """A benchmark's goals as ``name: met`` (its ``goal["met"]``, one or per mode or path;
    else its goal's yes/no entries)."""
    goal = result.get("goal") or {}
    met = goal.get("met")
    if isinstance(met, bool):
        return {"": met}
    if isinstance(met, dict):
        return {str(name): bool(value) for name, value in met.items()}
    return {str(name): value for name, value in goal.items() if isinstance(value, bool)}


def run_suite(args: argparse.Namespace, parse: ParseArgs) -> dict[str, Any]:
    """Each benchmark of :data:`SUITE` as ``scripts/bench NAME --out DIR/NAME.json`` would run
    it; a benchmark that raises is reported and the others still run."""
    results: dict[str, Any] = {}
    for name in SUITE:
        own = parse([name, "--out", str(args.out.parent / f"{name}.json")])
        try:
            result: dict[str, Any] = own.run(own)
        except Exception as exc:  # noqa: BLE001 - one benchmark's failure is reported, not fatal
            result = {"benchmark": name, "error": f"{type(exc).__name__}: {exc}", "failed": 1}
        else:
            write_result(result, own.out)
            result["summary"] = own.summarize(result)
        results[name] = result
    return {
        "benchmark": "all",
        "results": results,
        "goals": {name: goals_met(result) for name, result in results.items()},
        "failed": sum(int(result.get("failed") or 0) for result in results.values()),
    }


def summarize_suite(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, part in result["results"].items():
        lines.append(part.get("summary") or f"{name}: ERROR {part.get('error')}")
    lines.append("goals:")
    for name, goals in result["goals"].items():
        for goal, met in goals.items():
            label = f"{name} {goal}".strip()
            lines.append(f"  {label:<28} {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def add_parser(benchmarks: Any, parse: ParseArgs) -> None:
    """``scripts/bench all``."""
    suite = benchmarks.add_parser(
        "all",
        help="every benchmark in turn with its defaults, and every goal met or not",
        description="Run " + ", ".join(SUITE) + " one after the other with their defaults, "
        "each beside its own floor, and list every goal met or not; each writes its own JSON "
        "beside --out, which gets them all.",
    )
    add_output(suite, "all", lambda args: run_suite(args, parse), summarize_suite)
