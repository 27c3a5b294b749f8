"""The Serve config (cluster/serve-config.yaml) is valid for Serve and builds the whole service.

The application builder (``serve_app.deployment:app_builder``) is run here as Serve would run it, and
the deployments it makes are checked against the config's args and the settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from executors import ExecutorAppArgs
from serve_app.deployment import INGRESS_DRAIN_MARGIN_S, ServiceAppArgs, app_builder
from serve_app.errors import ConfigurationError
from serve_app.settings import Settings
from tests.support.cluster import SERVE_SCHEMA, deployments, load_cluster_yaml, without_nulls
from tests.support.settings import use_settings_environment


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    loaded: dict[str, Any] = load_cluster_yaml("serve-config.yaml")
    return loaded


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    use_settings_environment(monkeypatch, tmp_path)
    yield


def test_serve_config_matches_the_serve_schema(serve_config: dict[str, Any]) -> None:
    jsonschema.validate(without_nulls(serve_config), SERVE_SCHEMA)


def test_serve_config_is_read_by_serve(serve_config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(serve_config)
    (app,) = parsed.applications
    assert app.route_prefix == "/"


def test_serve_config_deploys_the_whole_service(serve_config: dict[str, Any]) -> None:
    (app,) = serve_config["applications"]
    assert app["route_prefix"] == "/"
    assert app["import_path"] == "serve_app.deployment:app_builder"
    # A proxy beside each ingress replica, at least two (no single point of failure): Serve
    # runs one on every node with a replica; sandbox pods are kept out of the API's Service
    # by their readiness (cluster/README.md).
    assert serve_config["proxy_location"] == "EveryNode"
    args = ServiceAppArgs.model_validate(app["args"])
    assert 2 <= args.ingress.min_replicas <= args.ingress.max_replicas
    executor = args.executor
    assert executor.min_replicas is not None and executor.max_replicas is not None
    assert 1 <= executor.min_replicas <= executor.max_replicas
    assert args.require_full_isolation


def test_serve_config_builds_what_it_says(
    serve_config: dict[str, Any], clean_environment: None
) -> None:
    (app,) = serve_config["applications"]
    args = app["args"]
    built = deployments(app_builder(args))
    assert set(built) == {"ApiIngress", "SandboxExecutor"}

    ingress = built["ApiIngress"]
    config = ingress._deployment_config
    wanted = args["ingress"]
    assert config.autoscaling_config.min_replicas == wanted["min_replicas"]
    assert config.autoscaling_config.max_replicas == wanted["max_replicas"]
    assert config.autoscaling_config.target_ongoing_requests == wanted["target_ongoing_requests"]
    assert config.max_ongoing_requests == wanted["max_ongoing_requests"]
    assert config.max_queued_requests == wanted["max_queued_requests"]
    # The ingress outlasts the executors' drain: its requests wait on theirs.
    assert config.graceful_shutdown_timeout_s == wanted["graceful_shutdown_timeout_s"]
    assert wanted["graceful_shutdown_timeout_s"] > args["graceful_shutdown_timeout_s"]
    assert ingress.ray_actor_options["num_cpus"] == wanted["num_cpus"]
    assert ingress.ray_actor_options["label_selector"] == wanted["label_selector"]

    executor = built["SandboxExecutor"]
    config = executor._deployment_config
    wanted = args["executor"]
    assert config.autoscaling_config.min_replicas == wanted["min_replicas"]
    assert config.autoscaling_config.max_replicas == wanted["max_replicas"]
    assert config.autoscaling_config.target_ongoing_requests == wanted["target_ongoing_requests"]
    # Left to executor_app's default when not said: at least a job per slot, and the target.
    ongoing = wanted.get("max_ongoing_requests")
    assert config.max_ongoing_requests == ongoing or ongoing is None
    assert config.max_ongoing_requests >= max(wanted["slots"], wanted["target_ongoing_requests"])
    assert config.max_queued_requests == wanted["max_queued_requests"]
    assert config.graceful_shutdown_timeout_s == args["graceful_shutdown_timeout_s"]
    assert executor.ray_actor_options["num_cpus"] == wanted["num_cpus"]
    settings = Settings()
    # 512 MiB for the replica, MAX_MEMORY_MB and 160 MiB per slot (its zygotes).
    mib = 1024 * 1024
    slots = wanted["slots"]
    expected_memory = 512 * mib + slots * (settings.max_memory_mb + 160) * mib
    assert executor.ray_actor_options["memory"] == expected_memory
    sandbox_config, bound_slots = executor.init_args
    assert bound_slots == slots
    assert sandbox_config.require_full_isolation


def test_the_service_builder_takes_the_rest_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(
        monkeypatch,
        tmp_path,
        {
            "MAX_CONCURRENT_EXECUTIONS": "3",
            "EXECUTOR_NUM_REPLICAS_MIN": "2",
            "EXECUTOR_NUM_REPLICAS_MAX": "5",
            "EXECUTOR_MAX_QUEUED_REQUESTS": "7",
            "GRACEFUL_SHUTDOWN_TIMEOUT_S": "40",
        },
    )
    built = deployments(app_builder({}))
    executor = built["SandboxExecutor"]
    config = executor._deployment_config
    assert executor.init_args[1] == 3
    assert executor.ray_actor_options["num_cpus"] == 3
    assert "label_selector" not in executor.ray_actor_options
    assert (config.autoscaling_config.min_replicas, config.autoscaling_config.max_replicas) == (
        2,
        5,
    )
    assert config.autoscaling_config.target_ongoing_requests == 3
    assert config.max_ongoing_requests >= 3  # executor_app's default: a job per slot at least
    assert config.max_queued_requests == 7
    assert config.graceful_shutdown_timeout_s == 40
    assert not executor.init_args[0].require_full_isolation  # ENVIRONMENT=local
    ingress = built["ApiIngress"]
    assert ingress._deployment_config.graceful_shutdown_timeout_s == 40 + INGRESS_DRAIN_MARGIN_S
    assert ingress._deployment_config.autoscaling_config.max_replicas == 1
    # The settings the ingress gets carry the arguments too.
    assert ingress.init_args[0].max_concurrent_executions == 3


def test_arguments_override_the_settings_and_are_checked_with_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(
        monkeypatch, tmp_path, {"EXECUTOR_NUM_REPLICAS_MAX": "2", "MAX_TIMEOUT": "30"}
    )
    built = deployments(app_builder({"executor": {"slots": 4, "max_replicas": 6}}))
    executor = built["SandboxExecutor"]
    assert executor.init_args[1] == 4
    assert executor._deployment_config.autoscaling_config.max_replicas == 6
    assert built["ApiIngress"].init_args[0].max_concurrent_executions == 4

    with pytest.raises(ConfigurationError, match="EXECUTOR_NUM_REPLICAS_MIN"):
        app_builder({"executor": {"min_replicas": 3}})  # above EXECUTOR_NUM_REPLICAS_MAX=2
    with pytest.raises(ConfigurationError, match="GRACEFUL_SHUTDOWN_TIMEOUT_S"):
        app_builder({"graceful_shutdown_timeout_s": 10})  # below MAX_TIMEOUT=30
    # The target defaults to one per slot: a replica held to fewer would never scale up.
    with pytest.raises(ConfigurationError, match="target_ongoing_requests"):
        app_builder({"executor": {"slots": 4, "max_ongoing_requests": 3}})
    built = deployments(app_builder({"executor": {"slots": 2, "target_ongoing_requests": 3}}))
    assert (
        built["SandboxExecutor"]._deployment_config.autoscaling_config.target_ongoing_requests == 3
    )


@pytest.mark.parametrize("deployment", ["ApiIngress", "SandboxExecutor"])
def test_the_autoscaler_reacts_as_fast_as_the_args_say(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deployment: str
) -> None:
    """``upscale_delay_s`` and ``downscale_delay_s`` of ``ingress`` and of ``executor`` reach
    that deployment's autoscaler, and that one's only; left out, they are Serve's defaults."""
    from ray.serve.config import AutoscalingConfig

    use_settings_environment(monkeypatch, tmp_path, {})
    timing = {"upscale_delay_s": 1.0, "downscale_delay_s": 5.0}
    key = {"ApiIngress": "ingress", "SandboxExecutor": "executor"}[deployment]
    serve_defaults = AutoscalingConfig()
    defaults = {name: getattr(serve_defaults, name) for name in timing}

    def scaling(args: dict[str, Any]) -> dict[str, dict[str, float]]:
        built = deployments(app_builder(args))
        return {
            name: {
                delay: getattr(bound._deployment_config.autoscaling_config, delay)
                for delay in timing
            }
            for name, bound in built.items()
        }

    other = "SandboxExecutor" if deployment == "ApiIngress" else "ApiIngress"
    said = scaling({key: timing})
    assert said[deployment] == timing
    assert said[other] == defaults
    assert scaling({})[deployment] == defaults
    with pytest.raises(ValidationError, match="upscale_delay_s"):
        ServiceAppArgs.model_validate({key: {"upscale_delay_s": -1}})
    with pytest.raises(ValidationError, match="downscale_delay_s"):
        ServiceAppArgs.model_validate({key: {"downscale_delay_s": -1}})


def test_require_full_isolation_only_strengthens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_settings_environment(monkeypatch, tmp_path, {})
    built = deployments(app_builder({"require_full_isolation": True}))
    assert built["SandboxExecutor"].init_args[0].require_full_isolation
    use_settings_environment(monkeypatch, tmp_path, {"SANDBOX_REQUIRE_FULL_ISOLATION": "true"})
    built = deployments(app_builder({"require_full_isolation": False}))
    assert built["SandboxExecutor"].init_args[0].require_full_isolation


@pytest.mark.parametrize(
    "args",
    [
        {"ingres": {}},
        {"ingress": {"replicas": 2}},
        {"executor": {"slot": 2}},
        {"ingress": {"min_replicas": 3, "max_replicas": 2}},
        {"executor": {"min_replicas": 3, "max_replicas": 2}},
        {"ingress": {"target_ongoing_requests": 10, "max_ongoing_requests": 5}},
        {"executor": {"target_ongoing_requests": 3, "max_ongoing_requests": 2}},
        {"ingress": {"min_replicas": 0}},
        {"executor": {"max_queued_requests": 0}},
        {"graceful_shutdown_timeout_s": 0},
    ],
)
def test_service_args_refuse_unknown_or_incoherent_values(args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServiceAppArgs.model_validate(args)


@pytest.mark.parametrize("ingress_drain_s", [35, 20])
def test_an_ingress_draining_no_longer_than_the_executors_is_refused(
    ingress_drain_s: float,
) -> None:
    """Its requests wait on the executors': killed with them in hand, they are cut."""
    with pytest.raises(ConfigurationError, match="must exceed the executors' drain"):
        app_builder(
            {
                "graceful_shutdown_timeout_s": 35,
                "ingress": {"graceful_shutdown_timeout_s": ingress_drain_s},
            }
        )


def test_the_executor_only_builder_still_refuses_unknown_args() -> None:
    with pytest.raises(ValidationError):
        ExecutorAppArgs.model_validate({"slot": 2})
