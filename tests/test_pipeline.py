"""Ray Data on the sandbox (``executors/_pipeline/``): rows to requests, and the pipeline from
each kind of driver.

- a driver inside the cluster: the session's Ray, with the local-pool fallback and with the
  executor deployment on Serve;
- a Ray Jobs submission (``scripts/submit_job.py``) and a Ray Client driver
  (``scripts/pipeline_example.py --address ray://...``), against a ``ray start --head`` this
  module starts on ports of its own and stops by its process group (never ``ray stop``, which
  would end every Ray on the machine).

Counts and structure only, never timings.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from executors import PipelineConfigurationError, SandboxConfig, row_to_request
from executors._pipeline import OUTPUT_COLUMNS, to_plain
from executors._pipeline._backends import SERVE_CONTROLLER
from executors._pipeline._rows import describe_error
from tests.support.limits import MIB, SERVICE_DEFAULT_LIMITS, SERVICE_MAX_LIMITS
from tests.support.paths import REPO, SCRIPTS
from tests.support.polling import eventually
from tests.support.ports import free_ports
from tests.support.scripts import load_script

EXAMPLE = SCRIPTS / "pipeline_example.py"
SUBMIT = SCRIPTS / "submit_job.py"
DEFAULTS = SERVICE_DEFAULT_LIMITS
MAXIMA = SERVICE_MAX_LIMITS
POOL_CPUS = 0.5
"""What this module's pools reserve: the session's Ray has 2 CPUs for everything."""
SLOT_UID_BASE = 63000
"""Our local pools' slots: host uids of their own (see tests/support/watched_pool.py's
SLOT_UID_BASE)."""


def example() -> ModuleType:
    """scripts/pipeline_example.py, for its programs and counts."""
    return load_script("pipeline_example")


# --------------------------------------------------------------------------- rows -> requests


def test_to_plain_turns_numpy_and_missing_values_into_python() -> None:
    value = {
        "a": np.int64(3),
        "b": np.float32(0.5),
        "c": np.bool_(True),
        "d": np.str_("x"),
        "e": np.array([np.int64(1), np.int64(2)]),
        "f": float("nan"),
        "g": pd.NA,
        "h": np.array([{"k": np.str_("v")}], dtype=object),
        "i": (np.int32(1), None),
    }
    plain = to_plain(value)
    assert plain == {
        "a": 3,
        "b": 0.5,
        "c": True,
        "d": "x",
        "e": [1, 2],
        "f": None,
        "g": None,
        "h": [{"k": "v"}],
        "i": [1, None],
    }
    assert type(plain["a"]) is int and type(plain["c"]) is bool and type(plain["d"]) is str


def test_nan_is_what_pandas_gives_for_a_missing_number() -> None:
    """The premise of the conversions above: a missing value in a numeric column is NaN."""
    frame = pd.DataFrame([{"a": 1}, {"b": 2}])
    assert math.isnan(frame.to_dict("records")[0]["b"])


def test_a_row_as_ray_data_hands_it_over_becomes_a_request() -> None:
    """Numpy scalars and arrays, NaN for a missing value, a struct column's absent fields."""
    row = {
        "code": np.str_("print(input())"),
        "stdin": np.str_("7"),
        "files": {"a.txt": np.str_("A"), "b.txt": None},  # b.txt: another row's file
        "test_code": float("nan"),
        "cases": np.array(
            [
                {"stdin": np.str_("1"), "expected_stdout": np.str_("1")},
                {"stdin": None, "expected_stdout": np.str_("")},
            ],
            dtype=object,
        ),
        "limits": {
            "wall_timeout_s": np.float64(2.5),
            "memory_mb": np.int64(64),
            "cpu_time_s": np.float64("nan"),
            "max_processes": None,
        },
        "name": "passes through, not a request field",
    }
    request = row_to_request(row, DEFAULTS, MAXIMA)
    assert request.code == "print(input())" and type(request.code) is str
    assert request.stdin == "7"
    assert request.files == {"a.txt": "A"}
    assert request.test_code is None
    assert request.cases is not None
    assert [(case.stdin, case.expected_stdout) for case in request.cases] == [("1", "1"), ("", "")]
    assert request.limits.wall_timeout_s == 2.5
    assert request.limits.memory_bytes == 64 * MIB
    assert request.limits.cpu_time_s == DEFAULTS.cpu_time_s  # NaN: not given
    assert request.limits.max_processes == DEFAULTS.max_processes


def test_a_row_may_give_json_text_and_arrow_map_pairs() -> None:
    row = {
        "code": "print(1)",
        "files": [("x.py", "X = 1")],  # an Arrow map column, as pandas hands it over
        "cases": json.dumps([{"stdin": "", "expected_stdout": "1"}]),
        "limits": json.dumps({"wall_timeout_s": 1}),
        "test_code": "assert True",
    }
    request = row_to_request(row, DEFAULTS, MAXIMA)
    assert request.files == {"x.py": "X = 1"}
    assert request.cases is not None and request.cases[0].expected_stdout == "1"
    assert request.limits.wall_timeout_s == 1
    assert request.judged


def test_a_row_without_limits_gets_the_defaults() -> None:
    assert row_to_request({"code": "pass"}, DEFAULTS, MAXIMA).limits == DEFAULTS


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"stdin": "x"}, "code: missing"),
        ({"code": float("nan")}, "code: missing"),
        ({"code": "1", "limits": {"memory_mb": np.int64(0)}}, "memory_mb"),
        (
            {"code": "1", "limits": {"wall_timeout_s": 31}},
            "over the server maximum: wall_timeout_s",
        ),
        ({"code": "1", "limits": {"bogus": 1}}, "bogus"),
        ({"code": "1", "files": {"../x": "y"}}, "relative"),
        ({"code": "1", "files": "not json"}, "files: not a JSON object"),
        ({"code": "1", "files": 3}, "files: expected an object"),
        ({"code": "1", "cases": []}, "cases"),
        ({"code": "1", "cases": [{"stdin": "1"}]}, "expected_stdout"),
        ({"code": "a\x00b"}, "NUL"),
        ({"code": np.int64(1)}, "code"),
    ],
)
def test_a_bad_row_is_refused_with_a_message(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        row_to_request(row, DEFAULTS, MAXIMA)
    described = describe_error(caught.value)
    assert described.startswith("invalid row: ")
    assert message in described


def test_an_executor_failure_is_described_as_such() -> None:
    assert describe_error(TimeoutError("slow")) == "executor failed: TimeoutError: slow"


def test_the_serve_controller_looked_up_is_serves_own() -> None:
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    assert SERVE_CONTROLLER == (SERVE_CONTROLLER_NAME, SERVE_NAMESPACE)


# --------------------------------------------------------------------------- in-cluster driver


def mapper_options(**options: Any) -> dict[str, Any]:
    return {
        "default_limits": DEFAULTS,
        "max_limits": MAXIMA,
        "local_num_cpus": POOL_CPUS,
        "sandbox_config": SandboxConfig(slot_uid_base=SLOT_UID_BASE),
        **options,
    }


def check_example_results(rows: list[dict[str, Any]], executor: str) -> None:
    """The example's programs came back in order, with the statuses and verdicts it expects."""
    module = example()
    programs, expected = module.build_rows(len(rows))
    assert [row["name"] for row in rows] == [program["name"] for program in programs]
    assert set(OUTPUT_COLUMNS) <= set(rows[0])
    summary = module.summarize(rows)
    assert summary["status"] == expected["status"]
    assert summary["passed"] == expected["passed"]
    assert summary["executor"] == {executor: len(rows) - expected["status"].get("error", 0)}
    for row in rows:
        if row["error"] is not None:  # refused: no record at all
            assert row["error"].startswith("invalid row: ")
            assert all(row[name] is None for name in OUTPUT_COLUMNS if name != "error")
            continue
        assert row["status"] is not None and len(row["id"]) == 36
        assert isinstance(row["stdout"], str) and isinstance(row["wall_time_s"], float)
        cases = row.get("cases")  # the input column, passed through (run_programs: as JSON)
        if cases is not None:
            results = json.loads(row["case_results"])
            assert len(results) == len(json.loads(cases) if isinstance(cases, str) else cases)
            assert row["passed"] == all(case["passed"] for case in results)
        else:
            assert row["case_results"] is None


def pool_is_gone(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name)
    except ValueError:
        return True
    return False


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_without_a_deployment_the_pipeline_starts_and_ends_a_local_pool(ray_session: None) -> None:
    from executors import run_programs

    pool = "exec-agent-test-pipeline-pool"
    rows, _ = example().build_rows(len(example().PROGRAMS))
    results = run_programs(
        rows,
        mapper_options=mapper_options(
            app_name="exec-agent-test-no-such-app", local_pool_name=pool, max_in_flight=3
        ),
        batch_size=4,  # several batches, one mapper
        batch_format="pandas",
    )
    check_example_results(results, "local")
    # The pool belonged to the mapper, which Ray Data stopped with the dataset's execution.
    eventually(lambda: pool_is_gone(pool), 30, "the mapper's pool is gone")


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_a_mapper_keeps_at_most_max_in_flight_rows_running(ray_session: None) -> None:
    """One row in flight on a two-slot pool: the runs never overlap."""
    from executors import run_programs

    code = "import time\nprint(time.time())\ntime.sleep(0.3)\nprint(time.time())"
    results = run_programs(
        [{"code": code} for _ in range(4)],
        mapper_options=mapper_options(
            backend="local", local_pool_name="exec-agent-test-pipeline-one", max_in_flight=1
        ),
        batch_format="numpy",
    )
    assert [row["status"] for row in results] == ["ok"] * 4
    spans = sorted(tuple(map(float, row["stdout"].split())) for row in results)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_a_call_that_fails_gives_each_of_its_rows_the_error(ray_session: None) -> None:
    """Rows go to the pool two at a time here (max_in_flight): a call that times out is an
    error on each of its rows; the next call runs on the slots the first left free."""
    from executors import run_programs

    slow = {"code": "import time\ntime.sleep(20)", "limits": {"wall_timeout_s": 30}}
    rows = [slow, slow, {"code": "print(1)"}, {"code": "print(2)"}]
    results = run_programs(
        rows,
        mapper_options=mapper_options(
            backend="local",
            local_pool_name="exec-agent-test-pipeline-timeout",
            local_slots=4,
            max_in_flight=2,
            timeout_s=3,
        ),
        batch_size=4,
    )
    errors = [row["error"] for row in results]
    assert errors[0] == errors[1], errors
    assert errors[0].startswith("executor failed: GetTimeoutError"), errors
    assert [row["status"] for row in results] == [None, None, "ok", "ok"]
    assert [row["stdout"] for row in results] == [None, None, "1\n", "2\n"]


@pytest.fixture(scope="module")
def deployed_executor(ray_session: None) -> Iterator[str]:
    """The service's executor deployment (as ``exec-agent serve`` sizes it, with a small CPU
    reservation) in a Serve application of its own; its name."""
    from ray import serve

    from serve_app.deployment import executor_app
    from serve_app.settings import Settings

    app = "exec-agent-test-pipeline"
    serve.start(proxy_location="Disabled")
    serve.run(executor_app(Settings(), num_cpus=POOL_CPUS), name=app, route_prefix=None)
    yield app
    serve.delete(app)
    serve.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_with_the_executor_deployed_the_pipeline_uses_it(deployed_executor: str) -> None:
    from executors import run_programs

    rows, _ = example().build_rows(len(example().PROGRAMS))
    results = run_programs(
        rows,
        mapper_options=mapper_options(backend="auto", app_name=deployed_executor),
        batch_format="numpy",
    )
    check_example_results(results, "serve")


@pytest.mark.ray
def test_backend_serve_without_a_deployment_fails_the_mapper(ray_session: None) -> None:
    from executors import SandboxMapper

    with pytest.raises(PipelineConfigurationError, match="no executor deployment"):
        SandboxMapper(**mapper_options(backend="serve", app_name="exec-agent-test-missing"))


# --------------------------------------------------------------------------- a cluster of our own


@dataclass(frozen=True)
class HeadCluster:
    """A ``ray start --head`` of this module's: its addresses and its clients' environment."""

    dashboard_url: str
    client_address: str
    env: dict[str, str]
    temp_dir: Path


HEAD_START_TIMEOUT_S = 120.0
HEAD_STOP_GRACE_S = 5.0


@pytest.fixture(scope="module")
def head_cluster() -> Iterator[HeadCluster]:
    """A one-node cluster on loopback ports of its own, with token authentication.

    Started with ``--block`` in a session of its own, so that its whole process group can be
    ended; then whatever still names its temporary directory (only this cluster's processes
    do) is killed too.
    """
    import httpx

    gcs, client, dashboard, agent_http, agent_grpc, metrics, runtime_env = free_ports(7)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-pl-", dir="/tmp"))  # short: socket paths
    token = secrets.token_hex(32)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))
    }
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # The job's entrypoint runs `python`: this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    argv = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--ray-client-server-port={client}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--object-store-memory={200 * MIB}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    log_path = temp_dir / "head.log"
    with log_path.open("wb") as log:
        head = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            assert head.poll() is None, log_path.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(
                    f"{url}/api/version",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=2.0,
                )
                if answer.status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        yield HeadCluster(url, f"ray://127.0.0.1:{client}", env, temp_dir)
    finally:
        stop_head(head, temp_dir)


def stop_head(head: subprocess.Popen[bytes], temp_dir: Path) -> None:
    """End the head's process group (SIGTERM, then SIGKILL), then its strays."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(HEAD_STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()
    marker = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def summary_line(stdout: str) -> dict[str, Any]:
    """The example's JSON summary among the other lines of a log."""
    found = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"rows"')]
    assert len(found) == 1, stdout[-3000:]
    summary: dict[str, Any] = found[0]
    return summary


def check_summary(summary: dict[str, Any], rows: int) -> None:
    _, expected = example().build_rows(rows)
    assert summary["as_expected"] is True, summary
    assert summary["rows"] == rows
    assert summary["status"] == expected["status"]
    assert summary["passed"] == expected["passed"]
    assert summary["executor"] == {"local": rows - expected["status"].get("error", 0)}


EXAMPLE_ARGS = ["--rows", "10", "--local-num-cpus", str(POOL_CPUS)]


def run_against(head_cluster: HeadCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python argv...`` as a client of ``head_cluster`` would run it."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=head_cluster.temp_dir,
        env=head_cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_a_ray_job_runs_the_example_pipeline(head_cluster: HeadCluster) -> None:
    done = run_against(
        head_cluster, str(SUBMIT), "--address", head_cluster.dashboard_url, "--timeout-s", "240",
        "--", *EXAMPLE_ARGS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "SUCCEEDED" in done.stderr
    check_summary(summary_line(done.stdout), 10)


RAY_CLIENT_START_FAILURE = "Initialization failure from server"
"""How Ray 2.60's client answers when the per-client server its proxier starts for a connection
dies at start-up: seen now and then in full runs of this suite, with that server's logs empty
(``SpecificServer startup failed``, or ``psutil.ZombieProcess`` escaping the proxier's own
check). Not understood yet: a connection that fails so is tried again, up to
``RAY_CLIENT_ATTEMPTS`` in all; any other failure fails the test at once."""
RAY_CLIENT_ATTEMPTS = 3


@pytest.mark.ray
@pytest.mark.sandbox
@pytest.mark.slow
def test_a_ray_client_driver_runs_the_example_pipeline(head_cluster: HeadCluster) -> None:
    for _attempt in range(RAY_CLIENT_ATTEMPTS):
        done = run_against(
            head_cluster, str(EXAMPLE), "--address", head_cluster.client_address, *EXAMPLE_ARGS
        )
        if done.returncode == 0 or RAY_CLIENT_START_FAILURE not in done.stderr:
            break
    servers = sorted(head_cluster.temp_dir.glob("session_latest/logs/ray_client_server*"))
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in servers)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:] + logs
    check_summary(summary_line(done.stdout), 10)
