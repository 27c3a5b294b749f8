"""The soak's report: the requests summed up (by kind, HTTP status, error code, execution status,
latency), the verdict (why it failed, if it did) and the summary for stderr."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from serve_process import percentile

from .load import Outcome
from .records import MAX_EXAMPLES

MIB = 1024 * 1024


def latency(outcomes: list[Outcome]) -> dict[str, Any]:
    ms = [o.latency_s * 1000 for o in outcomes]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "count": len(ms),
        "p50_ms": rounded(percentile(ms, 50) if ms else None),
        "p99_ms": rounded(percentile(ms, 99) if ms else None),
        "max_ms": rounded(max(ms) if ms else None),
    }


def summarize_requests(outcomes: list[Outcome]) -> dict[str, Any]:
    kinds = sorted({o.kind for o in outcomes})
    problems = [o for o in outcomes if o.problem]
    return {
        "total": len(outcomes),
        "by_http_status": counts(
            str(o.http_status) if o.http_status else "no answer" for o in outcomes
        ),
        "by_error_code": counts(o.error_code for o in outcomes if o.error_code),
        # Of the answered runs (``wait: true``); background runs end later (see the report's
        # ``background_final_status``).
        "by_execution_status": counts(
            o.exec_status for o in outcomes if o.exec_status and o.kind != "background"
        ),
        "by_kind": {
            kind: {
                **latency([o for o in outcomes if o.kind == kind]),
                "by_http_status": counts(
                    str(o.http_status) if o.http_status else "no answer"
                    for o in outcomes
                    if o.kind == kind
                ),
            }
            for kind in kinds
        },
        "corpus_entries": counts(o.detail for o in outcomes if o.kind == "corpus"),
        "latency": latency(outcomes),
        "accepted": sum(o.accepted_id is not None for o in outcomes),
        "refused_overloaded": sum(o.error_code == "overloaded" for o in outcomes),
        "unexpected_5xx": sum(o.unexpected_5xx for o in outcomes),
        "wrong_answers": len(problems),
        "wrong_answer_examples": [
            {"kind": o.kind, "detail": o.detail, "http_status": o.http_status, "problem": o.problem}
            for o in problems[:MAX_EXAMPLES]
        ],
    }


def counts(values: Iterable[str | None]) -> dict[str, int]:
    """How often each value (None left out) occurs, sorted by value."""
    return dict(sorted(Counter(v for v in values if v is not None).items()))


def verdict(report: dict[str, Any], max_rss_growth_bytes: int) -> list[str]:
    """Why the soak failed (empty: it passed)."""
    failures = []
    if report.get("error"):
        failures.append(report["error"])
    for name, part in (
        ("warm-up", report["requests"].get("warmup")),
        ("run", report["requests"].get("run")),
    ):
        if not part:
            continue
        if part["unexpected_5xx"]:
            failures.append(f"{name}: {part['unexpected_5xx']} unexpected 5xx answers")
        if part["wrong_answers"]:
            failures.append(f"{name}: {part['wrong_answers']} wrong answers")
    for where in ("api", "database"):
        check = report["records"].get(where)
        if not check:
            continue
        if check["missing"] or check["not_terminal"]:
            failures.append(
                f"records ({where}): {check['missing']} accepted executions missing, "
                f"{check['not_terminal']} not terminal"
            )
        if check["phantoms"]:
            failures.append(f"records ({where}): {check['phantoms']} records nobody accepted")
        if check["by_status"].get("internal_error"):
            failures.append(
                f"records ({where}): {check['by_status']['internal_error']} internal_error"
            )
    leftovers = report["leftovers"]
    if leftovers.get("sandbox_processes_idle"):
        failures.append(f"{len(leftovers['sandbox_processes_idle'])} sandbox processes left (idle)")
    if leftovers.get("sandbox_processes_after_stop"):
        failures.append(
            f"{len(leftovers['sandbox_processes_after_stop'])} sandbox processes left after stop"
        )
    if leftovers.get("cgroups_after_stop"):
        failures.append(f"{len(leftovers['cgroups_after_stop'])} sandbox cgroups left after stop")
    if leftovers.get("files"):
        failures.append(f"{len(leftovers['files'])} temporary files left by sandboxes")
    growth = report["memory"].get("growth_bytes")
    if growth is not None and growth > max_rss_growth_bytes:
        failures.append(
            f"service RSS grew {growth / MIB:.0f} MiB (limit {max_rss_growth_bytes / MIB:.0f} MiB)"
        )
    service = report["service"]
    if service.get("error"):
        failures.append(f"the service did not start: {service['error'][:300]}")
    if service.get("exit_code") not in (None, 0) or service.get("killed"):
        failures.append(f"exec-agent serve did not stop cleanly (exit {service.get('exit_code')})")
    return failures


def summary_text(report: dict[str, Any]) -> str:
    config, service = report["config"], report["service"]
    lines = [
        f"soak: {config['duration_s']} s, {config['workers']} workers, {config['keys']} keys "
        f"against {service.get('url')}"
    ]
    run = report["requests"].get("run")
    if run:
        lat = run["latency"]
        lines += [
            f"  requests: {run['total']} ({run['accepted']} accepted, "
            f"{run['refused_overloaded']} overloaded); HTTP {run['by_http_status']}",
            f"  answered runs: {run['by_execution_status']}; background runs, in the end: "
            f"{report['requests']['background_final_status']}",
            f"  latency: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms",
        ]
    mem = report["memory"]
    if mem.get("growth_bytes") is not None:
        lines.append(
            f"  service RSS: start {mem['start']['rss_bytes'] / MIB:.0f} MiB, baseline "
            f"{mem['baseline']['counted_rss_bytes'] / MIB:.0f} MiB, end "
            f"{mem['end']['counted_rss_bytes'] / MIB:.0f} MiB (growth "
            f"{mem['growth_bytes'] / MIB:+.0f} MiB; idle Ray workers left out)"
        )
    for where, check in report["records"].items():
        if check:
            lines.append(
                f"  records ({where}): {check['accepted']} accepted, {check['records']} stored, "
                f"{check['missing']} missing, {check['not_terminal']} not terminal, "
                f"phantoms {check['phantoms']}"
            )
    if report["leftovers"]:
        lines.append(
            "  leftovers: "
            + ", ".join(
                f"{name} {len(value) if isinstance(value, list) else value}"
                for name, value in report["leftovers"].items()
            )
        )
    if "exit_code" in service:
        lines.append(f"  stopped: exit {service['exit_code']} after {service.get('stop_s')} s")
    lines.append("  verdict: " + ("PASS" if not report["failures"] else "FAIL"))
    lines += [f"    - {failure}" for failure in report["failures"]]
    return "\n".join(lines)
