"""The two Serve applications, as the settings and the arguments size them, and the builder.

What ``serve run cluster/serve-config.yaml`` and a KubeRay ``RayService`` deploy::

    applications:
      - name: exec-agent
        route_prefix: /
        import_path: serve_app.deployment:app_builder
        args:                       # ServiceAppArgs
          ingress: {min_replicas: 1, max_replicas: 2, ...}
          executor: {slots: 2, num_cpus: 2, min_replicas: 1, max_replicas: 4, ...}
          runtime_executors:        # optional: a runtime on an executor deployment of its own
            scientific: {label_selector: {exec-agent/runtime: scientific}, ...}

``args`` size, place and scale the deployments; everything else comes from
:class:`~serve_app.settings.PublicSettings`, the settings without a secret, read from the
environment of the process that builds the application. Serve builds it in a Ray task that may
run on any node of the cluster, so on KubeRay every Ray pod gets the same ConfigMap; the
Secret is mounted into the API pods alone (``SECRETS_DIR``), and only the ingress replica reads
it, in its own process (:func:`~serve_app.settings.with_secrets`): nothing bound to a
deployment, which Ray keeps in its GCS, holds a secret. Where an argument and a setting name
the same thing (slots, executor replicas and queue, drain time, isolation), the argument wins
and the settings are validated again with it, so the usual checks (``min <= max``, a drain at
least ``MAX_TIMEOUT``, production's refusals) hold for what is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from executors import build_executor_app
from serve_app.deployment._args import (
    ExecutorArgs,
    IngressArgs,
    ServiceAppArgs,
    executor_settings,
    service_settings,
)
from serve_app.deployment._ingress import INGRESS_NAME, ApiIngress
from serve_app.deployment._secrets import process_secrets_dir
from serve_app.settings import MIB, PublicSettings, Settings

if TYPE_CHECKING:
    from ray import serve

__all__ = [
    "EXECUTOR_NAME",
    "app_builder",
    "build_service_app",
    "executor_app",
    "executor_name",
    "service_app",
]

EXECUTOR_NAME = "SandboxExecutor"
"""The main executor deployment's name; a runtime's own is ``SandboxExecutor-<runtime>``."""

REPLICA_BASE_MEMORY_BYTES = 512 * MIB
"""A replica's own process (Python, Ray, Serve), reserved on top of its slots."""
SLOT_OVERHEAD_BYTES = 160 * MIB
"""A slot's zygotes (one per runtime started: the scientific one about 110 MiB resident, the
minimal one 10) and a job's init, beyond the job's own memory limit."""


def executor_app(
    settings: Settings,
    *,
    num_cpus: float | None = None,
    memory_bytes: int | None = None,
    max_ongoing_requests: int | None = None,
    target_ongoing_requests: float | None = None,
    label_selector: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    upscale_delay_s: float | None = None,
    downscale_delay_s: float | None = None,
    runtime: str | None = None,
) -> serve.Application:
    """The executor deployment as the settings size it; with ``runtime``, that runtime's own
    (named :func:`executor_name`, its zygotes preloaded at start: its default runtime).

    A replica takes one request per slot plus ``EXECUTOR_MAX_QUEUED_REQUESTS`` waiting inside
    it for a slot; as many more wait in each caller's handle, then the caller gets
    ``BackPressureError`` (the API's 503 ``overloaded``). The queue inside the replica is what
    keeps Serve's router from backing off: with one request per slot, a replica at capacity
    sends every further request into the router's retry back-off (measured here: 17 requests/s
    at 16 connections, against 76/s with 8 per slot). A drain lets running jobs finish within
    ``GRACEFUL_SHUTDOWN_TIMEOUT_S``; requests still waiting are handed back to another replica
    while the deployment goes on (a rolling update, a downscale), and run within the drain when
    it is deleted (the service stopping); past it, they end as ``internal_error`` records, never
    as lost requests.
    ``num_cpus`` (default: one per slot) and ``memory_bytes`` (default: the replica's own
    512 MiB plus, per slot, ``MAX_MEMORY_MB`` and 160 MiB) are what Ray reserves per replica;
    ``max_ongoing_requests`` (default: slots plus ``EXECUTOR_MAX_QUEUED_REQUESTS``),
    ``target_ongoing_requests`` (default: every slot busy), ``label_selector`` (default: any
    node), ``runtime_env`` (default: the node's) and the autoscaler's ``upscale_delay_s`` and
    ``downscale_delay_s`` (default: Serve's) go to :func:`executors.build_executor_app`.
    """
    slots = settings.max_concurrent_executions
    job_memory_bytes = settings.max_memory_mb * MIB + SLOT_OVERHEAD_BYTES
    config = settings.sandbox_config()
    if runtime is not None:
        config = config.model_copy(update={"default_runtime": runtime})
    return build_executor_app(
        config,
        slots,
        name=executor_name(runtime),
        min_replicas=settings.executor_num_replicas_min,
        max_replicas=settings.executor_num_replicas_max,
        memory_bytes=(
            REPLICA_BASE_MEMORY_BYTES + slots * job_memory_bytes
            if memory_bytes is None
            else memory_bytes
        ),
        num_cpus=num_cpus,
        max_ongoing_requests=(
            slots + settings.executor_max_queued_requests
            if max_ongoing_requests is None
            else max_ongoing_requests
        ),
        target_ongoing_requests=target_ongoing_requests,
        max_queued_requests=settings.executor_max_queued_requests,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        label_selector=label_selector,
        runtime_env=runtime_env,
        upscale_delay_s=upscale_delay_s,
        downscale_delay_s=downscale_delay_s,
    )


def executor_name(runtime: str | None = None) -> str:
    """The name of the executor deployment of ``runtime`` (None: the main one)."""
    return EXECUTOR_NAME if runtime is None else f"{EXECUTOR_NAME}-{runtime}"


def service_app(
    settings: Settings,
    executor: serve.Application,
    ingress: IngressArgs | None = None,
    *,
    runtime_env: dict[str, Any] | None = None,
    runtime_executors: Mapping[str, serve.Application] | None = None,
    session_label_selector: Mapping[str, str] | None = None,
    secrets_dir: str | None = None,
) -> serve.Application:
    """The whole service for ``serve.run``: the ingress, sized by ``ingress`` (default
    :class:`IngressArgs`' defaults: one replica), bound to ``executor`` (for instance
    :func:`executor_app`'s) and to ``runtime_executors`` (runtime: its own executor, for
    instance ``executor_app(..., runtime=...)``'s), which get every execution of their runtime.
    ``runtime_env``: the ingress replicas' Ray runtime environment (default: the node's; never
    a secret in it: Ray keeps it in its GCS); ``session_label_selector``: the Ray node labels
    the session hosts must run on.

    The ingress is bound ``settings`` without their secrets (:meth:`Settings.public`) and the
    path of a directory of secret files, ``secrets_dir``, which it reads in its own process.
    None: with :class:`PublicSettings` (the application builder's), the ingress's own
    ``SECRETS_DIR`` and environment; with full settings, a private directory of theirs that
    this process writes and keeps until it exits (the ingress must then run on this node)."""
    from ray import serve

    if secrets_dir is None and not isinstance(settings, PublicSettings):
        secrets_dir = process_secrets_dir(settings)
    args = IngressArgs() if ingress is None else ingress
    actor_options: dict[str, Any] = {"num_cpus": args.num_cpus}
    if args.label_selector:
        actor_options["label_selector"] = dict(args.label_selector)
    if runtime_env:
        actor_options["runtime_env"] = dict(runtime_env)
    deployment = serve.deployment(
        name=INGRESS_NAME,
        ray_actor_options=actor_options,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        graceful_shutdown_timeout_s=args.drain_s(settings.graceful_shutdown_timeout_s),
        autoscaling_config={
            "min_replicas": args.min_replicas,
            "initial_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
            **args.scaling_delays(),
        },
    )(serve.ingress()(ApiIngress))
    # A keyword argument: Serve replaces the applications in the dict with their handles.
    app: serve.Application = deployment.bind(
        settings.public(),
        executor,
        runtime_executors=dict(runtime_executors or {}),
        session_label_selector=dict(session_label_selector or {}),
        secrets_dir=secrets_dir,
    )
    return app


def build_service_app(
    settings: Settings, args: ServiceAppArgs, *, secrets_dir: str | None = None
) -> serve.Application:
    """The ingress bound to the executor pool and to each runtime's own, sized by ``args``
    (the main pool's already in ``settings``; a runtime's own: :func:`executor_settings`);
    ``secrets_dir``: as :func:`service_app`'s."""
    runtime_executors = {
        runtime: _sized_executor(executor_settings(settings, executor, runtime), executor, runtime)
        for runtime, executor in args.runtime_executors.items()
    }
    return service_app(
        settings,
        _sized_executor(settings, args.executor, None),
        args.ingress,
        runtime_executors=runtime_executors,
        # Session hosts sandbox as the executors do: on the nodes the main pool may use.
        session_label_selector=args.executor.label_selector,
        secrets_dir=secrets_dir,
    )


def _sized_executor(
    settings: Settings, executor: ExecutorArgs, runtime: str | None
) -> serve.Application:
    return executor_app(
        settings,
        num_cpus=executor.num_cpus,
        memory_bytes=executor.memory_bytes,
        max_ongoing_requests=executor.max_ongoing_requests,
        target_ongoing_requests=executor.target_ongoing_requests,
        label_selector=executor.label_selector,
        upscale_delay_s=executor.upscale_delay_s,
        downscale_delay_s=executor.downscale_delay_s,
        runtime=runtime,
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Serve's application builder: ``import_path: serve_app.deployment:app_builder``. Reads
    no secret (:func:`service_settings`: :class:`PublicSettings`), so it runs on any node."""
    parsed = ServiceAppArgs.model_validate(args)
    return build_service_app(service_settings(parsed), parsed)
