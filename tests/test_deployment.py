"""The engine on Ray: ``SandboxExecutor`` as a plain actor and as a Serve deployment."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from executors import (
    ISOLATION_LAYERS,
    ExecutionRecord,
    ExecutionRequest,
    ExecutorError,
    Limits,
    PoolClosedError,
    SandboxConfig,
    SandboxExecutor,
    app_builder,
    build_executor_app,
)
from tests.support.polling import eventually
from tests.support.ports import free_ports
from tests.support.processes import alive, descendants

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

MIB = 1024 * 1024
LIMITS = Limits(
    wall_timeout_s=10,
    cpu_time_s=10,
    memory_bytes=128 * MIB,
    max_output_bytes=64 * 1024,
    max_processes=16,
    max_file_bytes=1 * MIB,
)
ACTOR_CPUS = 0.5  # Ray has 2 CPUs here; leave room for the other actors and the replica
SLEEP_2_S = "import time; time.sleep(2); print('done')"


def request(code: str) -> ExecutionRequest:
    return ExecutionRequest(code=code, limits=LIMITS)


def interval(record: dict[str, Any]) -> tuple[datetime, datetime]:
    checked = ExecutionRecord.model_validate(record)
    assert checked.started_at is not None and checked.finished_at is not None
    return checked.started_at, checked.finished_at


@pytest.fixture(scope="module")
def executor(ray_session: None) -> Iterator[Any]:
    """A 2-slot executor as a plain Ray actor, shared by this module's actor tests."""
    import ray

    actor: Any = ray.remote(SandboxExecutor).options(num_cpus=ACTOR_CPUS).remote(SandboxConfig(), 2)
    yield actor
    ray.get(actor.close.remote())
    ray.kill(actor)


@pytest.fixture(scope="module")
def serve_instance(ray_session: None) -> Iterator[None]:
    """Serve without an HTTP proxy (nothing here speaks HTTP), stopped after this module."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()  # type: ignore[no-untyped-call]


def small_app(**options: Any) -> Any:
    return build_executor_app(
        SandboxConfig(), 2, min_replicas=1, max_replicas=1, num_cpus=ACTOR_CPUS, **options
    )


# --- as a plain Ray actor


def test_actor_runs_a_program(executor: Any) -> None:
    import ray

    record = ray.get(executor.run.remote(request('print("hello")')))
    checked = ExecutionRecord.model_validate(record)
    assert (checked.status, checked.stdout) == ("ok", "hello\n")


def test_actor_accepts_a_request_as_a_dict(executor: Any) -> None:
    import ray

    record = ray.get(executor.run.remote(request("raise SystemExit(3)").model_dump()))
    assert (record["status"], record["exit_code"]) == ("nonzero_exit", 3)


def test_slots_run_concurrently(executor: Any) -> None:
    import ray

    refs = [executor.run.remote(request("import time; time.sleep(1)")) for _ in range(2)]
    (start_a, end_a), (start_b, end_b) = (interval(record) for record in ray.get(refs))
    assert max(start_a, start_b) < min(end_a, end_b)  # the two runs overlapped


def test_run_batch_keeps_request_order(executor: Any) -> None:
    import ray

    # The first items sleep longest, so they finish last.
    codes = [f"import time; time.sleep({0.3 * (3 - i)}); print({i})" for i in range(4)]
    records = ray.get(executor.run_batch.remote([request(code) for code in codes]))
    assert [record["stdout"] for record in records] == [f"{i}\n" for i in range(4)]
    assert all(record["status"] == "ok" for record in records)


def test_a_run_that_fails_in_a_batch_is_that_items_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch is several runs in one call: one run's failure (its slot lost, the pool shut
    down under it) ends that item as ``internal_error``; the others keep their results."""
    executor = SandboxExecutor(SandboxConfig(), slots=1)
    real_run = executor._pool.run

    def run(checked: ExecutionRequest, cancel: Any, live: Any = None) -> ExecutionRecord:
        if checked.code == "lost":
            raise RuntimeError("the slot died")
        return real_run(checked, cancel, live)

    monkeypatch.setattr(executor._pool, "run", run)
    try:
        batch = [request("print(1)"), request("lost"), request("print(3)")]
        records = asyncio.run(executor.run_batch(batch))
        assert [(r["status"], r["stdout"]) for r in records] == [
            ("ok", "1\n"),
            ("internal_error", ""),
            ("ok", "3\n"),
        ]
        with pytest.raises(ValueError, match="one trace context per request"):
            asyncio.run(executor.run_batch(batch, trace_contexts=[None]))
    finally:
        asyncio.run(executor.close())


def test_isolation_reports_layers(executor: Any) -> None:
    import ray

    report = ray.get(executor.isolation.remote())
    assert set(report["layers"]) | set(report["missing"]) == set(ISOLATION_LAYERS)
    assert report["ok"] == (not report["missing"])
    assert report["host_uid"] != 0


def test_stats_count_slots(executor: Any) -> None:
    import ray

    stats = ray.get(executor.stats.remote())
    assert stats["slots"] == 2 and stats["alive_slots"] == 2
    assert stats["free_slots"] + stats["busy_slots"] == 2
    assert stats["closed"] is False


def test_a_cancelled_call_kills_its_run(executor: Any) -> None:
    """A caller that goes away (Serve cancels the call) frees the slot at once."""
    import ray

    ref = executor.run.remote(request("import time; time.sleep(30)"))

    def busy_slots() -> int:
        return int(ray.get(executor.stats.remote())["busy_slots"])

    eventually(busy_slots, 10, "the run starts", interval_s=0.05)
    ray.cancel(ref)
    freed = "the cancelled run frees its slot"
    eventually(busy_slots, 10, freed, until=lambda busy: busy == 0, interval_s=0.05)


def test_health_follows_the_sandboxes_and_the_pool(ray_session: None) -> None:
    import ray

    actor: Any = ray.remote(SandboxExecutor).options(num_cpus=ACTOR_CPUS).remote(SandboxConfig(), 1)
    try:
        assert ray.get(actor.check_health.remote()) is None
        ((zygote, _),) = zygotes_under(ray.get(actor.stats.remote())["pid"])
        os.kill(zygote, signal.SIGKILL)  # the only slot's sandbox dies
        eventually(
            lambda: ray.get(actor.stats.remote())["alive_slots"] == 0,
            15,
            "the slot is seen dead",
            interval_s=0.1,
        )
        with pytest.raises(ExecutorError, match="no sandbox slot is alive"):
            ray.get(actor.check_health.remote())

        record = ray.get(actor.run.remote(request("print(1)")))  # restarts the slot first
        assert record["status"] == "ok"
        assert ray.get(actor.check_health.remote()) is None

        ray.get(actor.close.remote(grace_s=0))
        with pytest.raises(PoolClosedError):
            ray.get(actor.check_health.remote())
        with pytest.raises(PoolClosedError):
            ray.get(actor.run.remote(request("print(1)")))
    finally:
        ray.kill(actor)


# --- as a Serve deployment


def test_build_executor_app_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="slot"):
        build_executor_app(SandboxConfig(), 0, min_replicas=1, max_replicas=1)
    with pytest.raises(ValueError, match="replicas"):
        build_executor_app(SandboxConfig(), 2, min_replicas=2, max_replicas=1)


def test_deployment_runs_through_its_handle(serve_instance: None) -> None:
    from ray import serve

    handle = serve.run(small_app(), name="exec-agent-test-handle", route_prefix=None)
    try:
        record = ExecutionRecord.model_validate(handle.run.remote(request("print(6 * 7)")).result())
        assert (record.status, record.stdout) == ("ok", "42\n")
        batch = handle.run_batch.remote([request("print(1)"), request("1/0")]).result()
        assert [item["status"] for item in batch] == ["ok", "nonzero_exit"]
        assert handle.isolation.remote().result()["layers"]
    finally:
        serve.delete("exec-agent-test-handle")


def test_the_serve_config_builder_deploys(serve_instance: None) -> None:
    """What `serve run cluster/serve-config.yaml` does, with a replica sized for this test."""
    from ray import serve

    args = {"slots": 1, "num_cpus": ACTOR_CPUS, "min_replicas": 1, "max_replicas": 1}
    handle = serve.run(app_builder(args), name="exec-agent-test-builder", route_prefix=None)
    try:
        record = ExecutionRecord.model_validate(handle.run.remote(request("print(2)")).result())
        assert (record.status, record.stdout) == ("ok", "2\n")
    finally:
        serve.delete("exec-agent-test-builder")


def test_delete_drains_running_jobs_and_ends_sandboxes(serve_instance: None) -> None:
    from ray import serve

    app = "exec-agent-test-drain"
    handle = serve.run(small_app(graceful_shutdown_timeout_s=10), name=app, route_prefix=None)
    replica_pid = handle.stats.remote().result()["pid"]
    zygotes = zygotes_under(replica_pid)
    assert len(zygotes) == 2  # one per slot

    response = handle.run.remote(request(SLEEP_2_S))
    eventually(
        lambda: handle.stats.remote().result()["busy_slots"] == 1,
        15,
        "the run starts",
        interval_s=0.1,
    )
    serve.delete(app)  # blocks until the replica has drained and stopped

    record = ExecutionRecord.model_validate(response.result())
    assert (record.status, record.stdout) == ("ok", "done\n")  # finished, not killed
    eventually(
        lambda: not alive(zygotes, zombies=True), 15, "the zygotes have exited", interval_s=0.1
    )


# --- helpers


def zygotes_under(ancestor: int) -> set[tuple[int, float]]:
    """The sandbox zygotes descending from process ``ancestor`` (their keys): the processes
    that run the zygote script, not the bubblewrap that started one."""
    return {
        p.key
        for p in descendants(ancestor)
        if "zygote.py" in p.cmdline and "bwrap" not in p.cmdline.split(" ", 1)[0]
    }


# --- exec-agent serve (the local demo until the HTTP service exists)


def test_serve_refuses_an_unreadable_program(tmp_path: Path) -> None:
    from serve_app import _exit
    from serve_app.deployment import run_demo
    from serve_app.settings import Settings

    assert run_demo(Settings(), [str(tmp_path / "missing.py")]) == _exit.EX_USAGE


@pytest.mark.slow
def test_serve_runs_programs_on_its_own_ray(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("print(sum(range(10)))")
    gcs, metrics, http = free_ports(3)
    env = {
        **os.environ,
        "RAY_GCS_PORT": str(gcs),
        "RAY_METRICS_EXPORT_PORT": str(metrics),
        "PORT": str(http),
    }
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "serve", "--demo", str(program)],
        cwd=tmp_path,  # no .env from the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray's own messages may reach stdout too; the records are its JSON lines.
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(r["status"], r["stdout"]) for r in records] == [("ok", "45\n")]
    assert "Ray dashboard: http://127.0.0.1:" in done.stderr
