"""Starting or joining Ray for ``exec-agent serve`` (and its ``--demo``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from serve_app.observability import export_tracing_environment

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["APP_NAME", "PROXY_CALLBACK_VARIABLE", "metrics_url", "start_ray"]

APP_NAME = "exec-agent"
"""The Serve application ``exec-agent serve`` deploys (and the cluster's config names)."""
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
GCS_PORT_VARIABLE = "RAY_GCS_SERVER_PORT"  # the only way to choose the port ray.init's GCS takes


def start_ray(settings: Settings, logging_level: int | None = None) -> Any:
    """Join ``RAY_ADDRESS``, or start a local Ray on loopback with its GCS on ``RAY_GCS_PORT``
    and its Prometheus metrics on ``METRICS_PORT``. ``logging_level``: the level of this
    process's ``ray`` logger (None: Ray's default, INFO)."""
    import ray

    from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH

    level: dict[str, Any] = {} if logging_level is None else {"logging_level": logging_level}
    if settings.ray_address is not None:
        return ray.init(address=settings.ray_address, **level)
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
            **level,
        )
    finally:
        if previous is None:
            del os.environ[GCS_PORT_VARIABLE]
        else:
            os.environ[GCS_PORT_VARIABLE] = previous


def metrics_url(context: Any, joined: bool) -> str | None:
    """Where this node's Ray exports Prometheus metrics (``METRICS_PORT`` when Ray is ours)."""
    info = getattr(context, "address_info", None) or {}
    port = info.get("metrics_export_port")
    if not isinstance(port, int) or port <= 0:
        return None
    host = info.get("node_ip_address") if joined else "127.0.0.1"
    return f"http://{host}:{port}/metrics" if host else None
