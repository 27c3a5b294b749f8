"""The ingress deployment: one FastAPI app per replica, in front of the executor deployment.

Ray Serve builds the app in the replica (``__serve_build_asgi_app__``), after the constructor
has made the database engine and the limiter there: neither travels between processes, and the
limiter binds to the replica's event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from serve_app.db import Database
from serve_app.http._routes import build_api
from serve_app.http._service import ExecutionService
from serve_app.observability import configure_process, flush_tracing
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings

if TYPE_CHECKING:
    from ray import serve

__all__ = ["INGRESS_NAME", "ApiIngress", "service_app"]

INGRESS_NAME = "ApiIngress"
INGRESS_NUM_CPUS = 0.0
"""The ingress mostly waits (on executors, the database, Redis), like Serve's own proxy (which
reserves none either); the cores are reserved by the executors, one per slot."""
INGRESS_MAX_ONGOING_REQUESTS = 1000
"""Requests one ingress replica holds at once; waiting ones mostly wait on the executors, whose
own bounded queue (``EXECUTOR_MAX_QUEUED_REQUESTS``) answers 503 beyond it."""


class ApiIngress:
    """The HTTP API's deployment class; ``executor`` is the executor deployment's handle."""

    def __init__(self, settings: Settings, executor: Any) -> None:
        # JSON logs, Sentry (SENTRY_DSN), tracing (OTEL_EXPORTER_OTLP_ENDPOINT)
        configure_process(settings, component="ingress")
        database = Database.from_settings(settings)
        limiter = build_rate_limiter(settings)
        self.settings = settings
        self.service = ExecutionService(settings, database, limiter, executor)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.settings, self.service)

    def __del__(self) -> None:
        # Serve calls this as the replica stops, after the app's shutdown (which let background
        # runs finish); Ray then ends the process without atexit: send the last spans now.
        flush_tracing()


def service_app(
    settings: Settings,
    executor: serve.Application,
    *,
    num_cpus: float = INGRESS_NUM_CPUS,
    num_replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    target_ongoing_requests: float | None = None,
    max_ongoing_requests: int = INGRESS_MAX_ONGOING_REQUESTS,
    max_queued_requests: int = -1,
    label_selector: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> serve.Application:
    """The whole service for ``serve.run``: the ingress bound to ``executor`` (for instance
    ``serve_app._local_demo.executor_app(settings)``).

    ``num_replicas`` ingress replicas, or, given ``min_replicas`` and ``max_replicas``, as many
    as Serve's autoscaler chooses between them, aiming at ``target_ongoing_requests`` per
    replica (Serve's default when ``None``). A replica holds ``max_ongoing_requests`` requests
    at once; ``max_queued_requests`` caps those waiting in the proxy beyond that (``-1``: no
    cap; more are answered 503). ``label_selector`` (Ray node labels) keeps replicas on the
    nodes it matches, e.g. ``{"exec-agent/role": "!sandbox"}``: off the sandbox nodes.
    ``runtime_env``: the replicas' Ray runtime environment (default: the node's).
    """
    from ray import serve

    options: dict[str, Any] = {
        "name": INGRESS_NAME,
        "ray_actor_options": {"num_cpus": num_cpus},
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_timeout_s,
    }
    if label_selector:
        options["ray_actor_options"]["label_selector"] = dict(label_selector)
    if runtime_env:
        options["ray_actor_options"]["runtime_env"] = dict(runtime_env)
    if min_replicas is None and max_replicas is None:
        options["num_replicas"] = num_replicas
    elif min_replicas is None or max_replicas is None:
        raise ValueError("autoscaling needs both min_replicas and max_replicas")
    elif not 1 <= min_replicas <= max_replicas:
        raise ValueError("need 1 <= min_replicas <= max_replicas")
    else:
        autoscaling: dict[str, Any] = {
            "min_replicas": min_replicas,
            "initial_replicas": min_replicas,
            "max_replicas": max_replicas,
        }
        if target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = target_ongoing_requests
        options["autoscaling_config"] = autoscaling
    deployment = serve.deployment(**options)(serve.ingress()(ApiIngress))
    app: serve.Application = deployment.bind(settings, executor)
    return app
