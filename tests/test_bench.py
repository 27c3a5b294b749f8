"""``scripts/bench.py``: the structure of its results and that the counts add up (never timings)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from executors import ISOLATION_LAYERS
from serve_app.settings import Settings
from tests.support.paths import SCRIPTS
from tests.support.scripts import load_script

BENCH = SCRIPTS / "bench.py"
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "min", "max"}


def load_bench() -> ModuleType:
    """scripts/bench.py, as a module."""
    return load_script("bench")


def test_percentile_interpolates_between_ranks() -> None:
    percentile = load_bench().percentile
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["sandbox", "--n", "0"],
        ["sandbox", "--clients", "-1"],
        ["http", "--connections"],
        ["http", "--connections", "0"],
        ["http", "--connections", "1", "x"],
        ["http", "--duration-s", "0"],
        ["http", "--duration-s", "1.5"],
        ["http", "--warmup-s", "-1"],
        ["http", "--floor-n", "0"],
        ["http", "--modes", "nginx"],
        ["http", "--n", "10"],  # the old request count: wrk runs for --duration-s instead
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().build_parser().parse_args(argv)
    assert exc.value.code == 2


def check_measurement(part: dict, clients: int, executions: int) -> None:
    assert part["clients"] == clients
    assert part["executions"] == executions
    assert part["ok"] + part["failed"] == executions
    assert part["failed"] == 0, part["failure_examples"]
    assert part["failure_examples"] == []
    assert part["elapsed_s"] > 0
    assert part["throughput_per_s"] > 0
    assert set(part["latency_ms"]) == LATENCY_KEYS
    assert all(value > 0 for value in part["latency_ms"].values())


@pytest.mark.sandbox
def test_sandbox_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "sandbox.json"
    argv = [sys.executable, str(BENCH), "sandbox", "--n", "20", "--warmup", "2", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "ratio: throughput" in done.stderr

    assert result["benchmark"] == "sandbox"
    assert {"cpus", "kernel", "python"} <= set(result["host"])
    assert result["config"]["n"] == 20
    assert (result["config"]["clients"], result["config"]["slots"]) == (2, 2)
    assert result["engine"]["slots"] == 2
    for part in (result["engine"], result["fresh_subprocess"]):
        check_measurement(part["parallel"], clients=2, executions=20)
        check_measurement(part["sequential"], clients=1, executions=20)
    assert result["failed"] == 0

    assert set(result["ratio"]) == {"throughput", "p50_latency", "sequential_p50_latency"}
    assert all(value > 0 for value in result["ratio"].values())
    assert (result["goal"]["throughput_ratio"], result["goal"]["throughput_stretch"]) == (2.5, 5.0)
    assert isinstance(result["goal"]["met"], bool)

    isolation = result["isolation"]
    assert set(isolation["layers"]) | set(isolation["missing"]) == set(ISOLATION_LAYERS)
    assert isolation["ok"] == (not isolation["missing"])


@pytest.mark.sandbox
def test_runtimes_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    out = tmp_path / "runtimes.json"
    argv = [sys.executable, str(BENCH), "runtimes", "--n", "4", "--n-fresh", "2"]
    argv += ["--n-print", "10", "--warmup", "1", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr

    result = json.loads(out.read_text())
    assert result["benchmark"] == "runtimes"
    assert "speedup per execution" in done.stderr
    for part in (result["scientific_engine"], result["scientific_fresh_python"]):
        executions = 4 if part is result["scientific_engine"] else 2
        check_measurement(part["sequential"], clients=1, executions=executions)
        check_measurement(part["parallel"], clients=2, executions=executions)
    for runtime in ("minimal", "scientific"):
        check_measurement(result["print_1"][runtime], clients=2, executions=10)
        memory = result["idle_memory"][runtime]
        assert 0 < memory["uss_mib_per_slot"] <= memory["pss_mib_per_slot"]
    assert result["failed"] == 0
    assert result["speedup"]["per_execution_p50"] > 1
    assert result["goal"]["speedup"] == 20.0
    assert isinstance(result["goal"]["met"], bool)


def test_http_defaults() -> None:
    args = load_bench().build_parser().parse_args(["http"])
    assert args.connections == [1, 16]
    assert (args.duration_s, args.warmup_s, args.floor_n) == (10, 2, 400)
    assert args.modes == ["proxy", "haproxy"]
    assert not args.no_sandbox_reference


# --------------------------------------------------------------------------- wrk

WRK_HUMAN_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/v1/executions
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.12ms   20.01ms 301.00ms   80.00%
    Req/Sec    84.00     10.00   100.00     70.00%
  1680 requests in 10.00s, 1.20MB read
  Non-2xx or 3xx responses: 2
Requests/sec:    167.98
Transfer/sec:    122.88KB
"""


def wrk_done_line(**changes: Any) -> str:
    """A line as the generated script's done() prints it (2 bad, 1 timeout, 2 status errors)."""
    line: dict[str, Any] = {
        "bench": "wrk-done",
        "requests": 1680,
        "duration_us": 10001234,
        "bytes": 1258291,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 2, "timeout": 1},
        "bad": 2,
        "bad_examples": ['HTTP 503: {"error":"unavailable"}', "HTTP 503: "],
        "latency_us": {
            "p50": 91234.0,
            "p90": 120000.0,
            "p99": 250500.0,
            "mean": 95123.456,
            "min": 4001.0,
            "max": 301000.0,
        },
    }
    # Compact, as done() writes it with string.format.
    return json.dumps(line | changes, separators=(",", ":"))


def test_parse_wrk_output_finds_the_done_line_among_the_human_output() -> None:
    bench = load_bench()
    raw = bench.parse_wrk_output(WRK_HUMAN_OUTPUT + wrk_done_line() + "\n")
    m = bench.wrk_measurement(raw, connections=16, threads=2)
    assert m["connections"] == 16
    assert m["threads"] == 2
    assert m["requests"] == 1680
    assert m["duration_s"] == 10.0012
    assert m["throughput_per_s"] == round(1680 / 10.001234, 2)
    assert m["latency_ms"] == {
        "p50": 91.234,
        "p90": 120.0,
        "p99": 250.5,
        "mean": 95.123,
        "min": 4.001,
        "max": 301.0,
    }
    assert m["errors"] == {"connect": 0, "read": 0, "write": 0, "status": 2, "timeout": 1}
    assert m["bad"] == 2
    # A non-200 answer is both a wrk status error and a bad response: counted once.
    assert m["failed"] == 3
    assert m["failure_examples"] == ['HTTP 503: {"error":"unavailable"}', "HTTP 503: "]


def test_parse_wrk_output_without_requests_has_no_latencies() -> None:
    bench = load_bench()
    empty = {key: None for key in LATENCY_KEYS}
    errors = {"connect": 16, "read": 0, "write": 0, "status": 0, "timeout": 0}
    line = wrk_done_line(requests=0, bad=0, bad_examples=[], latency_us=empty, errors=errors)
    m = bench.wrk_measurement(bench.parse_wrk_output(line), connections=16, threads=2)
    assert m["latency_ms"] == empty
    assert (m["requests"], m["throughput_per_s"], m["failed"]) == (0, 0.0, 16)


@pytest.mark.parametrize(
    "stdout",
    [
        WRK_HUMAN_OUTPUT,  # the script did not run its done()
        WRK_HUMAN_OUTPUT + wrk_done_line() + "\n" + wrk_done_line() + "\n",
        WRK_HUMAN_OUTPUT + wrk_done_line()[:-5] + "\n",  # cut short
        WRK_HUMAN_OUTPUT + wrk_done_line(bench="something else") + "\n",
    ],
)
def test_parse_wrk_output_wants_exactly_one_done_line(stdout: str) -> None:
    with pytest.raises(ValueError):
        load_bench().parse_wrk_output(stdout)


def test_lua_string_escapes_all_but_plain_ascii() -> None:
    lua_string = load_bench().lua_string
    assert lua_string("print(1)") == '"print(1)"'
    assert lua_string('a"b\\c\n') == '"a\\034b\\092c\\010"'
    assert lua_string("é") == '"\\195\\169"'
    assert lua_string("]]") == '"]]"'


def test_wrk_is_installed() -> None:
    """`bench http` needs wrk: scripts/setup installs it (a failure here, never a skip)."""
    assert shutil.which("wrk"), "wrk not found: run scripts/setup as root (apt-get install wrk)"


STUB_KEY = 'k"ey'
STUB_CODE = "print('é')"


class StubHandler(BaseHTTPRequestHandler):
    """Answers like POST /v1/executions would: right, wrong stdout or 500, by path.

    Anything but the request the script should send (method, headers, body) gets a 400.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sent_right = (
            self.headers.get("Authorization") == f"Bearer {STUB_KEY}"
            and self.headers.get("Content-Type") == "application/json"
            and json.loads(body) == {"code": STUB_CODE}
        )
        answers: dict[str, tuple[int, dict[str, Any]]] = {
            "/ok": (200, {"id": "x", "status": "ok", "stdout": "é\n"}),
            "/wrong-stdout": (200, {"id": "x", "status": "ok", "stdout": "e\n"}),
            "/wrong-status": (200, {"id": "x", "status": "error", "stdout": "é\n"}),
            "/error": (500, {"error": 'internal\n"error"'}),
        }
        status, answer = answers[self.path] if sent_right else (400, {"error": "bad request"})
        data = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # wrk drops its connections at the end of a run


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow  # five 1 s wrk runs
def test_wrk_script_sends_the_request_and_counts_bad_answers(stub_url: str, tmp_path: Path) -> None:
    """The generated Lua, run by the real wrk: request, checks, per-thread counts, done()."""
    bench = load_bench()
    wrk = shutil.which("wrk")
    assert wrk, "wrk not found"

    def run(path: str) -> dict[str, Any]:
        target = bench.WrkTarget(
            "POST",
            path,
            {"Authorization": f"Bearer {STUB_KEY}", "Content-Type": "application/json"},
            body=json.dumps({"code": STUB_CODE}),
            expect_status='"status":"ok"',
            expect_stdout="é\n",
        )
        m: dict[str, Any] = bench.run_wrk(wrk, stub_url, target, 2, 1, tmp_path)
        assert m["requests"] > 0
        assert (m["connections"], m["threads"]) == (2, 2)
        assert set(m["latency_ms"]) == LATENCY_KEYS
        assert all(value is not None for value in m["latency_ms"].values())
        assert {kind: m["errors"][kind] for kind in ("connect", "read", "write", "timeout")} == {
            "connect": 0,
            "read": 0,
            "write": 0,
            "timeout": 0,
        }
        return m

    ok = run("/ok")
    assert (ok["bad"], ok["failed"], ok["errors"]["status"]) == (0, 0, 0)
    assert ok["failure_examples"] == []

    for path, why in [
        ("/wrong-stdout", 'no "stdout":"é\\n": {"id":"x","status":"ok","stdout":"e\\n"}'),
        ("/wrong-status", 'no "status":"ok": {"id":"x","status":"error"'),
        ("/error", 'HTTP 500: {"error":"internal\\n\\"error\\""}'),
    ]:
        m = run(path)
        assert m["bad"] == m["failed"] == m["requests"], path
        assert m["errors"]["status"] == (m["requests"] if path == "/error" else 0)
        # One example per wrk thread that saw a bad answer, escaped into done()'s JSON.
        assert 1 <= len(m["failure_examples"]) <= 2
        assert all(example.startswith(why) for example in m["failure_examples"]), m

    health = bench.WrkTarget("POST", "/error", {})  # no checks but the status; a 400 here
    m = bench.run_wrk(wrk, stub_url, health, 1, 1, tmp_path)
    assert m["threads"] == 1
    assert m["bad"] == m["requests"] > 0
    assert m["failure_examples"][0].startswith("HTTP 400: ")


def test_http_goal_needs_both_figures_and_no_failure() -> None:
    bench = load_bench()

    def measured(throughput: float, p50: float, failed: int = 0) -> dict[str, Any]:
        return {"throughput_per_s": throughput, "latency_ms": {"p50": p50}, "failed": failed}

    floor = {"1": measured(100.0, 8.0), "16": measured(200.0, 70.0)}
    part = {
        "execution": {"1": measured(150.0, 5.0), "16": measured(320.0, 40.0)},
        "health": {"1": measured(900.0, 1.0), "16": measured(2000.0, 8.0)},
    }
    ratio = bench.http_ratios(part, floor, 16, 1)
    assert ratio == {"throughput": 1.6, "p50_latency": 1.6}
    assert bench.http_goal_met(part, ratio, 1)

    part["health"]["16"]["failed"] = 1
    assert not bench.http_goal_met(part, ratio, 1)
    part["health"]["16"]["failed"] = 0
    part["execution"]["1"]["latency_ms"]["p50"] = 10.5
    assert not bench.http_goal_met(part, bench.http_ratios(part, floor, 16, 1), 1)
    part["execution"]["1"]["latency_ms"]["p50"] = 5.0
    part["execution"]["16"]["throughput_per_s"] = 180.0
    ratio = bench.http_ratios(part, floor, 16, 1)
    assert ratio["throughput"] == 0.9
    assert not bench.http_goal_met(part, ratio, 1)
    engine = {"1": measured(250.0, 4.0), "2": measured(300.0, 6.0)}
    assert bench.engine_share(part, engine, 16) == 0.6
    assert bench.engine_share(part, None, 16) is None
    assert bench.http_ratios({"error": "x"}, floor, 16, 1) == {
        "throughput": None,
        "p50_latency": None,
    }
    assert not bench.http_goal_met({"error": "x"}, ratio, 1)


def check_wrk_measurement(part: dict, connections: int) -> None:
    assert part["connections"] == connections
    assert part["threads"] == min(connections, 2)
    assert part["duration_s"] > 0
    assert part["requests"] > 0
    assert part["throughput_per_s"] > 0
    assert part["errors"] == {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    assert part["bad"] == 0
    assert part["failed"] == 0, part["failure_examples"]
    assert part["failure_examples"] == []
    assert set(part["latency_ms"]) == LATENCY_KEYS
    assert all(value > 0 for value in part["latency_ms"].values())


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_http_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    """A real but tiny run: exec-agent serve (its own Ray) behind Serve's proxy, loaded by wrk."""
    out = tmp_path / "http.json"
    argv = [
        sys.executable, str(BENCH), "http", "--modes", "proxy", "--connections", "1", "2",
        "--duration-s", "2", "--floor-n", "10", "--no-sandbox-reference", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr + done.stdout[-4000:]

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "proxy    vs floor: throughput" in done.stderr

    assert result["benchmark"] == "http"
    config = result["config"]
    assert (config["connections"], config["duration_s"], config["floor_n"]) == ([1, 2], 2, 10)
    assert config["modes"] == ["proxy"]
    assert config["client"].startswith("wrk ")

    assert set(result["modes"]) == {"proxy"}
    proxy = result["modes"]["proxy"]
    assert "error" not in proxy, proxy.get("log_tail")
    assert proxy["start_s"] > 0
    assert proxy["drain_exit_status"] == 0
    for name in ("execution", "health"):
        assert set(proxy[name]) == {"1", "2"}
        for connections in (1, 2):
            check_wrk_measurement(proxy[name][str(connections)], connections)

    assert set(result["floor"]) == {"1", "2"}
    for clients in (1, 2):
        check_measurement(result["floor"][str(clients)], clients=clients, executions=10)

    assert set(result["ratio"]) == {"proxy"}
    assert set(result["ratio"]["proxy"]) == {"throughput", "p50_latency"}
    assert all(value > 0 for value in result["ratio"]["proxy"].values())
    assert result["engine_share"] == {"proxy": None}  # --no-sandbox-reference
    goal = result["goal"]
    assert (goal["throughput_ratio"], goal["p50_ms"]) == (1.0, 10.0)
    assert (goal["throughput_stretch"], goal["engine_share"]) == (1.5, 0.6)
    assert (goal["throughput_connections"], goal["p50_connections"]) == (2, 1)
    assert set(goal["met"]) == {"proxy"}
    assert isinstance(goal["met"]["proxy"], bool)

    assert result["sandbox_engine"] is None
    assert result["sandboxfusion_reference"]["sandbox_on"]["throughput_per_s"] > 0
    assert result["failed"] == 0


# --- streaming


def load_streaming() -> ModuleType:
    """scripts/benchlib/streaming.py (importable once scripts/bench.py put scripts/ on the path)."""
    load_bench()
    return importlib.import_module("benchlib.streaming")


def test_streaming_defaults_are_issue_15s_figures() -> None:
    args = load_bench().build_parser().parse_args(["streaming"])
    assert (args.prints, args.interval_ms, args.runs) == (200, 10.0, 3)
    assert (args.n, args.warmup, args.runtime) == (100, 5, "minimal")
    assert args.out.name == "streaming.json"


@pytest.mark.parametrize(
    "argv", [["--prints", "0"], ["--interval-ms", "0"], ["--interval-ms", "nan"], ["--n", "0"]]
)
def test_streaming_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().build_parser().parse_args(["streaming", *argv])
    assert exc.value.code == 2


def test_streamed_lines_take_the_arrival_of_the_chunk_that_ends_them() -> None:
    lines = load_streaming().Lines()
    lines.add("100.0\n100.", 100.25)
    lines.add("5\n", 100.75)
    lines.add("101.0", 101.5)  # unfinished: not a line yet
    assert lines.lines == [("100.0", 100.25), ("100.5", 100.75)]
    assert lines.latencies_ms() == [250.0, 250.0]


def check_latencies(part: dict[str, Any], n: int) -> None:
    assert part["n"] == n
    assert part["p50"] <= part["p90"] <= part["p99"] <= part["max"]


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_streaming_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    """A real but tiny run: exec-agent serve (its own Ray), streamed to the package's client."""
    out = tmp_path / "streaming.json"
    argv = [
        sys.executable, str(BENCH), "streaming", "--prints", "20", "--interval-ms", "5",
        "--runs", "2", "--n", "4", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout[-4000:]

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "websocket print to client p50" in done.stderr
    assert result["benchmark"] == "streaming"
    assert (result["config"]["prints"], result["config"]["runs"]) == (20, 2)
    assert result["floor"]["failed"] == 0
    check_latencies(result["floor"]["print_to_reader_ms"], 40)
    service = result["service"]
    assert "error" not in service, service.get("log_tail")
    assert service["start_s"] > 0
    assert service["drain_exit_status"] == 0
    latency = service["print_to_client"]
    assert latency["failed"] == 0, latency["failure_examples"]
    for transport in ("sse", "websocket"):
        check_latencies(latency[transport], 40)
    overhead = service["streamed_print_1"]
    assert overhead["failed"] == 0, overhead["failure_examples"]
    for kind in ("plain", "sse", "websocket"):
        check_latencies(overhead[kind], 4)
    assert set(overhead["extra_p50_ms"]) == {"sse", "websocket"}
    goal = result["goal"]
    assert goal["p99_ms"] == 100.0
    assert {type(goal[f"{name}_p99_within_100_ms"]) for name in ("sse", "websocket")} == {bool}
    assert result["failed"] == 0


# --- burst


def load_burst() -> ModuleType:
    """scripts/benchlib/burst.py (importable once scripts/bench.py put scripts/ on the path)."""
    load_bench()
    return importlib.import_module("benchlib.burst")


def test_burst_defaults_are_issue_12s_burst() -> None:
    args = load_bench().build_parser().parse_args(["burst"])
    assert (args.connections, args.duration_s, args.warmup_s) == (128, 20, 0)
    assert args.code == "print(1)"
    assert args.ingress == Settings.model_fields["serve_ingress"].default  # as the service ships
    assert args.out.name == "burst.json"


@pytest.mark.parametrize(
    "argv",
    [
        ["burst", "--connections", "0"],
        ["burst", "--duration-s", "0"],
        ["burst", "--warmup-s", "-1"],
        ["burst", "--ingress", "nginx"],
    ],
)
def test_burst_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_burst_record_check_finds_every_lost_record() -> None:
    check = load_burst().record_check
    records = [{"id": f"a{i}", "status": "ok"} for i in range(5)]
    records.append({"id": "cut", "status": "internal_error"})  # in flight when wrk stopped
    clean = check([f"a{i}" for i in range(5)], records, connections=4, unanswered=0)
    assert (clean["stored"], clean["answered_200"], clean["lost"]) == (6, 5, 0)
    assert (clean["beyond_200s"], clean["beyond_200s_bound"]) == (1, 4)
    assert clean["beyond_200s_statuses"] == {"internal_error": 1}
    assert clean["statuses"] == {"internal_error": 1, "ok": 5}

    records[0]["status"] = "running"  # answered 200 yet unfinished: both
    records[1]["status"] = "timeout"
    lost = check([f"a{i}" for i in range(5)] + ["gone"], records, connections=4, unanswered=0)
    assert (lost["missing"], lost["not_ok"], lost["non_terminal"]) == (1, 2, 1)
    assert lost["lost"] == 4
    assert lost["examples"] == ["gone", "a0", "a1", "a0"]

    extra = [{"id": f"x{i}", "status": "ok"} for i in range(7)]
    assert check([], extra, connections=4, unanswered=2)["lost"] == 1  # 7 beyond, 6 allowed
    assert check([], extra, connections=4, unanswered=3)["lost"] == 0


def burst_result(**changes: Any) -> dict[str, Any]:
    """A burst result as bench_burst builds it, with no failure."""
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    result: dict[str, Any] = {
        "config": {
            "connections": 4,
            "key_max_concurrent": 4,
            "duration_s": 2,
            "code": "print(1)",
            "ingress": "proxy",
        },
        "wrk": {
            "requests": 100,
            "duration_s": 2.0,
            "throughput_per_s": 50.0,
            "latency_ms": {"p50": 70.0, "p90": 90.0, "p99": 120.0, "max": 130.0},
            "errors": errors,
            "bad": 0,
            "failed": 0,
            "failure_examples": [],
        },
        "answers": {"statuses": {"200": 100}, "non_200": {}},
        "records": {
            "stored": 102,
            "answered_200": 100,
            "missing": 0,
            "not_ok": 0,
            "non_terminal": 0,
            "beyond_200s": 2,
            "beyond_200s_statuses": {"internal_error": 2},
            "beyond_200s_bound": 4,
            "settle_s": 0.1,
            "lost": 0,
        },
    }
    return result | changes


def test_burst_goals_and_summary() -> None:
    burst = load_burst()
    result = burst_result()
    result["goal"] = burst.burst_goal(result)
    assert result["goal"] == {"no_non_200": True, "no_record_lost": True}
    assert burst.burst_failed(result) == 0
    text = burst.summarize_burst(result)
    assert "non-200  none; 200 with a wrong body: 0" in text
    assert "no answer other than 200: met; no record lost: met" in text
    assert "2 beyond the 200s" in text

    refused = burst_result()
    refused["wrk"] |= {"bad": 3, "failed": 4, "failure_examples": ["HTTP 429: {}"]}
    refused["wrk"]["errors"] |= {"status": 3, "timeout": 1}
    refused["answers"] = {
        "statuses": {"200": 97, "429": 3},
        "non_200": burst.non_200(refused["wrk"], {"200": 97, "429": 3}),
    }
    assert refused["answers"]["non_200"] == {"429": 3, "timeout": 1}
    refused["records"]["lost"] = 2
    refused["goal"] = burst.burst_goal(refused)
    assert refused["goal"] == {"no_non_200": False, "no_record_lost": False}
    assert burst.burst_failed(refused) == 6
    text = burst.summarize_burst(refused)
    assert "non-200  429: 3, timeout: 1; 200 with a wrong body: 0" in text
    assert "e.g. HTTP 429: {}" in text
    assert "no answer other than 200: NOT met; no record lost: NOT met" in text

    wrong_body = burst_result()
    wrong_body["wrk"] |= {"bad": 1, "failed": 1}
    assert burst.burst_goal(wrong_body)["no_non_200"] is False
    assert burst.bad_200s(wrong_body) == 1

    broken = {"config": result["config"], "error": "RuntimeError: no service"}
    broken["goal"] = burst.burst_goal(broken)
    assert broken["goal"] == {"no_non_200": False, "no_record_lost": False}
    assert burst.burst_failed(broken) == 1
    assert "ERROR RuntimeError: no service" in burst.summarize_burst(broken)


@pytest.mark.slow  # two 1 s wrk runs
def test_burst_script_counts_answers_by_status_and_keeps_the_200s_ids(
    stub_url: str, tmp_path: Path
) -> None:
    """The burst's Lua on top of the http benchmark's, run by the real wrk against the stub."""
    bench, burst = load_bench(), load_burst()
    wrk = shutil.which("wrk")
    assert wrk, "wrk not found"
    answers = tmp_path / "answers.json"
    for path, status in [("/ok", "200"), ("/error", "500")]:
        target = burst.BurstTarget(
            "POST",
            path,
            {"Authorization": f"Bearer {STUB_KEY}", "Content-Type": "application/json"},
            body=json.dumps({"code": STUB_CODE}),
            expect_status='"status":"ok"',
            expect_stdout="é\n",
            answers_path=str(answers),
        )
        m = bench.run_wrk(wrk, stub_url, target, 2, 1, tmp_path)
        got = burst.read_answers(answers)
        assert m["requests"] > 0
        assert got["statuses"] == {status: m["requests"]}
        if status == "200":
            assert got["ok_ids"] == ["x"] * m["requests"]  # the stub's one id
            assert m["bad"] == 0
        else:
            assert got["ok_ids"] == []
            assert burst.non_200(m, got["statuses"]) == {"500": m["requests"]}


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_burst_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    """A real but tiny burst: 4 connections for 2 s, the key allowed 4 in flight."""
    out = tmp_path / "burst.json"
    argv = [
        sys.executable, str(BENCH), "burst", "--connections", "4", "--duration-s", "2",
        "--ingress", "proxy", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr + done.stdout[-4000:]

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "no answer other than 200: met; no record lost: met" in done.stderr

    assert result["benchmark"] == "burst"
    config = result["config"]
    assert (config["connections"], config["duration_s"], config["key_max_concurrent"]) == (4, 2, 4)
    assert config["ingress"] == "proxy"
    assert "error" not in result, result.get("log_tail")
    assert result["start_s"] > 0
    assert result["drain_exit_status"] == 0
    check_wrk_measurement(result["wrk"], 4)
    assert result["answers"] == {"statuses": {"200": result["wrk"]["requests"]}, "non_200": {}}
    records = result["records"]
    assert records["answered_200"] == result["wrk"]["requests"]
    assert (records["missing"], records["not_ok"], records["non_terminal"]) == (0, 0, 0)
    assert records["stored"] == records["answered_200"] + records["beyond_200s"]
    assert 0 <= records["beyond_200s"] <= records["beyond_200s_bound"] == 4
    assert records["lost"] == 0
    assert result["goal"] == {"no_non_200": True, "no_record_lost": True}
    assert result["failed"] == 0


# --- humaneval


@pytest.mark.parametrize(
    "argv",
    [
        ["humaneval", "--paths", "nope"],
        ["humaneval", "--paths"],
        ["humaneval", "--limit", "0"],
        ["humaneval", "--slots", "0"],
        ["humaneval", "--max-in-flight", "-1"],
        ["humaneval", "--batch-size", "0"],
    ],
)
def test_humaneval_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_bench().build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_humaneval_defaults_run_every_path_against_the_reference() -> None:
    args = load_bench().build_parser().parse_args(["humaneval"])
    assert args.paths == ["engine", "pipeline", "http"]
    assert (args.limit, args.slots, args.no_reference) == (None, 2, False)
    assert args.out.name == "humaneval.json"


def test_humaneval_rows_are_canonical_solutions_judged_by_their_tests() -> None:
    bench = load_bench()
    problems = bench.humaneval_problems(None)
    assert len(problems) == 164
    rows = bench.humaneval_rows(problems, "minimal")
    first = problems[0]
    assert rows[0]["task_id"] == "HumanEval/0"
    assert rows[0]["code"] == first["prompt"] + first["canonical_solution"]
    assert rows[0]["test_code"] == first["test"] + f"\ncheck({first['entry_point']})"
    assert rows[0]["runtime"] == "minimal"
    assert [
        row["task_id"] for row in bench.humaneval_rows(bench.humaneval_problems(3), "minimal")
    ] == [
        "HumanEval/0",
        "HumanEval/1",
        "HumanEval/2",
    ]


def test_humaneval_outcome_counts_what_did_not_pass() -> None:
    bench = load_bench()
    rows = [{"task_id": f"T/{i}"} for i in range(4)]
    records = [
        {"status": "ok", "passed": True},
        {"status": "nonzero_exit", "passed": False, "stderr": "AssertionError"},
        {"status": "timeout", "passed": False, "stderr": ""},
        {"status": None, "passed": None, "error": "invalid row: code: missing"},
    ]
    outcome = bench.humaneval_outcome(rows, records, 2.0)
    assert (outcome["total"], outcome["passed"], outcome["failed"]) == (4, 1, 3)
    assert outcome["statuses"] == {"error": 1, "nonzero_exit": 1, "ok": 1, "timeout": 1}
    assert outcome["problems_per_s"] == 2.0
    assert outcome["failure_examples"][0].startswith("T/1: nonzero_exit, ")
    assert "invalid row" in outcome["failure_examples"][2]


def test_the_reference_harness_copy_gets_its_exec_line_enabled(tmp_path: Path) -> None:
    enable = load_bench().enable_reference_exec
    commented = tmp_path / "commented.py"
    commented.write_text(  # as OpenAI's repository has it: "#" in column 0, then the indent
        "def run(check_program, exec_globals):\n"
        "    with open('/dev/null'):\n"
        "# WARNING: runs untrusted code\n"
        "#            exec(check_program, exec_globals)\n"
        "    return 'passed'\n"
    )
    assert enable(commented) == "uncommented"
    text = commented.read_text()
    assert "\n            exec(check_program, exec_globals)\n" in text
    assert "# WARNING" in text
    namespace: dict[str, Any] = {}
    exec(compile(text, str(commented), "exec"), namespace)  # noqa: S102 - the file written above
    ran: dict[str, Any] = {}
    assert namespace["run"]("ran['x'] = 1", {"ran": ran}) == "passed"
    assert ran == {"x": 1}
    shipped = tmp_path / "shipped.py"
    shipped.write_text("        exec(check_program, exec_globals)\n")
    assert enable(shipped) == "as shipped"
    missing = tmp_path / "missing.py"
    missing.write_text("pass\n")
    with pytest.raises(RuntimeError, match="no line"):
        enable(missing)


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_humaneval_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    """A real but small run: six problems through every path and OpenAI's harness."""
    out = tmp_path / "humaneval.json"
    argv = [sys.executable, str(BENCH), "humaneval", "--limit", "6", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]

    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert re.search(r"reference +6/6 passed", done.stderr), done.stderr[-2000:]

    assert result["benchmark"] == "humaneval"
    assert result["config"]["problems"] == 6
    reference = result["reference"]
    assert (reference["total"], reference["passed"], reference["workers"]) == (6, 6, 2)
    assert reference["exec_line"] in {"as shipped", "uncommented"}
    assert set(result["paths"]) == {"engine", "pipeline", "http"}
    for name, part in result["paths"].items():
        assert "error" not in part, (name, part)
        assert (part["total"], part["passed"], part["failed"]) == (6, 6, 0), part
        assert part["statuses"] == {"ok": 6}
        assert part["elapsed_s"] > 0
        assert result["ratio_to_reference"][name] > 0
    assert result["paths"]["pipeline"]["ray_start_s"] > 0
    assert result["paths"]["http"]["drain_exit_status"] == 0
    assert set(result["paths"]["engine"]["isolation"]["layers"]) <= set(ISOLATION_LAYERS)
    goal = result["goal"]
    assert goal["max_ratio"] == {"engine": round(1 / 3, 4), "pipeline": 1.0, "http": 0.5}
    assert goal["stretch_ratio"] == {"http": round(1 / 3, 4)}
    assert set(goal["met"]) == {"engine", "pipeline", "http"}
    assert all(isinstance(met, bool) for met in goal["met"].values())
    assert result["failed"] == 0


# --- all


def test_all_runs_every_benchmark_in_turn_and_lists_every_goal() -> None:
    """``scripts/bench all``: each benchmark as its own command line would run it (writing its
    JSON beside the suite's), a failing one reported while the others run, every goal listed."""
    bench = load_bench()
    suite = importlib.import_module("benchlib.suite")
    args = bench.build_parser().parse_args(["all"])
    assert args.out.name == "all.json"
    assert suite.SUITE == (
        "sandbox",
        "runtimes",
        "sessions",
        "streaming",
        "http",
        "burst",
        "compat",
        "humaneval",
    )
    ran: list[list[str]] = []
    fabricated = {
        "sandbox": {"failed": 0, "goal": {"throughput_ratio": 2.5, "met": False}},
        "runtimes": {"failed": 0, "goal": {"speedup": 20.0, "met": False}},
        "sessions": {"failed": 0, "goal": {"create_p50_at_most_50_ms": True}},
        "streaming": {
            "failed": 0,
            "goal": {"p99_ms": 100.0, "sse_p99_within_100_ms": True, "ws_p99": False},
        },
        "http": {"failed": 0, "goal": {"met": {"proxy": False, "haproxy": True}}},
        "compat": {"failed": 0},  # figures and verdicts, no goal of its own
        "humaneval": {"failed": 0, "goal": {"met": {"engine": True, "http": False}}},
    }

    def parse(argv: list[str]) -> Any:
        ran.append(argv)
        name = argv[0]

        def run(_: Any) -> dict[str, Any]:
            if name == "burst":
                raise RuntimeError("wrk is missing")
            return dict(fabricated[name])

        return SimpleNamespace(
            run=run, summarize=lambda result: f"{name}: summed up", out=Path(argv[2])
        )

    with tempfile.TemporaryDirectory() as tmp:
        args.out = Path(tmp) / "all.json"
        result = suite.run_suite(args, parse)
        assert sorted(path.name for path in Path(tmp).iterdir()) == [
            "compat.json",
            "http.json",
            "humaneval.json",
            "runtimes.json",
            "sandbox.json",
            "sessions.json",
            "streaming.json",
        ]
    assert [argv[0] for argv in ran] == list(suite.SUITE)
    assert all(argv[1:] == ["--out", str(Path(tmp) / f"{argv[0]}.json")] for argv in ran)
    assert result["failed"] == 1
    assert result["results"]["burst"]["error"] == "RuntimeError: wrk is missing"
    assert result["goals"] == {
        "sandbox": {"": False},
        "runtimes": {"": False},
        "sessions": {"create_p50_at_most_50_ms": True},
        "streaming": {"sse_p99_within_100_ms": True, "ws_p99": False},
        "http": {"proxy": False, "haproxy": True},
        "burst": {},
        "compat": {},
        "humaneval": {"engine": True, "http": False},
    }
    assert suite.goals_met({"goal": {"no_non_200": True, "no_record_lost": False}}) == {
        "no_non_200": True,
        "no_record_lost": False,
    }
    summary = suite.summarize_suite(result)
    assert "http: summed up" in summary and "burst: ERROR RuntimeError: wrk is missing" in summary
    goal_lines = summary.split("goals:\n", 1)[1].splitlines()
    assert [line.split() for line in goal_lines] == [
        ["sandbox", "NOT", "met"],
        ["runtimes", "NOT", "met"],
        ["sessions", "create_p50_at_most_50_ms", "met"],
        ["streaming", "sse_p99_within_100_ms", "met"],
        ["streaming", "ws_p99", "NOT", "met"],
        ["http", "proxy", "NOT", "met"],
        ["http", "haproxy", "met"],
        ["humaneval", "engine", "met"],
        ["humaneval", "http", "NOT", "met"],
    ]


# --- compat


def load_compat() -> ModuleType:
    """scripts/benchlib/compat.py (importable once scripts/bench.py put scripts/ on the path)."""
    load_bench()
    return importlib.import_module("benchlib.compat")


def test_compat_defaults_are_a_verl_loop_at_128_in_flight() -> None:
    args = load_bench().build_parser().parse_args(["compat"])
    assert (args.programs, args.cases, args.in_flight) == (64, 8, 128)
    assert args.out.name == "compat.json"
    for argv in (["compat", "--in-flight", "0"], ["compat", "--cases", "0"]):
        with pytest.raises(SystemExit) as exc:
            load_bench().build_parser().parse_args(argv)
        assert exc.value.code == 2


def test_compat_work_expects_each_programs_verdict() -> None:
    compat = load_compat()
    work = compat.make_work(8, 5)
    assert len(work) == 40 and work == compat.make_work(8, 5)  # reproducible
    by_kind: dict[str, set[str]] = {}
    for item in work:
        a, b = map(int, item["stdin"].split())
        assert item["expected_stdout"] == str(a + b)
        kind = next(kind for kind, code in compat.KINDS if code == item["code"])
        by_kind.setdefault(kind, set()).add(item["expected"])
    assert by_kind["right"] == {"pass"}
    assert "fail" in by_kind["wrong"] and "fail" in by_kind["crashes_on_odd"]


def test_compat_verdicts_judge_both_answers_alike() -> None:
    compat = load_compat()
    ran = {"status": "Finished", "return_code": 0, "stdout": "3\n"}
    assert compat.compat_verdict({"status": "Success", "run_result": ran}, "3") == "pass"
    assert compat.compat_verdict({"status": "Success", "run_result": ran}, "4") == "fail"
    failed = {"status": "Failed", "run_result": {**ran, "return_code": 1}}
    assert compat.compat_verdict(failed, "3") == "fail"
    assert compat.compat_verdict({"status": "SandboxError", "message": "x"}, "3") == "error"
    record = {"status": "ok", "exit_code": 0, "stdout": "3\n"}
    assert compat.record_verdict(record, "3") == "pass"
    assert compat.record_verdict({**record, "exit_code": 1, "status": "error"}, "3") == "fail"
    assert compat.record_verdict({**record, "status": "internal_error"}, "3") == "error"


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_compat_benchmark_writes_consistent_results(tmp_path: Path) -> None:
    """A real but tiny loop: 4 programs x 3 cases, 4 in flight, each way."""
    out = tmp_path / "compat.json"
    argv = [
        sys.executable, str(BENCH), "compat", "--programs", "4", "--cases", "3",
        "--in-flight", "4", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout[-4000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert "error" not in result, result.get("log_tail")
    assert result["drain_exit_status"] == 0
    assert set(result["ways"]) == {"compat", "executions", "batches"}
    for part in result["ways"].values():
        assert part["calls"] == 12 and part["wrong_verdicts"] == 0, part
        assert part["calls_per_s"] > 0 and part["latency_ms"]["p50"] > 0
        assert part["verdicts"] == result["config"]["expected_verdicts"]
    assert result["verdicts_equal"] is True
    assert result["failed"] == 0
