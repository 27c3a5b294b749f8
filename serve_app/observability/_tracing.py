"""Tracing in the service: OpenTelemetry spans over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set, nothing at all otherwise (:mod:`executors._tracing` holds the machinery and the span
tree; this module adds the service's side).

- :func:`init_tracing`: as each ingress replica starts (from the settings);
- :class:`TracingMiddleware`: a server span per HTTP request, named by its route template
  (``POST /v1/executions``), with ``http.method``, ``http.route``, ``http.status_code`` and
  ``exec_agent.request_id``; never the path's values, the query, the headers or the body. It
  starts each trace afresh: a client's ``traceparent`` is not trusted to join one;
- :func:`tracing_environment` and :func:`export_tracing_environment`: the variables the
  executor replicas read, set in the driver before it starts a local Ray (whose workers
  inherit its environment) or passed in a deployment's ``runtime_env``.

The executor call is traced in :meth:`serve_app.http.ExecutionService._run` (``executor.run``,
one span per attempt, whose context travels to the executor replica's ``sandbox.run``).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from executors.telemetry import (
    ENDPOINT_VARIABLE,
    REQUEST_ID,
    SERVICE_NAME_VARIABLE,
    current_tracer,
    flush_tracing,
    mark_failed,
    serve_request_id,
    tracing_enabled,
)
from executors.telemetry import init_tracing as _init_tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from serve_app.settings import Settings

__all__ = [
    "TracingMiddleware",
    "current_tracer",
    "export_tracing_environment",
    "flush_tracing",
    "init_tracing",
    "tracing_enabled",
    "tracing_environment",
]

HTTP_METHOD = "http.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS_CODE = "http.status_code"
OTHER_METHOD = "_OTHER"
"""OpenTelemetry's name for a method that is not a standard one (the client's word)."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

RouteOf = Callable[[Scope], str | None]
"""The template of the route that served a request (``None``: no route matched)."""


def init_tracing(settings: Settings, *, component: str) -> bool:
    """Export this process's spans to ``OTEL_EXPORTER_OTLP_ENDPOINT`` as ``OTEL_SERVICE_NAME``
    (resource attribute ``component``); ``False``, and nothing installed, when it is unset."""
    return _init_tracing(
        settings.otel_exporter_otlp_endpoint,
        component=component,
        service_name=settings.otel_service_name,
    )


def tracing_environment(settings: Settings) -> dict[str, str]:
    """The variables the executor replicas read to trace like the ingress (empty: off)."""
    if not settings.otel_exporter_otlp_endpoint:
        return {}
    return {
        ENDPOINT_VARIABLE: settings.otel_exporter_otlp_endpoint,
        SERVICE_NAME_VARIABLE: settings.otel_service_name,
    }


def export_tracing_environment(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """For a driver about to start a local Ray: :func:`tracing_environment` into ``environ``
    (unless set), so that the executor replicas, which inherit it, trace too (a value read
    from ``.env`` would otherwise not reach them)."""
    for name, value in tracing_environment(settings).items():
        environ.setdefault(name, value)


class TracingMiddleware:
    """Pure ASGI: one ``SERVER`` span per HTTP request (see the module docstring); the span is
    the current one while the app runs, so the executor call's span is its child. Installed
    only when tracing is on."""

    def __init__(self, app: ASGIApp, *, tracer: Tracer, route: RouteOf) -> None:
        self.app = app
        self.tracer = tracer
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else OTHER_METHOD
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            method,
            kind=SpanKind.SERVER,
            attributes={HTTP_METHOD: method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            failed = False
            try:
                await self.app(scope, receive, send_traced)
            except BaseException as exc:
                failed = True
                mark_failed(span, exc)
                raise
            finally:
                self._finish(span, scope, method, status, failed=failed)

    def _finish(self, span: Span, scope: Scope, method: str, status: int, *, failed: bool) -> None:
        route = self.route(scope)
        if route is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute(HTTP_ROUTE, route)
        if status:  # none: the client left before an answer began
            span.set_attribute(HTTP_STATUS_CODE, status)
            if status >= 500 and not failed:
                span.set_status(Status(StatusCode.ERROR))
        # The edge's id (the client's, when sane, as Serve echoes it), left in the scope.
        request_id = scope.get("state", {}).get("request_id") or serve_request_id()
        if isinstance(request_id, str) and request_id:
            span.set_attribute(REQUEST_ID, request_id)
