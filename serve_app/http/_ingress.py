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
        database = Database.from_settings(settings)
        limiter = build_rate_limiter(settings)
        self.settings = settings
        self.service = ExecutionService(settings, database, limiter, executor)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.settings, self.service)


def service_app(
    settings: Settings,
    executor: serve.Application,
    *,
    num_cpus: float = INGRESS_NUM_CPUS,
    num_replicas: int = 1,
) -> serve.Application:
    """The whole service for ``serve.run``: the ingress bound to ``executor`` (for instance
    ``serve_app._local_demo.executor_app(settings)``)."""
    from ray import serve

    deployment = serve.deployment(
        name=INGRESS_NAME,
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
    )(serve.ingress()(ApiIngress))
    app: serve.Application = deployment.bind(settings, executor)
    return app
