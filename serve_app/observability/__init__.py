"""Observability: one JSON log format for every process, and error reports to Sentry.

- :func:`configure_logging`: JSON lines on standard error (``ts``, ``level``, ``component``,
  ``logger``, ``event``, ``request_id``, ...), the format of :mod:`executors._logging`;
- :func:`init_sentry`: errors to ``SENTRY_DSN`` (no-op when unset), scrubbed of request
  bodies, headers, variables, keys and credentials; :func:`capture_internal_error` for the
  last-resort 500;
- :func:`configure_process`: both, as each ingress replica starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.observability._logging import (
    RAY_DRIVER_LOG_DEFAULTS,
    configure_driver_logging,
    configure_logging,
)
from serve_app.observability._sentry import (
    capture_internal_error,
    init_sentry,
    scrub_breadcrumb,
    scrub_event,
)

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = [
    "RAY_DRIVER_LOG_DEFAULTS",
    "capture_internal_error",
    "configure_driver_logging",
    "configure_logging",
    "configure_process",
    "init_sentry",
    "scrub_breadcrumb",
    "scrub_event",
]


def configure_process(settings: Settings, *, component: str) -> None:
    """JSON logs at ``LOG_LEVEL`` and Sentry (when ``SENTRY_DSN`` is set) for this process."""
    configure_logging(settings.log_level, component=component)
    init_sentry(settings, component=component)
