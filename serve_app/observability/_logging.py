"""The service's logs: :mod:`executors._logging`'s format, with the request id of the request
being served (:func:`serve_app.observability.current_request_id`), as JSON lines or, for a
person at a terminal, text lines (``LOG_FORMAT``: ``json``, ``text``, ``auto``).

Every process writes the same lines to its standard error: the ``exec-agent serve`` driver
(``component: driver``), each ingress replica (``ingress``) and each executor replica
(``executor``, configured by the executors themselves, with Ray Serve's request id, which is
the ingress request's). Ray and Serve keep their own loggers and files (``ray``, ``ray.serve``:
not propagated to the root logger, so never written twice); Serve's ``LoggingConfig(encoding=
"JSON")`` is not used, as it formats only Serve's own logger, in Ray's field names, into Serve's
files, and covers neither the driver nor our loggers.

In text mode ``exec-agent serve`` also quiets what is written for machines or for Ray's own
developers at start-up: Alembic's INFO lines (one line says the database's revision instead),
and Ray's and Serve's INFO lines (:func:`quiet_level`); their warnings and errors stay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping

from executors.telemetry import (
    LOG_FORMAT_VARIABLE,
    LOG_LEVEL_VARIABLE,
    configure_json_logging,
    resolve_log_format,
    serve_request_id,
)
from serve_app.observability._context import current_request_id

__all__ = [
    "QUIET_LOGGERS",
    "RAY_DRIVER_LOG_DEFAULTS",
    "configure_driver_logging",
    "configure_logging",
    "quiet_level",
    "resolve_log_format",
]

RAY_DRIVER_LOG_DEFAULTS: Mapping[str, str] = {
    # Ray forwards each worker's standard error to the driver, prefixing every line with
    # "(ActorName pid=N)" and folding similar lines of several workers into one with
    # "[repeated Nx across cluster]" appended: either would break a JSON line. The lines carry
    # their component and pid instead. Set either variable to keep Ray's behaviour.
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    "RAY_DEDUP_LOGS": "0",
}
QUIET_LOGGERS = ("alembic",)
"""Loggers the driver sets to :func:`quiet_level` in text mode: a dozen lines of
migration plumbing at every start (``setup plugin ...``, ``Will assume transactional DDL``)."""


def configure_logging(
    level: str | int, *, component: str, log_format: str = "auto"
) -> logging.Handler:
    """Make this process log to standard error (idempotent): JSON lines, or text lines when
    :func:`resolve_log_format` of ``log_format`` says ``text``. ``component`` names its role
    (``driver``, ``ingress``, ...). Returns the root logger's handler."""
    return configure_json_logging(
        level, component=component, context=_request_context, log_format=log_format
    )


def configure_driver_logging(
    level: str | int, environ: MutableMapping[str, str], log_format: str = "auto"
) -> str:
    """For ``exec-agent serve``, before Ray is imported: its logs in ``log_format`` resolved
    (``json`` or ``text``, returned), the replicas' lines forwarded to it unaltered
    (:data:`RAY_DRIVER_LOG_DEFAULTS`, unless set), and in ``environ`` ``LOG_LEVEL`` (unless
    set) and the resolved ``LOG_FORMAT`` for the replicas of a Ray it starts."""
    for name, value in RAY_DRIVER_LOG_DEFAULTS.items():
        environ.setdefault(name, value)
    # The executor replicas read their level and format from the environment, which a local
    # Ray passes on from here (a value from .env would otherwise not reach them; and their
    # standard error is a file, so "auto" there would always say json).
    environ.setdefault(
        LOG_LEVEL_VARIABLE, logging.getLevelName(level) if isinstance(level, int) else level
    )
    resolved = resolve_log_format(log_format)
    environ[LOG_FORMAT_VARIABLE] = resolved
    configure_logging(level, component="driver", log_format=resolved)
    quiet = quiet_level(level, resolved)
    if quiet is not None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(quiet)
    return resolved


def quiet_level(level: str | int, log_format: str) -> int | None:
    """The level for the loggers that write for machines or their own developers (the
    driver's ``ray``, Serve's in its controller, proxies and replicas, and
    :data:`QUIET_LOGGERS`): in text mode WARNING, or ``level`` when it is lower (DEBUG: a
    person who asks for everything gets it); in JSON mode None, Ray's defaults, as before."""
    if log_format != "text":
        return None
    asked = _level(level)
    return asked if asked < logging.INFO else logging.WARNING


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    return value if isinstance(value, int) else logging.INFO


def _request_context() -> Mapping[str, str | None]:
    # Ours first (the id the client sees); Serve's where a record is logged outside the app
    # (a handle call's own context, a Serve callback).
    return {"request_id": current_request_id() or serve_request_id()}
