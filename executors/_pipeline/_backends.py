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
    "local_pool",
    "serve_handle",
]

EXECUTOR_APP_NAME = "exec-agent"
"""The Serve application ``exec-agent serve`` deploys (``serve_app.deployment.APP_NAME``)."""
EXECUTOR_DEPLOYMENT_NAME = "SandboxExecutor"
"""The executor deployment in it (``build_executor_app``'s default name)."""
LOCAL_POOL_NAME = "exec-agent-pipeline-executor"


def serve_handle(app_name: str, deployment_name: str, *, required: bool) -> Any:
    """A handle to the deployed executor; None when there is none and it is not ``required``."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_deployment_handle(deployment_name, app_name=app_name)
    except (RayServeException, KeyError) as exc:
        if required:
            raise PipelineConfigurationError(
                f"no executor deployment {deployment_name!r} in Serve application "
                f"{app_name!r}: {exc}"
            ) from exc
        return None


def local_pool(
    name: str, slots: int, num_cpus: float, sandbox_config: SandboxConfig, start_timeout_s: float
) -> Any:
    """The job's shared local pool ``name``, created if missing, once it answers."""
    import ray

    from executors._deployment import SandboxExecutor

    actor: Any = (
        ray.remote(SandboxExecutor)
        .options(
            name=name,
            get_if_exists=True,
            num_cpus=num_cpus,
            max_concurrency=1000,
        )
        .remote(sandbox_config, slots)
    )
    try:
        ray.get(actor.stats.remote(), timeout=start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise PipelineConfigurationError(
            f"the local executor pool {name!r} did not start within "
            f"{start_timeout_s} s: does the cluster have "
            f"{num_cpus} free CPUs for it (local_num_cpus)?"
        ) from None
    return actor
