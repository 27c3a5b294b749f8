"""``scripts/bench http``: ``exec-agent serve`` (embedded) through each Serve ingress, loaded by
wrk (executions and /health); beside it, in the same run, the floor (a fresh ``python -I -S``
per execution from as many clients as connections) and the engine alone."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_process import ServeProcess, positive_int

from executors import SandboxConfig, SandboxPool

from .common import (
    DEFAULT_CODE,
    add_output,
    add_runtime_argument,
    expected_stdout,
    host_info,
    non_negative_int,
    reported_service,
    rounded_ratio,
    timestamp,
)
from .measure import engine_task, fresh_task, measure
from .wrk import WRK_MAX_THREADS, WRK_TIMEOUT_S, WrkTarget, run_wrk, wrk_version

HTTP_MODES = ("proxy", "haproxy")
"""``exec-agent serve``'s ingresses (its ``SERVE_INGRESS``): Serve's Python proxy, HAProxy."""
HTTP_THROUGHPUT_GOAL = 1.0
"""Over HTTP, at the most connections, executions/s must be this multiple of the floor's."""
HTTP_THROUGHPUT_STRETCH = 1.5
"""The stretch goal of the same ratio (reported, never required)."""
HTTP_ENGINE_SHARE_GOAL = 0.6
"""Over HTTP, at the most connections, executions/s as a share of the engine alone's (its
most clients): reported beside the goals, for where the service's layers stand."""
HTTP_P50_GOAL_MS = 10.0
"""Over HTTP, with one connection, an execution's median latency must be at most this."""
SANDBOXFUSION_REFERENCE = {
    "source": "SandboxFusion developers' guide, same machine kind, print(1)",
    "sandbox_on": {"latency_ms": 200.0, "throughput_per_s": 7.8},
    "no_sandbox": {"latency_ms": 25.0, "throughput_per_s": 72.0},
}


def bench_http_mode(
    mode: str, args: argparse.Namespace, extra_env: dict[str, str], wrk: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{mode}-") as tmp:
        workdir = Path(tmp)
        service = ServeProcess(
            workdir, ingress=mode, slots=None, executor_queue=None, extra_env=extra_env
        )
        result: dict[str, Any] = {"mode": mode}
        with reported_service(service, result):
            key = service.create_key(f"bench-{mode}")
            result["start_s"] = round(service.start(), 2)
            headers = {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
            }
            targets = {
                "execution": WrkTarget(
                    "POST",
                    "/v1/executions",
                    headers,
                    body=json.dumps({"code": args.code, "runtime": args.runtime}),
                    expect_status='"status":"ok"',
                    expect_stdout=expected_stdout(args),
                ),
                "health": WrkTarget("GET", "/health", headers),
            }
            if args.warmup_s:
                warmup = targets["execution"]
                run_wrk(wrk, service.url, warmup, max(args.connections), args.warmup_s, workdir)
            for name, target in targets.items():
                result[name] = {
                    str(connections): run_wrk(
                        wrk, service.url, target, connections, args.duration_s, workdir
                    )
                    for connections in args.connections
                }
    return result


def bench_floor(args: argparse.Namespace) -> dict[str, Any]:
    """A fresh ``python -I -S -c CODE`` per execution, from as many clients as connections."""
    config = SandboxConfig()
    task = fresh_task(config.python_executable, args.code, expected_stdout(args))
    if args.warmup_s:
        measure(task, 2 * max(args.connections), max(args.connections))
    return {
        str(clients): measure(task, args.floor_n, clients).to_json() for clients in args.connections
    }


def sandbox_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The engine alone (a warm pool, 2 slots) from 1 and 2 clients: where the time goes."""
    config = SandboxConfig()
    pool = SandboxPool(config, slots=2)
    pool.start()
    try:
        task = engine_task(pool, args.code, expected_stdout(args), args.runtime)
        if args.warmup_s:
            measure(task, 20, 2)
        return {
            "slots": 2,
            **{str(c): measure(task, args.floor_n, c).to_json() for c in (1, 2)},
        }
    finally:
        pool.close()


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def engine_share(part: dict[str, Any], reference: dict[str, Any] | None, high: int) -> float | None:
    """A mode's executions/s at ``high`` connections as a share of the engine alone's best."""
    execution = part.get("execution")
    if not execution or not reference:
        return None
    best = max(reference[clients]["throughput_per_s"] for clients in ("1", "2"))
    return rounded_ratio(execution[str(high)]["throughput_per_s"], best)


def http_ratios(
    part: dict[str, Any], floor: dict[str, Any], high: int, low: int
) -> dict[str, float | None]:
    """A mode against the floor: throughput at ``high`` connections, p50 at ``low``."""
    execution = part.get("execution")
    if not execution:
        return {"throughput": None, "p50_latency": None}
    return {
        "throughput": rounded_ratio(
            execution[str(high)]["throughput_per_s"], floor[str(high)]["throughput_per_s"]
        ),
        "p50_latency": rounded_ratio(
            floor[str(low)]["latency_ms"]["p50"], execution[str(low)]["latency_ms"]["p50"]
        ),
    }


def http_goal_met(part: dict[str, Any], ratio: dict[str, float | None], low: int) -> bool:
    """Both goals reached, and no request of the mode failed: failures prove nothing."""
    execution = part.get("execution")
    if "error" in part or not execution:
        return False
    if any(m["failed"] for name in ("execution", "health") for m in part[name].values()):
        return False
    p50 = execution[str(low)]["latency_ms"]["p50"]
    return (
        ratio["throughput"] is not None
        and ratio["throughput"] >= HTTP_THROUGHPUT_GOAL
        and p50 is not None
        and p50 <= HTTP_P50_GOAL_MS
    )


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench http: wrk not found (scripts/bench and scripts/setup install it)")
    extra_env = parse_env(args.env)
    args.connections = sorted(set(args.connections))
    config = SandboxConfig()
    # The floor first, on a quiet machine: no service (and no Ray) is running yet.
    floor = bench_floor(args)
    modes = {mode: bench_http_mode(mode, args, extra_env, wrk) for mode in args.modes}
    reference = None if args.no_sandbox_reference else sandbox_reference(args)

    high, low = max(args.connections), min(args.connections)
    ratio = {mode: http_ratios(part, floor, high, low) for mode, part in modes.items()}
    failed = sum(m["failed"] for m in floor.values())
    floor_ok = failed == 0
    if reference is not None:
        failed += sum(reference[c]["failed"] for c in ("1", "2"))
    for part in modes.values():
        if "error" in part:
            failed += 1
        for name in ("execution", "health"):
            failed += sum(m["failed"] for m in part.get(name, {}).values())
    return {
        "benchmark": "http",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "connections": args.connections,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "floor_n": args.floor_n,
            "code": args.code,
            "runtime": args.runtime,
            "expect_stdout": expected_stdout(args),
            "modes": args.modes,
            "extra_env": extra_env,
            "client": f"{wrk_version(wrk)}: min(connections, {WRK_MAX_THREADS}) threads, "
            f"keep-alive connections, {WRK_TIMEOUT_S} s timeout",
            "service": "exec-agent serve: embedded SQLite, in-process limiter, default executor settings",
            "floor_command": [config.python_executable, "-I", "-S", "-c", args.code],
        },
        "modes": modes,
        "floor": floor,
        "ratio": ratio,
        "engine_share": {mode: engine_share(part, reference, high) for mode, part in modes.items()},
        "goal": {
            "throughput_ratio": HTTP_THROUGHPUT_GOAL,
            "throughput_stretch": HTTP_THROUGHPUT_STRETCH,
            "engine_share": HTTP_ENGINE_SHARE_GOAL,
            "throughput_connections": high,
            "p50_ms": HTTP_P50_GOAL_MS,
            "p50_connections": low,
            # A floor with failures is no yardstick: nothing is met against it.
            "met": {
                mode: floor_ok and http_goal_met(part, ratio[mode], low)
                for mode, part in modes.items()
            },
        },
        "sandbox_engine": reference,
        "sandboxfusion_reference": SANDBOXFUSION_REFERENCE,
        "failed": failed,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summarize_http(result: dict[str, Any]) -> str:
    config, goal = result["config"], result["goal"]
    lines = [
        f"http: wrk {config['duration_s']} s per measurement, connections {config['connections']}; "
        f"floor {config['floor_n']} fresh interpreters per client count"
    ]
    for mode, part in result["modes"].items():
        if "error" in part:
            lines.append(f"  {mode:<8} ERROR {part['error']}")
            continue
        for name in ("execution", "health"):
            for connections, m in part[name].items():
                lat = m["latency_ms"]
                lines.append(
                    f"  {mode:<8} {name:<9} {connections:>3} conn {m['throughput_per_s']:>8.1f}/s  "
                    f"p50 {_ms(lat['p50'])} ms  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  "
                    f"requests {m['requests']}  failed {m['failed']}"
                )
    for clients, m in result["floor"].items():
        lat = m["latency_ms"]
        lines.append(
            f"  floor    python -I -S {clients:>2} clients {m['throughput_per_s']:>8.1f}/s  "
            f"p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
            f"failed {m['failed']}"
        )
    if result["sandbox_engine"]:
        for clients in ("1", "2"):
            m = result["sandbox_engine"][clients]
            lines.append(
                f"  engine   alone     {clients:>2} clients {m['throughput_per_s']:>8.1f}/s  "
                f"p50 {m['latency_ms']['p50']:.2f} ms  p99 {m['latency_ms']['p99']:.2f}"
            )
    for mode, ratio in result["ratio"].items():
        lines.append(
            f"  {mode:<8} vs floor: throughput x{ratio['throughput']} at "
            f"{goal['throughput_connections']} conn (goal x{goal['throughput_ratio']}, "
            f"stretch x{goal['throughput_stretch']}), "
            f"p50 latency x{ratio['p50_latency']} at {goal['p50_connections']} conn "
            f"(goal p50 <= {goal['p50_ms']} ms): {'met' if goal['met'][mode] else 'NOT met'}"
        )
        share = result.get("engine_share", {}).get(mode)
        if share is not None:
            verdict = "met" if share >= goal["engine_share"] else "NOT met"
            lines.append(
                f"  {mode:<8} vs the engine alone: x{share} of its throughput "
                f"(goal x{goal['engine_share']}): {verdict}"
            )
    ref = result["sandboxfusion_reference"]
    lines.append(
        f"  SandboxFusion (published): sandbox on {ref['sandbox_on']['latency_ms']:.0f} ms, "
        f"{ref['sandbox_on']['throughput_per_s']}/s; none {ref['no_sandbox']['latency_ms']:.0f} ms, "
        f"{ref['no_sandbox']['throughput_per_s']}/s"
    )
    if result["failed"]:
        lines.append(f"  FAILURES: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench http``."""
    http = benchmarks.add_parser(
        "http",
        help="the HTTP service (exec-agent serve, embedded) through each Serve ingress, with wrk",
        description="Start `exec-agent serve` (SQLite in a temporary directory, a key with a "
        "limit never reached) once per ingress mode, then load POST /v1/executions (sync, "
        "auth, persisted) and GET /health with wrk at each connection count; beside it, in the "
        "same run, the floor (a fresh `python -I -S -c` per execution from as many clients) "
        "and the engine alone.",
    )
    http.add_argument(
        "--connections",
        type=positive_int,
        nargs="+",
        default=[1, 16],
        help="connection counts, each measured for every mode and for the floor (default: 1 16); "
        "the throughput goal is read at the most, the latency goal at the fewest",
    )
    http.add_argument(
        "--duration-s",
        type=positive_int,
        default=10,
        help="seconds of each wrk measurement (default: %(default)s)",
    )
    http.add_argument(
        "--warmup-s",
        type=non_negative_int,
        default=2,
        help="seconds of an unmeasured wrk run of executions per mode first; 0: none "
        "(default: %(default)s)",
    )
    http.add_argument(
        "--floor-n",
        type=positive_int,
        default=400,
        help="fresh interpreters per floor measurement, and engine runs per reference "
        "measurement (default: %(default)s)",
    )
    http.add_argument(
        "--modes",
        nargs="+",
        choices=HTTP_MODES,
        default=list(HTTP_MODES),
        help="SERVE_INGRESS values to measure, one service each (default: both)",
    )
    http.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    http.add_argument("--code", default=DEFAULT_CODE, help="the program (default: %(default)r)")
    add_runtime_argument(http)
    http.add_argument("--expect-stdout", default=None, help="as for sandbox")
    http.add_argument(
        "--no-sandbox-reference", action="store_true", help="skip the engine-alone reference"
    )
    add_output(http, "http", bench_http, summarize_http)
