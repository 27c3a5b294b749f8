"""A runtime on an executor deployment of its own (``ServiceAppArgs.runtime_executors``).

The arguments are checked, the builder makes ``SandboxExecutor-<runtime>`` with that runtime as
its default, and the ingress sends each execution to its runtime's executors (single runs,
background runs, a batch's chunks split by runtime), the rest to the main ones; readiness
requires each. Without Ray the executors are stand-ins (:class:`Lane`); the last test deploys
the whole service on the session's Ray, ``minimal`` on executors of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr, ValidationError

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus, Limits
from serve_app.api import BatchCreate, ExecutionCreate, RequestBounds, validate_body
from serve_app.db import Database, batches, keys
from serve_app.db.models import ApiKey
from serve_app.deployment import (
    ExecutorArgs,
    ServiceAppArgs,
    app_builder,
    build_service_app,
    service_settings,
)
from serve_app.errors import ConfigurationError
from serve_app.http import ExecutionService
from serve_app.http._health import readiness
from serve_app.http._metrics import ingress_metrics
from serve_app.http.service.runner import Runner
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings
from tests.support.api import auth, run
from tests.support.cluster import deployments
from tests.support.paths import CLUSTER
from tests.support.polling import eventually, eventually_async
from tests.support.settings import migrated_sqlite_settings, use_settings_environment
from tests.support.stand_ins import RunsStandIn

MINIMAL = "minimal"
SCIENTIFIC = "scientific"


class _Call:
    """``method.remote()`` of a stand-in: the coroutine the service awaits."""

    def __init__(self, method: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
        self._method = method

    def remote(self) -> Any:
        return self._method()


class Lane(RunsStandIn):
    """An executor deployment's stand-in: answers every run ``ok`` and keeps the runtimes it
    ran and the calls (each call's runtimes); ``present=False``: a deployment that is not
    there (its stats fail)."""

    def __init__(self, *, present: bool = True) -> None:
        super().__init__()
        self.present = present
        self.ran: list[str | None] = []

    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        self.ran.append(request.runtime)
        record = ExecutionRecord(
            status=ExecutionStatus.OK,
            exit_code=0,
            limits=request.limits.to_api(),
            runtime=request.runtime,
        )
        return record.to_api()

    @property
    def stats(self) -> _Call:
        return _Call(self._stats)

    @property
    def isolation(self) -> _Call:
        return _Call(self._isolation)

    async def _stats(self) -> dict[str, Any]:
        if not self.present:
            raise RuntimeError("no such deployment")
        return {"slots": 2, "free_slots": 2, "busy_slots": 0, "alive_slots": 2, "closed": False}

    async def _isolation(self) -> dict[str, Any]:
        return {"ok": True, "layers": []}


# --- the arguments


def test_runtime_executors_default_to_none() -> None:
    assert ServiceAppArgs().runtime_executors == {}
    assert ServiceAppArgs.model_validate({}).runtime_executors == {}


def test_runtime_executors_name_known_runtimes_only() -> None:
    with pytest.raises(ValidationError, match="unknown runtime 'cobol'"):
        ServiceAppArgs.model_validate({"runtime_executors": {"cobol": {}}})
    args = ServiceAppArgs.model_validate(
        {"runtime_executors": {MINIMAL: {"slots": 1}, SCIENTIFIC: {}}}
    )
    assert args.runtime_executors == {MINIMAL: ExecutorArgs(slots=1), SCIENTIFIC: ExecutorArgs()}


def test_a_runtime_executors_own_arguments_are_checked() -> None:
    for wrong in (
        {"min_replicas": 3, "max_replicas": 1},
        {"slots": 0},
        {"unknown": 1},
        {"target_ongoing_requests": 4, "max_ongoing_requests": 2},
    ):
        with pytest.raises(ValidationError):
            ServiceAppArgs.model_validate({"runtime_executors": {MINIMAL: wrong}})


def test_a_runtime_executors_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(monkeypatch, tmp_path)
    # Its target defaults to its slots (4), beyond what a replica holds.
    args = ServiceAppArgs(
        runtime_executors={MINIMAL: ExecutorArgs(slots=4, max_ongoing_requests=2)}
    )
    with pytest.raises(ConfigurationError, match=f"runtime_executors.{MINIMAL}"):
        service_settings(args)
    args = ServiceAppArgs(runtime_executors={MINIMAL: ExecutorArgs(min_replicas=9)})
    with pytest.raises(ConfigurationError):
        service_settings(args)  # above EXECUTOR_NUM_REPLICAS_MAX of the settings


def test_the_builder_gives_each_runtime_its_own_executor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(monkeypatch, tmp_path, {"MAX_CONCURRENT_EXECUTIONS": "2"})
    selector = {"exec-agent/runtime": SCIENTIFIC}
    args = ServiceAppArgs(
        executor=ExecutorArgs(slots=3, min_replicas=1, max_replicas=2),
        runtime_executors={
            SCIENTIFIC: ExecutorArgs(
                slots=1, num_cpus=0.5, min_replicas=1, max_replicas=3, label_selector=selector
            )
        },
    )
    built = deployments(build_service_app(service_settings(args), args))
    assert set(built) == {"ApiIngress", "SandboxExecutor", f"SandboxExecutor-{SCIENTIFIC}"}
    main, own = built["SandboxExecutor"], built[f"SandboxExecutor-{SCIENTIFIC}"]
    assert main.init_args[1] == 3 and own.init_args[1] == 1  # slots
    assert main.init_args[0].default_runtime == Settings().default_runtime
    assert own.init_args[0].default_runtime == SCIENTIFIC  # its zygotes start at once
    assert own.ray_actor_options["label_selector"] == selector
    assert "label_selector" not in main.ray_actor_options
    assert own.ray_actor_options["num_cpus"] == 0.5
    scaling = own._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    # Bound by keyword: Serve gives the ingress their handles in the dict.
    ingress = built["ApiIngress"]
    assert set(ingress.init_kwargs["runtime_executors"]) == {SCIENTIFIC}


def test_the_serve_configs_commented_example_builds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """cluster/serve-config.yaml's ``runtime_executors``, uncommented, is valid and builds."""
    lines = (CLUSTER / "serve-config.yaml").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.strip() == "# runtime_executors:")
    column = lines[start].index("#")
    end = next(n for n in range(start, len(lines)) if lines[n][column:].startswith("# and keep"))
    for n in range(start, end):
        lines[n] = lines[n][:column] + lines[n][column + 2 :]
    (app,) = yaml.safe_load("\n".join(lines))["applications"]
    use_settings_environment(monkeypatch, tmp_path)
    built = deployments(app_builder(app["args"]))
    own = built[f"SandboxExecutor-{SCIENTIFIC}"]
    assert own.init_args[0].default_runtime == SCIENTIFIC
    assert own.ray_actor_options["label_selector"] == {"exec-agent/runtime": SCIENTIFIC}


def test_without_runtime_executors_the_service_is_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(monkeypatch, tmp_path)
    args = ServiceAppArgs()
    built = deployments(build_service_app(service_settings(args), args))
    assert set(built) == {"ApiIngress", "SandboxExecutor"}
    assert built["ApiIngress"].init_kwargs["runtime_executors"] == {}


# --- where a run goes


LIMITS = Limits(
    wall_timeout_s=5,
    cpu_time_s=5,
    memory_bytes=64 * 1024 * 1024,
    max_output_bytes=1024,
    max_processes=4,
    max_file_bytes=1024,
)


def request(runtime: str | None) -> ExecutionRequest:
    return ExecutionRequest(code="pass", limits=LIMITS, runtime=runtime)


def test_the_runner_picks_the_runtimes_own_executors() -> None:
    main, minimal = Lane(), Lane()
    runner = Runner(main, ingress_metrics(), {MINIMAL: minimal})
    assert runner.lane(request(MINIMAL)) == MINIMAL
    assert runner.lane(request(SCIENTIFIC)) is None
    assert runner.lane(request(None)) is None
    assert runner.executor_for(request(MINIMAL)) is minimal
    assert runner.executor_for(request(SCIENTIFIC)) is main
    assert Runner(main, ingress_metrics()).executor_for(request(MINIMAL)) is main

    async def calls() -> None:
        ids = [uuid.uuid4(), uuid.uuid4()]
        records = await runner.run_many(ids, [request(MINIMAL), request(MINIMAL)])
        assert [record.runtime for record in records] == [MINIMAL, MINIMAL]
        with pytest.raises(ValueError, match="lane"):
            await runner.run_many(ids, [request(MINIMAL), request(SCIENTIFIC)])

    asyncio.run(calls())
    assert (minimal.batch_calls, minimal.ran, main.ran) == ([2], [MINIMAL, MINIMAL], [])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_sqlite_settings(
        tmp_path,
        default_runtime=SCIENTIFIC,
        max_batch_items=6,
        max_concurrent_executions=6,  # a chunk could hold the whole batch
        executor_num_replicas_min=1,
        executor_num_replicas_max=1,
        max_concurrent_per_key=100,
    )


def new_key(database: Database, settings: Settings) -> ApiKey:
    with database.session() as session:
        return keys.create_key(session, settings.api_key_secret, "lanes").row


def test_every_kind_of_run_goes_to_its_runtimes_executors(settings: Settings) -> None:
    database = Database.from_settings(settings)
    main, minimal = Lane(), Lane()
    bounds = RequestBounds.from_settings(settings)

    def execution(runtime: str | None, wait: bool) -> ExecutionCreate:
        body = {"code": "pass", "wait": wait} | ({"runtime": runtime} if runtime else {})
        return validate_body(ExecutionCreate, body, bounds)

    async def scenario() -> None:
        service = ExecutionService(
            settings,
            database,
            build_rate_limiter(settings),
            main,
            runtime_executors={MINIMAL: minimal},
        )
        key = new_key(database, settings)
        # Single runs, waited for and in the background; no runtime: the default (scientific).
        for runtime, wait in [(MINIMAL, True), (SCIENTIFIC, True), (None, True), (MINIMAL, False)]:
            await service.create(key, execution(runtime, wait))
        await eventually_async(lambda: len(minimal.ran) == 2, 10, "the background run")
        assert (minimal.ran, main.ran) == ([MINIMAL, MINIMAL], [SCIENTIFIC, SCIENTIFIC])
        # A batch of both: its chunk is split by runtime, one call each.
        runtimes = [MINIMAL, SCIENTIFIC, MINIMAL, SCIENTIFIC, MINIMAL, SCIENTIFIC]
        items = [{"code": f"print({n})", "runtime": name} for n, name in enumerate(runtimes)]
        created = await service.create_batch(
            key, validate_body(BatchCreate, {"items": items}, bounds)
        )

        def done() -> bool:
            with database.session() as session:
                view = batches.get_batch(session, key.id, uuid.UUID(created.id))
            return view is not None and view.done == view.total

        await eventually_async(done, 10, "the batch finishes", interval_s=0.1)
        assert minimal.ran == [MINIMAL] * 5 and main.ran == [SCIENTIFIC] * 5
        assert minimal.batch_calls == [3] and main.batch_calls == [3]
        with database.session() as session:
            view = batches.get_batch(session, key.id, uuid.UUID(created.id))
        assert view is not None
        assert [row.runtime for row in view.items] == runtimes
        assert [str(row.status) for row in view.items] == ["ok"] * 6
        await service.aclose(5.0)

    try:
        asyncio.run(scenario())
    finally:
        database.dispose()


def test_readiness_requires_every_runtimes_executors(settings: Settings) -> None:
    database = Database.from_settings(settings)

    async def ready(runtime_executors: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        limiter = build_rate_limiter(settings)
        service = ExecutionService(
            settings, database, limiter, Lane(), runtime_executors=runtime_executors
        )
        try:
            status, body = await readiness(service, {})
        finally:
            await service.aclose(5.0)
        executors: dict[str, Any] = body["checks"]["executors"]
        return status, executors

    try:
        _, alone = asyncio.run(ready({}))
        assert alone["ok"] and "runtimes" not in alone
        status, both = asyncio.run(ready({MINIMAL: Lane()}))
        assert both["ok"] and both["runtimes"][MINIMAL]["ok"]
        assert both["runtimes"][MINIMAL]["slots"] == 2
        status, missing = asyncio.run(ready({MINIMAL: Lane(present=False)}))
        assert status == 503 and not missing["ok"]
        assert missing["runtimes"][MINIMAL] == {"ok": False, "error": "RuntimeError"}
        assert missing["slots"] == 2  # the main executors' own details stay
    finally:
        database.dispose()


# --- on Ray: minimal on executors of its own

APP_NAME = "exec-agent-runtime-executors-test"
SECRET = SecretStr("runtime-executors-test-secret-0123456789abcdef")
SLEEP_S = "import time; time.sleep(3); print('slept')"


@pytest.fixture(scope="module")
def deployed(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Database, Settings, str]]:
    from tests.support.service import deployed_service
    from tests.support.service import service_settings as deployed_settings

    directory: Path = tmp_path_factory.mktemp("runtime-executors")
    settings = deployed_settings(f"sqlite:///{directory / 'api.db'}", SECRET)
    with deployed_service(settings, APP_NAME, runtime_executors=(MINIMAL,)) as database:
        with database.session() as session:
            key = keys.create_key(session, settings.api_key_secret, "runtimes").plaintext
        yield database, settings, key


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_runtime_runs_on_its_own_deployment(deployed: tuple[Database, Settings, str]) -> None:
    from ray import serve

    _, settings, key = deployed
    busy = {
        name: serve.get_deployment_handle(name, APP_NAME)
        for name in ("SandboxExecutor", f"SandboxExecutor-{MINIMAL}")
    }

    def busy_on(deployment: str) -> dict[str, int] | None:
        """Each deployment's busy slots, once ``deployment`` has one."""
        slots = {
            name: handle.stats.remote().result()["busy_slots"] for name, handle in busy.items()
        }
        return slots if slots[deployment] == 1 else None

    with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=60) as client:
        ready = client.get("/health/ready", headers=auth(key)).json()["checks"]["executors"]
        assert ready["ok"] and ready["runtimes"][MINIMAL]["ok"], ready
        for runtime, deployment in [
            (MINIMAL, f"SandboxExecutor-{MINIMAL}"),
            (SCIENTIFIC, "SandboxExecutor"),
        ]:
            queued = run(client, key, SLEEP_S, runtime=runtime, wait=False)
            assert queued.status_code == 202, queued.text
            # While it sleeps, a slot of its deployment is busy, none of the other's.
            seen = eventually(
                lambda: busy_on(deployment),  # noqa: B023 - called in this iteration only
                20,
                f"the {runtime} run busy on {deployment}",
                interval_s=0.2,
            )
            assert sum(seen.values()) == 1, seen
            done = client.get(
                f"/v1/executions/{queued.json()['id']}?wait_s=30", headers=auth(key)
            ).json()
            assert (done["status"], done["runtime"], done["stdout"]) == ("ok", runtime, "slept\n")
