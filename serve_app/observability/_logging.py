"""The service's JSON logs: :mod:`executors._logging`'s format, with the request id of the
request being served (:func:`serve_app.observability.current_request_id`).

Every process writes the same lines to its standard error: the ``exec-agent serve`` driver
(``component: driver``), each ingress replica (``ingress``) and each executor replica
(``executor``, configured by the executors themselves, with Ray Serve's request id, which is
the ingress request's). Ray and Serve keep their own loggers and files (``ray``, ``ray.serve``:
not propagated to the root logger, so never written twice); Serve's ``LoggingConfig(encoding=
"JSON")`` is not used, as it formats only Serve's own logger, in Ray's field names, into Serve's
files, and covers neither the driver nor our loggers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping

from executors.telemetry import LOG_LEVEL_VARIABLE, configure_json_logging, serve_request_id
from serve_app.observability._context import current_request_id

__all__ = ["RAY_DRIVER_LOG_DEFAULTS", "configure_driver_logging", "configure_logging"]

RAY_DRIVER_LOG_DEFAULTS: Mapping[str, str] = {
    # Ray forwards each worker's standard error to the driver, prefixing every line with
    # "(ActorName pid=N)" and folding similar lines of several workers into one with
    # "[repeated Nx across cluster]" appended: either would break a JSON line. The lines carry
    # their component and pid instead. Set either variable to keep Ray's behaviour.
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    "RAY_DEDUP_LOGS": "0",
}


def configure_logging(level: str | int, *, component: str) -> logging.Handler:
    """Make this process log JSON lines to standard error (idempotent); ``component`` names
    its role (``driver``, ``ingress``, ...). Returns the root logger's handler."""
    return configure_json_logging(level, component=component, context=_request_context)


def configure_driver_logging(level: str | int, environ: MutableMapping[str, str]) -> None:
    """For ``exec-agent serve``, before Ray is imported: JSON logs in the driver, the replicas'
    lines forwarded to it unaltered (:data:`RAY_DRIVER_LOG_DEFAULTS`, unless set), and
    ``LOG_LEVEL`` in ``environ`` for the executor replicas (unless set)."""
    for name, value in RAY_DRIVER_LOG_DEFAULTS.items():
        environ.setdefault(name, value)
    # The executor replicas read their level from the environment, which a local Ray passes on
    # from here (a value from .env would otherwise not reach them).
    environ.setdefault(
        LOG_LEVEL_VARIABLE, logging.getLevelName(level) if isinstance(level, int) else level
    )
    configure_logging(level, component="driver")


def _request_context() -> Mapping[str, str | None]:
    # Ours first (the id the client sees); Serve's where a record is logged outside the app
    # (a handle call's own context, a Serve callback).
    return {"request_id": current_request_id() or serve_request_id()}
