""":func:`build_api`: the FastAPI app of the API, the routers of :mod:`serve_app.http.routes`
over an :class:`ExecutionService`, behind the edge of :mod:`serve_app.api`.

The routes are in their routers, their dependencies in :mod:`serve_app.http.deps`; this module
only assembles: the service in the app's state, the routers, the middleware. The metrics and
the traces match requests against :data:`~serve_app.http.routes.ROUTES` (their templates) and,
with ``API_DOCS`` on, the documentation's (:mod:`serve_app.http._docs`: ``/openapi.json``,
``/docs``; off, they are not routes at all and answer 404).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from serve_app.api import install_edge
from serve_app.http import _docs
from serve_app.http._allow import AllowHeaderMiddleware
from serve_app.http._metrics import UNMATCHED_ROUTE, RequestMetricsMiddleware, route_template
from serve_app.http._ratelimit_headers import RateLimitHeadersMiddleware
from serve_app.http.deps import attach
from serve_app.http.routes import ROUTERS
from serve_app.http.service import ExecutionService
from serve_app.observability import TracingMiddleware, current_tracer
from serve_app.settings import Settings
from serve_app.web import STATIC_DIR, STATIC_ROUTE

__all__ = ["build_api"]

DISTRIBUTION = "exec-agent"
DESCRIPTION = (
    "Runs untrusted Python in sandboxes: one program, batches, live sessions, streamed output. "
    'Every error answers `{"error": {"code", "message", "request_id", "details"?}}`.'
)


def _without_fastapi_tracing() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry spans off (newer FastAPIs trace every request once a tracer
    provider is installed): the service's :class:`TracingMiddleware` span is the one, with its
    fixed attributes. FastAPI's would add a second server span, record the raw path and query,
    and start the trace a client's ``traceparent`` names. Nor may FastAPI install exporters of
    its own (``FASTAPI_OTEL_AUTO_CONFIGURE``): tracing is ``OTEL_EXPORTER_OTLP_ENDPOINT``'s."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}  # a FastAPI without native telemetry
    return {"telemetry": {"tracing": False, "auto_configure": False}}


def build_api(settings: Settings, service: ExecutionService) -> FastAPI:
    """The app one ingress replica serves."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        await service.aclose(settings.graceful_shutdown_timeout_s)

    app = FastAPI(
        title="Python Execution Agent",
        version=importlib.metadata.version(DISTRIBUTION),
        description=DESCRIPTION,
        docs_url=None,  # /openapi.json and /docs are serve_app.http._docs's
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        **_without_fastapi_tracing(),
    )
    attach(app, service)
    routers = (*ROUTERS, _docs.router) if settings.api_docs else ROUTERS
    for router in routers:
        app.include_router(router)
    routes = tuple(route for router in routers for route in router.routes)
    if settings.api_docs or settings.playground:  # the pages' files; no authentication
        app.mount(STATIC_ROUTE, StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    app.add_middleware(AllowHeaderMiddleware, routes=routes)  # innermost: the router's 405s
    app.add_middleware(RateLimitHeadersMiddleware)  # sees the handlers' answers
    # Ray Serve's RequestIdMiddleware sends X-Request-ID around this app (see the edge).
    install_edge(app, settings, upstream_request_id=True)
    tracer = current_tracer()
    if tracer is not None:  # OTEL_EXPORTER_OTLP_ENDPOINT: a span per request, outside the edge

        def traced_route(scope: Scope) -> str | None:
            route = route_template(scope, routes)
            return None if route == UNMATCHED_ROUTE else route

        app.add_middleware(TracingMiddleware, tracer=tracer, route=traced_route)
    # Outermost: measures every answer, the edge's refusals included.
    app.add_middleware(RequestMetricsMiddleware, metrics=service.metrics, routes=routes)
    return app
