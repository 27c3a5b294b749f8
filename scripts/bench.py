"""Benchmarks of the Python Execution Agent: scripts/bench BENCHMARK [options].

Each benchmark writes its results as JSON under ``bench-results/`` (by default), prints the
same JSON on stdout and a short human summary on stderr.

    sandbox   the engine (a warm SandboxPool) against a fresh ``python -I -S`` per execution
    http      ``exec-agent serve`` (embedded) through each ingress: executions and /health

Exit status: 0 when every execution gave the expected result, 1 when any failed (the results
are still written: a failure is reported, not hidden), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
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


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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
SERVE_START_TIMEOUT_S = 300.0
SERVE_STOP_TIMEOUT_S = 120.0
HTTP_TIMEOUT_S = 30.0
BENCH_RATE_LIMIT_PER_MINUTE = 100_000_000
"""The bench key's limit: never the limiter that answers."""
SANDBOXFUSION_REFERENCE = {
    "source": "SandboxFusion developers' guide, same machine kind, print(1)",
    "sandbox_on": {"latency_ms": 200.0, "throughput_per_s": 7.8},
    "no_sandbox": {"latency_ms": 25.0, "throughput_per_s": 72.0},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """``exec-agent serve`` in a subprocess, embedded (SQLite in ``workdir``), with one key."""

    def __init__(self, mode: str, workdir: Path, extra_env: dict[str, str]) -> None:
        self.mode = mode
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{mode}.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"RAY_ADDRESS", "REDIS_URL", "DATABASE_URL", "ENVIRONMENT"}
            and not key.startswith("RAY_SERVE_")
        }
        env |= {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
            "API_KEY_SECRET": secrets.token_urlsafe(32),
            "RATE_LIMIT_PER_MINUTE": str(BENCH_RATE_LIMIT_PER_MINUTE),
            "MAX_CONCURRENT_PER_KEY": "1000",
            "RAY_GCS_PORT": str(free_port()),
            "RAY_METRICS_EXPORT_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "SERVE_INGRESS": mode,
        }
        self.env = env | extra_env
        self.exec_agent = str(Path(sys.executable).with_name("exec-agent"))
        self.process: subprocess.Popen[bytes] | None = None
        self.key = ""
        self.start_s = 0.0

    def _cli(self, *argv: str) -> str:
        done = subprocess.run(
            [self.exec_agent, *argv],
            cwd=self.workdir,  # no .env from elsewhere
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"exec-agent {' '.join(argv)}: {done.returncode} {done.stderr}")
        return done.stdout

    def start(self) -> None:
        self._cli("db", "upgrade")
        name = f"bench-{self.mode}"
        created = self._cli(
            "keys", "create", "--name", name,
            "--rate-limit-per-minute", str(BENCH_RATE_LIMIT_PER_MINUTE),
        )  # fmt: skip
        self.key = created.strip().splitlines()[-1]
        began = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.exec_agent, "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a stuck Ray is killed whole
            )
        deadline = began + SERVE_START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"exec-agent serve exited {self.process.returncode}: {self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health/ready", timeout=2.0).status_code == 200:
                    self.start_s = time.perf_counter() - began
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"exec-agent serve not ready in {SERVE_START_TIMEOUT_S} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGINT (a drain), then SIGKILL for the whole group; the exit status of the drain."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(SERVE_STOP_TIMEOUT_S)
        code = process.poll()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what Ray left behind in the group
        process.wait()
        return code


def http_task(
    service: Service,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    check: Callable[[httpx.Response], str | None],
) -> Task:
    """One request per call, on a keep-alive connection of the calling thread's own."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {service.key}"}

    def run() -> str | None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(
                base_url=service.url, headers=headers, timeout=HTTP_TIMEOUT_S
            )
        response = client.request(method, path, json=body)
        return check(response)

    return run


def check_health(response: httpx.Response) -> str | None:
    return (
        None
        if response.status_code == 200
        else f"HTTP {response.status_code} {_short(response.text)}"
    )


def check_execution(expect_stdout: str | None) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code} {_short(response.text)}"
        record = response.json()
        if record.get("status") != "ok":
            return f"status {record.get('status')}, stderr {_short(record.get('stderr') or '')}"
        if expect_stdout is not None and record.get("stdout") != expect_stdout:
            return f"stdout {_short(record.get('stdout') or '')}, expected {_short(expect_stdout)}"
        return None

    return check


def bench_http_mode(
    mode: str, args: argparse.Namespace, extra_env: dict[str, str]
) -> dict[str, Any]:
    expect = args.expect_stdout
    if expect is None and args.code == DEFAULT_CODE:
        expect = DEFAULT_CODE_STDOUT
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{mode}-") as tmp:
        service = Service(mode, Path(tmp), extra_env)
        result: dict[str, Any] = {"mode": mode}
        try:
            service.start()
            result["start_s"] = round(service.start_s, 2)
            targets = {
                "execution": http_task(
                    service, "POST", "/v1/executions", {"code": args.code}, check_execution(expect)
                ),
                "health": http_task(service, "GET", "/health", None, check_health),
            }
            for name, task in targets.items():
                if args.warmup:
                    measure(task, args.warmup, max(args.clients))
                result[name] = {
                    str(clients): measure(task, args.n, clients).to_json()
                    for clients in args.clients
                }
        except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            result["drain_exit_status"] = service.stop()
            if "error" in result:
                result["log_tail"] = service.log_tail()
    return result


def sandbox_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The engine alone (a warm pool, 2 slots), parallel at the first client count."""
    config = SandboxConfig()
    expect = DEFAULT_CODE_STDOUT if args.code == DEFAULT_CODE else args.expect_stdout
    pool = SandboxPool(config, slots=2)
    pool.start()
    try:
        task = engine_task(pool, args.code, expect)
        measure(task, args.warmup, 2)
        return {
            "slots": 2,
            **{str(c): measure(task, args.n, c).to_json() for c in (1, 2)},
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


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    extra_env = parse_env(args.env)
    modes = {mode: bench_http_mode(mode, args, extra_env) for mode in args.modes}
    reference = None if args.no_sandbox_reference else sandbox_reference(args)
    failed = 0
    for part in modes.values():
        if "error" in part:
            failed += 1
        for name in ("execution", "health"):
            failed += sum(m["failed"] for m in part.get(name, {}).values())
    return {
        "benchmark": "http",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": host_info(SandboxConfig()),
        "config": {
            "count": args.n,
            "warmup": args.warmup,
            "clients": args.clients,
            "code": args.code,
            "modes": args.modes,
            "extra_env": extra_env,
            "client": f"httpx {httpx.__version__}, one keep-alive connection per client thread",
            "service": "exec-agent serve: embedded SQLite, in-process limiter, default executor settings",
        },
        "modes": modes,
        "sandbox_engine": reference,
        "sandboxfusion_reference": SANDBOXFUSION_REFERENCE,
        "failed": failed,
    }


def summarize_http(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [f"http: {config['count']} requests per measurement, clients {config['clients']}"]
    for mode, part in result["modes"].items():
        if "error" in part:
            lines.append(f"  {mode:<8} ERROR {part['error']}")
            continue
        for name in ("execution", "health"):
            for clients, m in part[name].items():
                lat = m["latency_ms"]
                lines.append(
                    f"  {mode:<8} {name:<9} {clients:>2} clients {m['throughput_per_s']:>8.1f}/s  "
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
        help="the HTTP service (exec-agent serve, embedded) through each Serve ingress",
        description="Start `exec-agent serve` (SQLite in a temporary directory, a key with a "
        "limit never reached) once per ingress mode, then time POST /v1/executions (sync) and "
        "GET /health from parallel keep-alive clients; the engine alone for reference.",
    )
    http.add_argument(
        "--n",
        type=positive_int,
        default=400,
        help="requests per measurement (default: %(default)s)",
    )
    http.add_argument(
        "--warmup",
        type=non_negative_int,
        default=40,
        help="unmeasured requests first (default: %(default)s)",
    )
    http.add_argument(
        "--clients",
        type=positive_int,
        nargs="+",
        default=[2, 8],
        help="parallel client counts, each measured (default: 2 8)",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = args.run(args)
    write_result(result, args.out)
    print(args.summarize(result), file=sys.stderr)
    print(f"  results: {args.out}", file=sys.stderr)
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
