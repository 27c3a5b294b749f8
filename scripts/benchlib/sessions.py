"""``scripts/bench sessions``: issue 14's goals, measured in one run.

- Over HTTP against ``exec-agent serve`` (embedded): a trivial call in an existing session
  against a fresh execution of the same code, one client, alternating in rounds so that the
  machine's drift hits both alike (goal: the session call's p50 at most the fresh execution's;
  stretch: half); creating a session (goal: p50 at most 50 ms).
- Through the engine: the memory of one idle session per runtime, with ``--idle`` sessions of
  it alive at once: each session's private memory (USS of its init and interpreter: pages it
  does not share with the zygote it was forked from, nor with other sessions) and its
  proportional share (PSS). Goal: at most 30 MiB private for ``scientific``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from serve_process import ServeProcess, percentile, positive_int

from executors import (
    MINIMAL,
    SCIENTIFIC,
    EndReason,
    ExecutionRequest,
    ExecutionStatus,
    SandboxConfig,
    SessionHost,
    SessionSpec,
)

from .common import BENCH_LIMITS, add_output, host_info, reported_service, timestamp

CALL_GOAL_RATIO = 1.0
CALL_STRETCH_RATIO = 0.5
CREATE_GOAL_MS = 50.0
PRIVATE_MEMORY_GOAL_MIB = 30.0
MIB = 2**20
CODE = "print(1)"


def _stats(latencies_s: list[float]) -> dict[str, float]:
    ms = [value * 1000 for value in latencies_s]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def _timed(client: httpx.Client, method: str, url: str, body: dict[str, Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    answer = client.request(method, url, json=body)
    elapsed = time.perf_counter() - began
    return elapsed, answer


def http_part(args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    """Session calls against fresh executions, and session creation, over HTTP."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp:
        service = ServeProcess(
            Path(tmp), extra_env={"MAX_SESSIONS_PER_KEY": "1000", "DEFAULT_RUNTIME": runtime}
        )
        with reported_service(service, result):
            key = service.create_key("bench-sessions")
            result["start_s"] = round(service.start(), 2)
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=service.url, headers=headers, timeout=60.0) as client:
                result.update(_measure_http(client, args, runtime))
    return result


def _measure_http(client: httpx.Client, args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    failed: list[str] = []
    created = client.post("/v1/sessions", json={"runtime": runtime})
    created.raise_for_status()
    session = created.json()["id"]
    fresh_s: list[float] = []
    call_s: list[float] = []
    rounds = [(fresh_s, "/v1/executions", {"code": CODE, "runtime": runtime}),
              (call_s, f"/v1/sessions/{session}/executions", {"code": CODE})]  # fmt: skip
    for i in range(args.warmup + args.n):
        for latencies, url, body in rounds if i % 2 else reversed(rounds):
            elapsed, answer = _timed(client, "POST", url, body)
            record = answer.json() if answer.status_code == 200 else {}
            if record.get("status") != "ok" or record.get("stdout") != "1\n":
                failed.append(f"{url}: {answer.status_code} {answer.text[:200]}")
            elif i >= args.warmup:
                latencies.append(elapsed)
    client.delete(f"/v1/sessions/{session}")
    create_s: list[float] = []
    for i in range(args.warmup + args.n_create):
        elapsed, answer = _timed(client, "POST", "/v1/sessions", {"runtime": runtime})
        if answer.status_code != 201:
            failed.append(f"create: {answer.status_code} {answer.text[:200]}")
            continue
        if i >= args.warmup:
            create_s.append(elapsed)
        client.delete(f"/v1/sessions/{answer.json()['id']}")
    fresh, call = _stats(fresh_s), _stats(call_s)
    ratio = round(call["p50"] / fresh["p50"], 3) if fresh_s and call_s else None
    create = _stats(create_s) if create_s else None
    return {
        "fresh_execution_ms": fresh,
        "session_call_ms": call,
        "call_to_fresh_p50": ratio,
        "create_session_ms": create,
        "goals": {
            "call_at_most_fresh": ratio is not None and ratio <= CALL_GOAL_RATIO,
            "call_at_most_half_fresh": ratio is not None and ratio <= CALL_STRETCH_RATIO,
            "create_p50_at_most_50_ms": create is not None and create["p50"] <= CREATE_GOAL_MS,
        },
        "failures": failed[:10],
        "failed": len(failed),
    }


def idle_memory(args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    """``--idle`` idle sessions of ``runtime`` on one host, each having run one call: per
    session, the USS and PSS of its processes."""
    limits = BENCH_LIMITS
    host = SessionHost(SandboxConfig(default_runtime=runtime), name="bench", capacity=args.idle)
    host.start()
    try:
        spec = {"runtime": runtime, "limits": limits, "idle_timeout_s": 600.0, "ttl_s": 3600.0}
        sessions = [host.create(SessionSpec.model_validate(spec)).id for _ in range(args.idle)]
        failed = 0
        for session in sessions:
            record, _ = host.call(session, ExecutionRequest(code="x = 1\nx", limits=limits,
                                                            runtime=runtime))  # fmt: skip
            failed += record.status != ExecutionStatus.OK or record.result != "1"
        time.sleep(0.5)
        uss, pss = [], []
        for pid in host.interpreter_pids().values():
            init = psutil.Process(pid)
            infos = [p.memory_full_info() for p in (init, *init.children(recursive=True))]
            uss.append(sum(info.uss for info in infos) / MIB)
            pss.append(sum(info.pss for info in infos) / MIB)
        for session in sessions:
            host.end(session, EndReason.DELETED)
    finally:
        host.close()
    return {
        "sessions": args.idle,
        "private_uss_mib_per_session": round(statistics.fmean(uss), 2),
        "pss_mib_per_session": round(statistics.fmean(pss), 2),
        "private_uss_mib_total": round(sum(uss), 1),
        "failed": failed,
    }


def bench_sessions(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    http = http_part(args, args.runtime)
    memory = {runtime: idle_memory(args, runtime) for runtime in (MINIMAL, SCIENTIFIC)}
    scientific_private = memory[SCIENTIFIC]["private_uss_mib_per_session"]
    failed = int(http.get("failed", 1)) + sum(part["failed"] for part in memory.values())
    return {
        "benchmark": "sessions",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "n": args.n,
            "n_create": args.n_create,
            "warmup": args.warmup,
            "idle": args.idle,
            "code": CODE,
            "runtime": args.runtime,
            "limits": BENCH_LIMITS.to_api(),
            "client": "httpx, one keep-alive connection, fresh and session calls alternating",
            "service": "exec-agent serve: embedded SQLite, in-process limiter",
        },
        "http": http,
        "idle_memory": memory,
        "goal": {
            **http.get("goals", {}),
            "scientific_private_at_most_30_mib": scientific_private <= PRIVATE_MEMORY_GOAL_MIB,
        },
        "failed": failed,
    }


def summarize_sessions(result: dict[str, Any]) -> str:
    http = result["http"]
    lines = [f"sessions: {result['config']['code']} in {result['config']['runtime']}"]
    if "error" in http:
        lines.append(f"  HTTP part failed: {http['error']}")
    else:
        fresh, call, create = (
            http["fresh_execution_ms"],
            http["session_call_ms"],
            http["create_session_ms"],
        )
        lines.append(
            f"  fresh execution p50 {fresh['p50']} ms | session call p50 {call['p50']} ms "
            f"(x{http['call_to_fresh_p50']}; goal <= x1, stretch <= x0.5)"
        )
        if create:
            lines.append(f"  create session p50 {create['p50']} ms (goal <= 50 ms)")
    for runtime, memory in result["idle_memory"].items():
        lines.append(
            f"  idle session, {runtime:<10} private {memory['private_uss_mib_per_session']} MiB, "
            f"PSS {memory['pss_mib_per_session']} MiB ({memory['sessions']} alive)"
        )
    met = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in result["goal"].items())
    lines.append(f"  goals: {met}")
    if result["failed"]:
        lines.append(f"  FAILED: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench sessions``."""
    parser = benchmarks.add_parser(
        "sessions",
        help="session calls against fresh executions over HTTP; creation; idle memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=positive_int, default=200, help="calls of each kind")
    parser.add_argument("--n-create", type=positive_int, default=40, help="sessions created")
    parser.add_argument("--warmup", type=positive_int, default=10, help="unmeasured rounds")
    parser.add_argument("--idle", type=positive_int, default=20, help="idle sessions alive")
    parser.add_argument(
        "--runtime", default=MINIMAL, help="runtime of the HTTP part (default: %(default)s)"
    )
    add_output(parser, "sessions", bench_sessions, summarize_sessions)
