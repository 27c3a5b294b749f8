"""Tracing: OpenTelemetry spans exported over OTLP/HTTP, off unless an endpoint is configured.

One span tree per request, across processes::

    POST /v1/executions        ingress replica   (serve_app.observability.TracingMiddleware)
      executor.run             ingress replica   (around the handle call; one per attempt)
        sandbox.run            executor replica  (queue wait and run: SandboxExecutor.run)

The ingress passes its context to the executor as a small W3C carrier (``traceparent``, and
``baggage`` with the execution's id) beside the request: ``SandboxExecutor.run(request,
trace_context=...)``. Spans carry ids, statuses and measurements only: never a program's code,
standard input, files, tests or output, nor a request's body, query or headers.

Off (the default) nothing is installed: the global tracer provider stays the API's no-op one,
:func:`current_tracer` answers ``None`` and callers skip every span (no carrier is even built).
On, each process has one SDK provider (resource ``service.name``, ``component``), a
``BatchSpanProcessor`` and an OTLP/HTTP exporter to ``OTEL_EXPORTER_OTLP_ENDPOINT`` +
``/v1/traces`` (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, when set, is the whole URL; the
exporter reads ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT`` and the ``OTEL_BSP_*`` tuning
from the environment as usual). :func:`flush_tracing` sends what is buffered: replicas call it
as they stop, since Ray ends their processes without running ``atexit`` hooks.

This module imports nothing of ``serve_app``: the executor replicas read the endpoint from their
environment (:func:`init_tracing_from_env`), which a local Ray started by ``exec-agent serve``
passes on from the driver; the service's settings call :func:`init_tracing` in the ingress. The
sandboxes never see these variables (their environment is an allowlist).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from executors._models import ExecutionRecord, ExecutionStatus

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "ATTEMPT",
    "BATCH_RUNS",
    "DEFAULT_SERVICE_NAME",
    "ENDPOINT_VARIABLE",
    "ERROR_TYPE",
    "EXECUTION_ID",
    "QUEUE_WAIT_S",
    "REQUEST_ID",
    "SERVICE_NAME_VARIABLE",
    "STATUS",
    "TRACES_ENDPOINT_VARIABLE",
    "ExportTroubleAsWarning",
    "carried_execution_id",
    "current_tracer",
    "extract_context",
    "flush_tracing",
    "init_tracing",
    "init_tracing_from_env",
    "inject_context",
    "mark_failed",
    "quiet_export_errors",
    "set_record_attributes",
    "traces_endpoint",
    "tracing_enabled",
]

logger = logging.getLogger("executors.tracing")

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""The OTLP/HTTP collector's base URL (``http://collector:4318``); unset or empty: tracing off."""
TRACES_ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
"""The standard override: the traces endpoint's whole URL (path included)."""
SERVICE_NAME_VARIABLE = "OTEL_SERVICE_NAME"
DEFAULT_SERVICE_NAME = "exec-agent"
TRACES_PATH = "v1/traces"
INSTRUMENTATION_NAME = "exec_agent"
FLUSH_TIMEOUT_S = 5.0

# Span attributes of the service's own (the HTTP ones follow OpenTelemetry's names).
REQUEST_ID = "exec_agent.request_id"
EXECUTION_ID = "exec_agent.execution_id"
ATTEMPT = "exec_agent.attempt"
BATCH_RUNS = "exec_agent.batch_runs"
"""How many runs one ``executor.run`` call carried (a batch's chunk); absent for one."""
STATUS = "exec_agent.status"
EXIT_CODE = "exec_agent.exit_code"
WALL_TIME_S = "exec_agent.wall_time_s"
CPU_TIME_S = "exec_agent.cpu_time_s"
PEAK_MEMORY_BYTES = "exec_agent.peak_memory_bytes"
QUEUE_WAIT_S = "exec_agent.queue_wait_s"
ERROR_TYPE = "error.type"
BAGGAGE_EXECUTION_ID = "exec_agent.execution_id"
"""The baggage entry that carries the execution's id from the ingress to the executor."""

# Fixed here, not read from OTEL_PROPAGATORS: this is the service's own hop between its
# processes, which must link whatever the environment says about propagation elsewhere.
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_CARRIER_KEYS = frozenset({"traceparent", "tracestate", "baggage"})
_MAX_CARRIER_VALUE_CHARS = 1024

_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",  # an export that failed
    "opentelemetry.sdk._shared_internal",  # the batch processor: an exporter that raised
)
"""The loggers that report a collector's trouble (see :class:`ExportTroubleAsWarning`)."""

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


class ExportTroubleAsWarning(logging.Filter):
    """Logs the exporter's errors as warnings. Tracing is best effort: a collector that is down
    loses spans, not requests, and must not make an ``ERROR`` line (each of which becomes a
    Sentry event in the ingress) of every batch it refuses."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def traces_endpoint(base: str, environ: Mapping[str, str] = os.environ) -> str:
    """Where spans go: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` if set, else ``base`` with the
    traces path appended (the OTLP exporter specification's rule for the generic variable)."""
    explicit = environ.get(TRACES_ENDPOINT_VARIABLE, "").strip()
    if explicit:
        return explicit
    return f"{base.strip().removesuffix('/')}/{TRACES_PATH}"


def init_tracing(endpoint: str | None, *, component: str, service_name: str | None = None) -> bool:
    """Export this process's spans to the OTLP/HTTP collector at ``endpoint`` (its base URL);
    ``False``, and nothing installed, when ``endpoint`` is unset or empty.

    ``component`` (``ingress``, ``executor``, ...) and ``service_name`` (default
    ``OTEL_SERVICE_NAME``, else ``exec-agent``) become the spans' resource. Once per process:
    a second call keeps the first provider (and answers ``True``)."""
    global _provider, _tracer
    if not endpoint or not endpoint.strip():
        return False
    with _lock:
        if _provider is not None:
            return True
        # Imported only when tracing is on: a process without it never loads the SDK.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = service_name or os.environ.get(SERVICE_NAME_VARIABLE) or DEFAULT_SERVICE_NAME
        resource = Resource.create({"service.name": name, "component": component})
        provider = TracerProvider(resource=resource)
        url = traces_endpoint(endpoint)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        quiet_export_errors()
        trace.set_tracer_provider(provider)
        _provider = provider
        _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    logger.info("tracing on: spans to %s (%s, %s)", url, name, component)
    return True


def quiet_export_errors() -> None:
    """Install :class:`ExportTroubleAsWarning` on the exporter's loggers (idempotent)."""
    for name in _EXPORT_LOGGERS:
        export_logger = logging.getLogger(name)
        if not any(isinstance(f, ExportTroubleAsWarning) for f in export_logger.filters):
            export_logger.addFilter(ExportTroubleAsWarning())


def init_tracing_from_env(*, component: str, environ: Mapping[str, str] = os.environ) -> bool:
    """:func:`init_tracing` from ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the executor replicas)."""
    return init_tracing(
        environ.get(ENDPOINT_VARIABLE),
        component=component,
        service_name=environ.get(SERVICE_NAME_VARIABLE) or None,
    )


def current_tracer() -> Tracer | None:
    """The service's tracer, or ``None`` when tracing is off (callers then skip the span)."""
    return _tracer


def tracing_enabled() -> bool:
    """Whether :func:`init_tracing` installed an exporter in this process."""
    return _tracer is not None


def flush_tracing(timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """Export the spans still buffered (a replica stopping); ``True`` when tracing is off."""
    provider = _provider
    if provider is None:
        return True
    try:
        return provider.force_flush(int(timeout_s * 1000))
    except Exception as exc:  # noqa: BLE001 - a collector's trouble must not fail a shutdown
        logger.warning("spans not flushed: %s", type(exc).__name__)
        return False


def inject_context(execution_id: str | None = None) -> dict[str, str]:
    """The current span's context as a W3C carrier (``traceparent``, and ``baggage`` with
    ``execution_id``), for the executor replica."""
    context = baggage.set_baggage(BAGGAGE_EXECUTION_ID, execution_id) if execution_id else None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(carrier: Mapping[str, str] | None) -> Context | None:
    """The parent context a carrier of :func:`inject_context` names (``None``: no parent).

    Only the W3C keys are read, and only strings of a sane length: the carrier crosses a
    process boundary."""
    if not carrier:
        return None
    clean = {
        key: value
        for key, value in carrier.items()
        if key in _CARRIER_KEYS
        and isinstance(value, str)
        and len(value) <= _MAX_CARRIER_VALUE_CHARS
    }
    return _PROPAGATOR.extract(clean) if clean else None


def carried_execution_id(context: Context | None) -> str | None:
    """The execution id the carrier's baggage names, if any."""
    if context is None:
        return None
    value = baggage.get_baggage(BAGGAGE_EXECUTION_ID, context)
    return value if isinstance(value, str) and value else None


def mark_failed(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc``'s type only: an exception's message (a remote error's
    traceback) may quote the program, so it never goes on a span."""
    kind = type(exc).__qualname__
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, kind))


def set_record_attributes(span: Span, record: ExecutionRecord) -> None:
    """What a run's record may tell a trace: its status and measurements (never its output).
    An ``internal_error`` (the service failed, not the program) marks the span failed."""
    span.set_attribute(STATUS, record.status.value)
    measured = {
        EXIT_CODE: record.exit_code,
        WALL_TIME_S: record.wall_time_s,
        CPU_TIME_S: record.cpu_time_s,
        PEAK_MEMORY_BYTES: record.peak_memory_bytes,
    }
    for name, value in measured.items():
        if value is not None:
            span.set_attribute(name, value)
    if record.status is ExecutionStatus.INTERNAL_ERROR:
        span.set_status(Status(StatusCode.ERROR, record.status.value))
