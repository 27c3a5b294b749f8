"""``scripts/bench streaming``: issue 15's figures, measured in one run.

- Print to client: a program prints ``time.time()`` ``--prints`` times, ``--interval-ms``
  apart; the client notes ``time.time()`` when each line arrives (one host, one clock): the
  latency of each line, over SSE (``POST /v1/executions``, ``Accept: text/event-stream``) and
  over the WebSocket (``/v1/ws``), ``--runs`` runs each, alternating. Its floor, first, on a
  quiet machine: the same program in a local ``python -u``, its lines read from a pipe.
  Goal: p99 within 100 ms on both ("within tens of milliseconds of being written").
- The cost of streaming: ``print(1)`` one after another, a plain ``POST`` (the floor), the
  same streamed over SSE, and over an open WebSocket, in rotating order, ``--n`` of each; the
  p50 of each and what streaming adds to the plain one's.

Against ``exec-agent serve`` (embedded: SQLite, the in-process limiter, Serve's proxy), with
the Python client of the package (``serve_app.client``) on one keep-alive connection per
transport.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from serve_process import ServeProcess, percentile, positive_int

from executors import SandboxConfig
from serve_app.client import (
    Client,
    ExecutionSocket,
    InteractiveEvent,
    OutputEvent,
    RecordEvent,
    execution_body,
)

from .common import (
    MAX_FAILURE_EXAMPLES,
    add_output,
    add_runtime_argument,
    host_info,
    reported_service,
    short,
    timestamp,
)

LATENCY_GOAL_P99_MS = 100.0
MAX_WALL_TIMEOUT_S = 30.0
CODE = "print(1)"
TRANSPORTS = ("sse", "websocket")
KINDS = ("plain", "sse", "websocket")


def stamps_program(prints: int, interval_ms: float) -> str:
    """The program of the latency part: ``prints`` lines of ``time.time()``."""
    return (
        "import time\n"
        f"for _ in range({prints}):\n"
        "    print(repr(time.time()), flush=True)\n"
        f"    time.sleep({interval_ms / 1000!r})\n"
    )


def _stats(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
        "max": round(max(ms), 3),
    }


class Lines:
    """Complete lines out of chunks, each with the arrival time of the chunk that ended it."""

    def __init__(self) -> None:
        self.partial = ""
        self.lines: list[tuple[str, float]] = []

    def add(self, text: str, arrived: float) -> None:
        *ended, self.partial = (self.partial + text).split("\n")
        self.lines.extend((line, arrived) for line in ended)

    def latencies_ms(self) -> list[float]:
        return [(arrived - float(line)) * 1000 for line, arrived in self.lines]


def _timed_events(events: Iterable[InteractiveEvent]) -> tuple[Lines, dict[str, Any] | None]:
    lines, record = Lines(), None
    for event in events:
        if isinstance(event, OutputEvent) and event.stream == "stdout":
            lines.add(event.text, time.time())
        elif isinstance(event, RecordEvent):
            record = event.data
    return lines, record


def _check_stamps(lines: Lines, record: dict[str, Any] | None, prints: int) -> str | None:
    """None when the run printed every stamp, all of them streamed; else what went wrong."""
    if record is None or record.get("status") != "ok":
        return f"record: {short(str(record))}"
    if record.get("stream_dropped_bytes"):
        return f"{record['stream_dropped_bytes']} bytes dropped"
    if len(lines.lines) != prints:
        return f"{len(lines.lines)} lines streamed of {prints}"
    return None


def floor_latency(args: argparse.Namespace, config: SandboxConfig) -> dict[str, Any]:
    """The same program in a local ``python -u -I -S``, read from a pipe as it prints."""
    code = stamps_program(args.prints, args.interval_ms)
    lines, failures = Lines(), []
    for _ in range(args.runs):
        command = [config.python_executable, "-u", "-I", "-S", "-c", code]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None  # noqa: S101 - stdout=PIPE
            run = Lines()
            for line in process.stdout:
                run.add(line, time.time())
        if process.returncode != 0 or len(run.lines) != args.prints:
            failures.append(f"exit {process.returncode}, {len(run.lines)} lines")
        lines.lines.extend(run.lines)
    return {
        "print_to_reader_ms": _stats(lines.latencies_ms()),
        "failed": len(failures),
        "failure_examples": failures[:MAX_FAILURE_EXAMPLES],
    }


def _measure(args: argparse.Namespace, service: ServeProcess, key: str) -> dict[str, Any]:
    with (
        Client(service.url, key, timeout=httpx.Timeout(60.0)) as client,
        client.socket() as socket,
    ):
        return {
            "print_to_client": _latency(args, client, socket),
            "streamed_print_1": _overhead(args, client, socket),
        }


def _latency(args: argparse.Namespace, client: Client, socket: ExecutionSocket) -> dict[str, Any]:
    # Room for the prints and more, within the service's MAX_TIMEOUT (30 s by default).
    limits = {"wall_timeout_s": min(MAX_WALL_TIMEOUT_S, args.prints * args.interval_ms / 500 + 5)}
    body = execution_body(
        stamps_program(args.prints, args.interval_ms), runtime=args.runtime, limits=limits
    )
    runs: dict[str, Callable[[], Iterable[InteractiveEvent]]] = {
        "sse": lambda: client.stream(**body),
        "websocket": lambda: socket.run(body),
    }
    latencies: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
    failures: list[str] = []
    for i in range(args.runs):
        for name in TRANSPORTS if i % 2 == 0 else reversed(TRANSPORTS):
            lines, record = _timed_events(runs[name]())
            problem = _check_stamps(lines, record, args.prints)
            if problem is None:
                latencies[name].extend(lines.latencies_ms())
            else:
                failures.append(f"{name}: {problem}")
    return {
        **{name: _stats(values) for name, values in latencies.items()},
        "failed": len(failures),
        "failure_examples": failures[:MAX_FAILURE_EXAMPLES],
    }


def _overhead(args: argparse.Namespace, client: Client, socket: ExecutionSocket) -> dict[str, Any]:
    body = execution_body(CODE, runtime=args.runtime)
    http = client.http  # the same pool of connections as the streamed runs

    def plain() -> dict[str, Any] | None:
        answer = http.post("/v1/executions", json=body)
        return answer.json() if answer.status_code == 200 else None

    def sse() -> dict[str, Any] | None:
        return _timed_events(client.stream(**body))[1]

    def websocket() -> dict[str, Any] | None:
        return socket.run(body).wait().data

    kinds: dict[str, Callable[[], dict[str, Any] | None]] = {
        "plain": plain,
        "sse": sse,
        "websocket": websocket,
    }
    elapsed: dict[str, list[float]] = {name: [] for name in KINDS}
    failures: list[str] = []
    for i in range(args.warmup + args.n):
        turn = i % len(KINDS)
        for name in KINDS[turn:] + KINDS[:turn]:
            began = time.perf_counter()
            record = kinds[name]()
            took_ms = (time.perf_counter() - began) * 1000
            if record is None or record.get("status") != "ok" or record.get("stdout") != "1\n":
                failures.append(f"{name}: {short(str(record))}")
            elif i >= args.warmup:
                elapsed[name].append(took_ms)
    stats = {name: _stats(values) for name, values in elapsed.items()}
    plain_p50 = stats["plain"].get("p50")
    extra = {
        name: round(stats[name]["p50"] - plain_p50, 3)
        if plain_p50 is not None and stats[name].get("p50") is not None
        else None
        for name in TRANSPORTS
    }
    return {
        **stats,
        "extra_p50_ms": extra,
        "failed": len(failures),
        "failure_examples": failures[:MAX_FAILURE_EXAMPLES],
    }


def http_part(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        service = ServeProcess(Path(tmp))
        with reported_service(service, result):
            key = service.create_key("bench-streaming")
            result["start_s"] = round(service.start(), 2)
            result.update(_measure(args, service, key))
    return result


def bench_streaming(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    floor = floor_latency(args, config)  # first: no service (nor Ray) running yet
    service = http_part(args)
    latency = service.get("print_to_client", {})
    overhead = service.get("streamed_print_1", {})
    failed = floor["failed"] + (
        latency.get("failed", 0) + overhead.get("failed", 0) if "error" not in service else 1
    )
    goal: dict[str, Any] = {"p99_ms": LATENCY_GOAL_P99_MS}
    for name in TRANSPORTS:
        p99 = latency.get(name, {}).get("p99")
        goal[f"{name}_p99_within_100_ms"] = p99 is not None and p99 <= LATENCY_GOAL_P99_MS
    return {
        "benchmark": "streaming",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "prints": args.prints,
            "interval_ms": args.interval_ms,
            "runs": args.runs,
            "n": args.n,
            "warmup": args.warmup,
            "code": CODE,
            "runtime": args.runtime,
            "client": "serve_app.client: httpx (one keep-alive connection) and websockets "
            "(one connection), one request at a time",
            "service": "exec-agent serve: embedded SQLite, in-process limiter, Serve's proxy",
            "floor_command": [config.python_executable, "-u", "-I", "-S", "-c", "..."],
        },
        "floor": floor,
        "service": service,
        "goal": goal,
        "failed": failed,
    }


def summarize_streaming(result: dict[str, Any]) -> str:
    config, service = result["config"], result["service"]
    lines = [f"streaming: {config['prints']} prints {config['interval_ms']} ms apart"]
    floor = result["floor"]["print_to_reader_ms"]
    lines.append(
        f"  floor (local pipe) print to reader p50 {floor.get('p50')} ms, p99 {floor.get('p99')} ms"
    )
    if "error" in service:
        lines.append(f"  service part failed: {service['error']}")
    else:
        latency, overhead = service["print_to_client"], service["streamed_print_1"]
        for name in TRANSPORTS:
            figures = latency[name]
            lines.append(
                f"  {name:<9} print to client p50 {figures.get('p50')} ms, p99 "
                f"{figures.get('p99')} ms (goal p99 <= {LATENCY_GOAL_P99_MS:g} ms)"
            )
        extra = {name: _signed(value) for name, value in overhead["extra_p50_ms"].items()}
        lines.append(
            f"  {config['code']}: plain p50 {overhead['plain'].get('p50')} ms | streamed p50: "
            f"SSE {extra['sse']} ms, WebSocket {extra['websocket']} ms"
        )
    met = ", ".join(
        f"{name}: {'met' if ok else 'NOT met'}"
        for name, ok in result["goal"].items()
        if isinstance(ok, bool)
    )
    lines.append(f"  goals: {met}")
    if result["failed"]:
        lines.append(f"  FAILED: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+g}"


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench streaming``."""
    parser = benchmarks.add_parser(
        "streaming",
        help="print-to-client latency over SSE and the WebSocket; what streaming adds to a run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prints", type=positive_int, default=200, help="lines per run")
    parser.add_argument(
        "--interval-ms", type=positive_float, default=10.0, help="between lines, ms"
    )
    parser.add_argument("--runs", type=positive_int, default=3, help="runs per transport")
    parser.add_argument("--n", type=positive_int, default=100, help="print(1) runs of each kind")
    parser.add_argument("--warmup", type=positive_int, default=5, help="unmeasured rounds")
    add_runtime_argument(parser)
    add_output(parser, "streaming", bench_streaming, summarize_streaming)
