"""Observability: one log format for every process, error reports to Sentry, and traces.

- :func:`configure_logging`: JSON lines on standard error (``ts``, ``level``, ``component``,
  ``logger``, ``event``, ``request_id``, ...), the format of :mod:`executors._logging`, or the
  same fields as text lines for a person (``LOG_FORMAT``); :func:`configure_driver_logging`
  for ``exec-agent serve``, which passes the format on to its replicas;
- :func:`serve_summary`, :func:`print_summary`: what ``exec-agent serve`` tells a person at a
  terminal once it serves;
- :func:`init_sentry`: errors to ``SENTRY_DSN`` (no-op when unset), scrubbed of request
  bodies, headers, variables, keys and credentials; :func:`capture_internal_error` for the
  last-resort 500;
- :func:`init_tracing`: OpenTelemetry spans over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``
  (nothing installed when unset), :class:`TracingMiddleware` for the HTTP requests, and the
  variables the executor replicas read (:func:`tracing_environment`);
- :func:`configure_process`: all three, as each ingress replica starts;
- :func:`current_request_id`: the id of the request being served (set by the API's edge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.observability._console import (
    ServeSummary,
    browse_url,
    installed_command,
    mask_database_url,
    print_summary,
    serve_summary,
)
from serve_app.observability._context import (
    current_request_id,
    reset_request_id,
    set_request_id,
)
from serve_app.observability._logging import (
    QUIET_LOGGERS,
    RAY_DRIVER_LOG_DEFAULTS,
    configure_driver_logging,
    configure_logging,
    quiet_level,
    resolve_log_format,
)
from serve_app.observability._sentry import (
    capture_internal_error,
    init_sentry,
    scrub_breadcrumb,
    scrub_event,
)
from serve_app.observability._tracing import (
    TracingMiddleware,
    current_tracer,
    export_tracing_environment,
    flush_tracing,
    init_tracing,
    tracing_enabled,
    tracing_environment,
)

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = [
    "QUIET_LOGGERS",
    "RAY_DRIVER_LOG_DEFAULTS",
    "ServeSummary",
    "TracingMiddleware",
    "browse_url",
    "capture_internal_error",
    "configure_driver_logging",
    "configure_logging",
    "configure_process",
    "current_request_id",
    "current_tracer",
    "export_tracing_environment",
    "flush_tracing",
    "init_sentry",
    "init_tracing",
    "installed_command",
    "mask_database_url",
    "print_summary",
    "quiet_level",
    "reset_request_id",
    "resolve_log_format",
    "scrub_breadcrumb",
    "scrub_event",
    "serve_summary",
    "set_request_id",
    "tracing_enabled",
    "tracing_environment",
]


def configure_process(settings: Settings, *, component: str) -> None:
    """Logs at ``LOG_LEVEL`` in ``LOG_FORMAT``, Sentry (when ``SENTRY_DSN`` is set) and
    tracing (when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) for this process."""
    configure_logging(settings.log_level, component=component, log_format=settings.log_format)
    init_sentry(settings, component=component)
    init_tracing(settings, component=component)
