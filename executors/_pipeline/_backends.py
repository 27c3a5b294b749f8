"""Where a mapper's rows run: the deployed executor, through a Serve deployment handle, or the
job's shared local pool, a named Ray actor of :class:`~executors.SandboxExecutor`."""

from __future__ import annotations

from typing import Any

from executors._config import SandboxConfig
from executors._errors import PipelineConfigurationError

__all__ = [
    "EXECUTOR_APP_NAME",
    "EXECUTOR_DEPLOYMENT_NAME",
    "LOCAL_POOL_NAME",
    "SERVE_CONTROLLER",
    "check_cpus_free",
    "local_pool",
    "serve_handle",
    "start_local_pool",
]

EXECUTOR_APP_NAME = "exec-agent"
"""The Serve application ``exec-agent serve`` deploys (``serve_app.deployment.APP_NAME``)."""
EXECUTOR_DEPLOYMENT_NAME = "SandboxExecutor"
"""The executor deployment in it (``build_executor_app``'s default name)."""
LOCAL_POOL_NAME = "exec-agent-pipeline-executor"


SERVE_CONTROLLER = ("SERVE_CONTROLLER_ACTOR", "serve")
"""Serve's controller actor: its name and namespace (``ray.serve._private.constants``). Where
none runs there is no deployment, which a lookup by name tells without importing ``ray.serve``
(half a second of a mapper's start)."""


def serve_handle(app_name: str, deployment_name: str, *, required: bool) -> Any:
    """A handle to the deployed executor; None when there is none and it is not ``required``."""
    import ray

    name, namespace = SERVE_CONTROLLER
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        problem = "Serve is not running"
    else:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        try:
            return serve.get_deployment_handle(deployment_name, app_name=app_name)
        except (RayServeException, KeyError) as exc:
            problem = str(exc)
    if required:
        raise PipelineConfigurationError(
            f"no executor deployment {deployment_name!r} in Serve application {app_name!r}: "
            f"{problem}"
        )
    return None


def start_local_pool(name: str, slots: int, num_cpus: float, sandbox_config: SandboxConfig) -> Any:
    """The job's shared local pool ``name``: the running one, or one created now, without
    waiting for it to start (its process and sandboxes take a second or so).

    Raises :class:`PipelineConfigurationError` at once, for a pool that does not exist yet,
    when ``num_cpus`` is more than the largest node has or than the cluster has free now:
    Ray would otherwise wait for them, maybe forever, while the dataset's own actors hold
    what it waits for.
    """
    import ray

    from executors._deployment import SandboxExecutor

    try:
        return ray.get_actor(name)
    except ValueError:  # none yet: the caller creates it
        check_cpus_free(num_cpus)
    return (
        ray.remote(SandboxExecutor)
        .options(name=name, get_if_exists=True, num_cpus=num_cpus, max_concurrency=1000)
        .remote(sandbox_config, slots)
    )


def local_pool(
    name: str, slots: int, num_cpus: float, sandbox_config: SandboxConfig, start_timeout_s: float
) -> tuple[Any, int]:
    """The job's shared local pool ``name`` (see :func:`start_local_pool`) once it answers,
    and its slots (a pool someone else started may have another number)."""
    import ray

    actor = start_local_pool(name, slots, num_cpus, sandbox_config)
    try:
        stats: dict[str, Any] = ray.get(actor.stats.remote(), timeout=start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise PipelineConfigurationError(
            f"the local executor pool {name!r} did not start within {start_timeout_s} s "
            f"(it reserves local_num_cpus={num_cpus:g} CPUs; 0 reserves none)"
        ) from None
    return actor, int(stats["slots"])


def check_cpus_free(num_cpus: float) -> None:
    """Raise :class:`PipelineConfigurationError` unless ``num_cpus`` CPUs are free now."""
    if num_cpus <= 0:
        return
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    largest = max(
        (node["Resources"].get("CPU", 0.0) for node in nodes if node.get("Alive")), default=0.0
    )
    available: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
    free = available.get("CPU", 0.0)
    if num_cpus > largest:
        raise PipelineConfigurationError(
            f"local_num_cpus={num_cpus:g}, but the largest node has {largest:g} CPUs: pass "
            f"local_num_cpus=0 (the default: the pool reserves none) or at most {largest:g}"
        )
    if num_cpus > free:
        raise PipelineConfigurationError(
            f"local_num_cpus={num_cpus:g}, but only {free:g} CPUs are free (the dataset's own "
            f"tasks and actors hold the rest): pass local_num_cpus=0 (the default: the pool "
            f"reserves none) or at most {free:g}, or deploy the service's executors"
        )
