"""Error reporting to Sentry, from ``SENTRY_DSN`` (nothing at all when it is unset).

Initialised in every process that handles requests: the ingress replicas. The executor replicas
do not report to Sentry themselves: ``executors`` may not import ``serve_app`` (nor its
settings), and passing the DSN through the executor's constructor would put it into Serve's
deployment config (the controller's checkpoint, the dashboard). An executor's failure reaches
the ingress as the handle call's exception (or as an ``internal_error`` record) and is reported
from there, under the request's id, where the ingress logs it at ``ERROR``: every ``ERROR``
record of an ingress replica becomes an event (``WARNING`` and ``INFO`` ones become
breadcrumbs of the next).

What is sent is an error's type, its first line (cut short), where it happened (file, line,
function: no locals, no source lines) and the log lines before it, without their data:

- ``data_collection`` with every category off (frame variables and context lines included) or,
  on sentry-sdk versions without it, ``send_default_pii=False``; ``include_local_variables=False``
  and ``include_source_context=False`` where this version still has them (2.x);
  ``max_request_body_size="never"``;
- only the integrations named here (logging, dedupe, atexit): not the auto-enabled Starlette
  and FastAPI ones, which would attach request headers and bodies (the program's code, the
  ``Authorization`` header) and report every 4xx the app answers;
- :func:`scrub_event` (``before_send``) and :func:`scrub_breadcrumb` (``before_breadcrumb``)
  drop request data, user, extras (but the ids of ``EXTRA_FIELDS``), breadcrumbs' data and
  frames' variables and source, cut messages to their first line, and mask anything shaped
  like an API key or a URL's credentials (:func:`executors._logging.redact`), in every string
  of the event.

Each event is tagged ``component`` and ``request_id`` (the request being served when it was
captured).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.consts import ClientConstructor
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from executors.telemetry import EXTRA_FIELDS, redact, serve_request_id
from serve_app.observability._context import current_request_id

if TYPE_CHECKING:
    from sentry_sdk._types import Event, Hint

    from serve_app.settings import Settings

__all__ = ["capture_internal_error", "init_sentry", "scrub_breadcrumb", "scrub_event"]

DISTRIBUTION = "exec-agent"
MAX_MESSAGE_CHARS = 300
MAX_BREADCRUMBS = 50
_KEPT_CONTEXTS = frozenset({"runtime", "os", "device", "trace"})
_KEPT_FRAME_KEYS = frozenset({"filename", "abs_path", "module", "function", "lineno", "in_app"})
_DROPPED_KEYS = ("request", "user", "spans", "modules")


def init_sentry(settings: Settings, *, component: str) -> bool:
    """Start reporting this process's errors to ``settings.sentry_dsn``; ``False`` (and nothing
    done) when it is unset. Idempotent for one DSN."""
    dsn = settings.sentry_dsn
    if not dsn:
        return False
    client = sentry_sdk.get_client()
    if not (client.is_active() and client.dsn == dsn):
        sentry_sdk.init(
            dsn=dsn,
            environment=settings.environment,
            release=_release(),
            **_no_personal_data(),
            max_request_body_size="never",
            max_breadcrumbs=MAX_BREADCRUMBS,
            attach_stacktrace=False,
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=[
                _logging_integration(),
                DedupeIntegration(),
                AtexitIntegration(),
            ],
            auto_session_tracking=False,
            before_send=scrub_event,
            before_breadcrumb=scrub_breadcrumb,
        )
    sentry_sdk.get_global_scope().set_tag("component", component)
    return True


def capture_internal_error(exc: BaseException) -> None:
    """Report ``exc``, an error no handler expected (the last-resort 500: the caller decides),
    with the request's id; nothing when Sentry is not initialised. A log record of the same
    exception right after is not sent again (``DedupeIntegration``)."""
    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        request_id = _request_id()
        if request_id:
            scope.set_tag("request_id", request_id)
        scope.set_level("error")
        sentry_sdk.capture_exception(exc)


def scrub_event(event: Event, hint: Hint) -> Event | None:
    """``before_send``: what of ``event`` may leave the service (see the module docstring)."""
    data = cast("MutableMapping[str, Any]", event)
    for key in _DROPPED_KEYS:
        data.pop(key, None)
    extra = data.get("extra")
    if isinstance(extra, dict):
        data["extra"] = {name: extra[name] for name in EXTRA_FIELDS if name in extra}
    contexts = data.get("contexts")
    if isinstance(contexts, dict):
        data["contexts"] = {name: contexts[name] for name in _KEPT_CONTEXTS if name in contexts}
    logentry = data.get("logentry")
    if isinstance(logentry, dict):
        text = logentry.get("formatted") or logentry.get("message") or ""
        data["logentry"] = {"message": _first_line(str(text)), "params": []}
    if isinstance(data.get("message"), str):
        data["message"] = _first_line(data["message"])
    for holder in ("exception", "threads"):
        for value in _values(data.get(holder)):
            if isinstance(value.get("value"), str):
                value["value"] = _first_line(value["value"])
            stacktrace = value.get("stacktrace")
            if isinstance(stacktrace, dict):
                stacktrace["frames"] = [_frame(frame) for frame in stacktrace.get("frames") or ()]
    breadcrumbs = data.get("breadcrumbs")
    if isinstance(breadcrumbs, dict):
        breadcrumbs["values"] = [scrub_breadcrumb(crumb, {}) for crumb in _values(breadcrumbs)]
    elif isinstance(breadcrumbs, list):
        data["breadcrumbs"] = [scrub_breadcrumb(crumb, {}) for crumb in breadcrumbs]
    tags = data.setdefault("tags", {})
    if isinstance(tags, dict) and "request_id" not in tags:
        request_id = _request_id()
        if request_id:
            tags["request_id"] = request_id
    return cast("Event", _redacted(data))


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """``before_breadcrumb``: a breadcrumb without its data, its message cut and masked."""
    crumb.pop("data", None)
    if isinstance(crumb.get("message"), str):
        crumb["message"] = _first_line(crumb["message"])
    return crumb


def _no_personal_data() -> dict[str, Any]:
    """No personal data, no locals, no source lines, in the form this sentry-sdk takes: older
    versions have ``send_default_pii``, later 2.x ones add ``data_collection`` (every category
    turned off here) beside the two ``include_*`` flags, and 3.x keeps only ``data_collection``."""
    parameters = inspect.signature(ClientConstructor.__init__).parameters
    options: dict[str, Any] = {
        flag: False
        for flag in ("include_local_variables", "include_source_context")
        if flag in parameters
    }
    if "data_collection" not in parameters:
        return {**options, "send_default_pii": False}
    off = {"mode": "off"}
    options["data_collection"] = {
        "user_info": False,
        "cookies": off,
        "http_headers": {"request": off},
        "http_bodies": [],
        "url_query_params": off,
        "graphql": {"document": False, "variables": False},
        "gen_ai": {"inputs": False, "outputs": False},
        "database_query_data": False,
        "queues": False,
        "stack_frame_variables": False,
        "frame_context_lines": 0,
    }
    return options


def _logging_integration() -> LoggingIntegration:
    """``ERROR`` records as events, ``INFO`` and up as breadcrumbs, none as Sentry logs. 2.x names
    the breadcrumbs' threshold ``level`` (logs: ``sentry_logs_level``); 3.x gives ``level`` to
    the logs and names the breadcrumbs' ``breadcrumb_level``."""
    options: dict[str, Any] = {"event_level": logging.ERROR}
    if "breadcrumb_level" in inspect.signature(LoggingIntegration.__init__).parameters:
        options.update(level=None, breadcrumb_level=logging.INFO)
    else:
        options.update(level=logging.INFO, sentry_logs_level=None)
    return LoggingIntegration(**options)


def _release() -> str | None:
    try:
        return f"{DISTRIBUTION}@{importlib.metadata.version(DISTRIBUTION)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _request_id() -> str | None:
    return current_request_id() or serve_request_id()


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > MAX_MESSAGE_CHARS:
        first = first[:MAX_MESSAGE_CHARS] + "..."
    return redact(first)


def _values(holder: Any) -> list[dict[str, Any]]:
    values = holder.get("values") if isinstance(holder, dict) else holder
    return [value for value in values or () if isinstance(value, dict)]


def _frame(frame: Any) -> dict[str, Any]:
    if not isinstance(frame, dict):
        return {}
    return {key: value for key, value in frame.items() if key in _KEPT_FRAME_KEYS}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value
