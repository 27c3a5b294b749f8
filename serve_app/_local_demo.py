"""``exec-agent serve`` until the HTTP service exists: Ray, the executor deployment, a demo run.

Starts a local Ray (or joins ``RAY_ADDRESS``), deploys the sandbox executor on Ray Serve, runs
each given program (or three samples: one that succeeds, one that fails, one that times out)
through the deployment handle, and prints each execution record as one JSON line on stdout
(Ray may add lines of its own); progress and the Ray dashboard's address go to stderr. Then it stops Serve and Ray.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from executors import ExecutionRecord, ExecutionRequest, Limits, build_executor_app
from serve_app import _exit
from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
from serve_app.observability import export_tracing_environment

if TYPE_CHECKING:
    from ray import serve

    from serve_app.settings import Settings

__all__ = ["executor_app", "main"]

APP_NAME = "exec-agent"
MIB = 1024 * 1024
REPLICA_BASE_MEMORY_BYTES = 512 * MIB
"""A replica's own process (Python, Ray, Serve), reserved on top of its slots."""
SLOT_OVERHEAD_BYTES = 32 * MIB
"""A slot's zygote and a job's init, beyond the job's own memory limit."""
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"  # the only way to choose the port ray.init's GCS takes
SAMPLE_TIMEOUT_S = 1.0
SAMPLES: tuple[tuple[str, str, float | None], ...] = (  # name, code, wall timeout
    ("sample: hello", 'print("hello from the sandbox")', None),
    ("sample: failing", 'raise ValueError("this program fails on purpose")', None),
    ("sample: timeout", "import time\ntime.sleep(60)", SAMPLE_TIMEOUT_S),
)


def main(settings: Settings, files: list[str]) -> int:
    """Run the demo; 0 when every program produced a record."""
    try:
        programs: list[tuple[str, str, float | None]] = [
            (path, Path(path).read_text(), None) for path in files
        ] or list(SAMPLES)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"exec-agent serve: cannot read a program: {exc}", file=sys.stderr)
        return _exit.EX_USAGE
    import ray
    from ray import serve

    joined = settings.ray_address is not None
    context = _start_ray(settings)
    try:
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}", file=sys.stderr)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        # No route prefix: the executor takes no HTTP traffic; only callers inside Ray reach it.
        handle = serve.run(executor_app(settings), name=APP_NAME, route_prefix=None)
        limits = settings.default_limits()
        responses = [
            handle.run.remote(ExecutionRequest(code=code, limits=_with_timeout(limits, wall_s)))
            for _, code, wall_s in programs
        ]
        produced = [
            _report(name, response)
            for (name, _, _), response in zip(programs, responses, strict=True)
        ]
    finally:
        if joined:
            serve.delete(APP_NAME)  # a shared cluster's other applications stay up
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return _exit.EX_OK if all(produced) else _exit.EX_SOFTWARE


def executor_app(
    settings: Settings,
    *,
    num_cpus: float | None = None,
    memory_bytes: int | None = None,
    max_ongoing_requests: int | None = None,
    target_ongoing_requests: float | None = None,
    label_selector: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> serve.Application:
    """The executor deployment as the settings size it.

    A replica takes one request per slot plus ``EXECUTOR_MAX_QUEUED_REQUESTS`` waiting inside
    it for a slot; as many more wait in each caller's handle, then the caller gets
    ``BackPressureError`` (the API's 503 ``overloaded``). The queue inside the replica is what
    keeps Serve's router from backing off: with one request per slot, a replica at capacity
    sends every further request into the router's retry back-off (measured here: 17 requests/s
    at 16 connections, against 76/s with 8 per slot). A drain lets running jobs finish within
    ``GRACEFUL_SHUTDOWN_TIMEOUT_S``; requests still waiting then end as ``internal_error``
    records, never as lost requests.
    ``num_cpus`` (default: one per slot) and ``memory_bytes`` (default: the replica's own
    512 MiB plus, per slot, ``MAX_MEMORY_MB`` and 32 MiB) are what Ray reserves per replica;
    ``max_ongoing_requests`` (default: slots plus ``EXECUTOR_MAX_QUEUED_REQUESTS``), ``target_ongoing_requests`` (default:
    every slot busy), ``label_selector`` (default: any node) and ``runtime_env`` (default: the
    node's) go to :func:`executors.build_executor_app`.
    """
    slots = settings.max_concurrent_executions
    job_memory_bytes = settings.max_memory_mb * MIB + SLOT_OVERHEAD_BYTES
    return build_executor_app(
        settings.sandbox_config(),
        slots,
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
    )


def _start_ray(settings: Settings) -> Any:
    """Join ``RAY_ADDRESS``, or start a local Ray on loopback with its GCS on ``RAY_GCS_PORT``
    and its Prometheus metrics on ``METRICS_PORT``."""
    import ray

    if settings.ray_address is not None:
        return ray.init(address=settings.ray_address)
    # Read by Serve's HTTP proxy actors, which inherit this environment through Ray.
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_MIDDLEWARES_IMPORT_PATH)
    # Likewise the executor replicas: OTEL_EXPORTER_OTLP_ENDPOINT (tracing), even from .env.
    export_tracing_environment(settings, os.environ)
    previous = os.environ.get(GCS_PORT_VARIABLE)
    os.environ[GCS_PORT_VARIABLE] = str(settings.ray_gcs_port)  # never Redis's 6379
    try:
        return ray.init(
            address="local",
            object_store_memory=settings.ray_object_store_memory_bytes,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            _metrics_export_port=settings.metrics_port,  # Prometheus: METRICS_PORT
        )
    finally:
        if previous is None:
            del os.environ[GCS_PORT_VARIABLE]
        else:
            os.environ[GCS_PORT_VARIABLE] = previous


def _with_timeout(limits: Limits, wall_timeout_s: float | None) -> Limits:
    if wall_timeout_s is None:
        return limits
    return Limits.model_validate({**limits.model_dump(), "wall_timeout_s": wall_timeout_s})


def _report(name: str, response: Any) -> bool:
    """Print one program's record (stdout) under its name (stderr); False if there is none."""
    print(f"== {name}", file=sys.stderr)
    try:
        record = ExecutionRecord.model_validate(response.result())
    except Exception as exc:  # noqa: BLE001 - one lost record must not hide the others
        print(f"no record: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    print(json.dumps(record.to_api()), flush=True)
    return True
