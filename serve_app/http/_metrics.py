"""The ingress side's metrics: defined here only, exported by Ray in Prometheus format.

Each name is given to Ray as below; Ray's exporter adds its ``ray_`` namespace (hard-coded in
Ray 2.60), so Prometheus sees ``ray_exec_agent_...``. Inside the ingress replica they are
``ray.serve.metrics`` (also tagged ``deployment``, ``replica``, ``application``)::

    exec_agent_executions_total{status,cached}      counter: terminal records stored, once each
                                                    (runs, background runs, batch items, cache
                                                    copies, takeovers)
    exec_agent_request_duration_seconds{route,method,status_code}
                                                    histogram: HTTP requests; ``route`` is the
                                                    route's template (``unmatched`` for none)
    exec_agent_active_executions                    gauge: runs this replica has at the executors
    exec_agent_rate_limited_total{limit}            counter: 429s, ``rate``, ``concurrency``,
                                                    ``batch_backlog`` (a key's share) or
                                                    ``auth`` (an address's failed keys)
    exec_agent_rejected_total{reason}               counter: refusals by ``overloaded``,
                                                    ``unavailable``, ``policy``, ``unauthorized``,
                                                    ``invalid`` (the answer's error code)
    exec_agent_db_write_retries_total               counter: result writes tried again after
                                                    the database failed them
    exec_agent_sessions_created_total               counter: sessions placed and stored
    exec_agent_sessions_ended_total{reason}         counter: sessions whose row was ended, once
                                                    each, by ``terminated_reason`` (the hosts
                                                    report ``exec_agent_sessions_active``)
    exec_agent_streamed_executions_total            counter: streamed executions (Server-Sent
                                                    Events, ``/v1/ws``) whose record was stored
    exec_agent_stream_dropped_bytes_total           counter: output bytes their clients did not
                                                    get (too slow: ``stream_dropped_bytes``)

The executor side's are in :mod:`executors._metrics`. Without Ray (tests that build an
:class:`~serve_app.http.ExecutionService` alone) :func:`ingress_metrics` gives
:data:`NO_METRICS`, which records nothing. Tag dictionaries are built once; a request costs
two clock reads and one histogram observation (:class:`RequestMetricsMiddleware`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from executors import TERMINAL_STATUSES, EndReason, ExecutionRecord
from executors.telemetry import (
    DURATION_BUCKETS_S,
    KeptGauge,
    metric_types,
    ray_connected,
    zero_counter,
)

__all__ = [
    "NO_METRICS",
    "OTHER_METHOD",
    "REJECTION_REASONS",
    "UNMATCHED_ROUTE",
    "IngressMetrics",
    "RequestMetricsMiddleware",
    "ingress_metrics",
    "rejection_reason",
    "route_template",
]

REQUEST_BUCKETS_S = [0.001, 0.0025, *DURATION_BUCKETS_S]
UNMATCHED_ROUTE = "unmatched"
"""The ``route`` of a request no route matches (never the raw path: it is the client's)."""
OTHER_METHOD = "other"
"""The ``method`` of a request whose method is not a standard one."""
RATE_LIMITS = ("rate", "concurrency", "batch_backlog", "auth")
REJECTION_REASONS = {
    "overloaded": "overloaded",
    "unavailable": "unavailable",
    "policy_violation": "policy",
    "unauthorized": "unauthorized",
    "invalid_json": "invalid",
    "invalid_request": "invalid",
    "payload_too_large": "invalid",
    "unsupported_media_type": "invalid",
}
"""The API's error codes (``API.md``) that count as refusals, and their ``reason``."""
SESSION_END_REASONS = tuple(reason.value for reason in EndReason)
"""The ``reason`` values of ``exec_agent_sessions_ended_total``, zeroed at start."""
_REJECTION_STATUSES = frozenset({400, 401, 413, 415, 422, 503})
_ERROR_PREFIX = b'{"error":{"code":"'
"""How every error answer starts (``serve_app.api.errors``, rendered by ``JSONResponse``)."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def rejection_reason(body: bytes) -> str | None:
    """The ``reason`` of an error answer's body, or None if it is not a refusal."""
    if not body.startswith(_ERROR_PREFIX):
        return None
    end = body.find(b'"', len(_ERROR_PREFIX))
    if end < 0:
        return None
    return REJECTION_REASONS.get(body[len(_ERROR_PREFIX) : end].decode("ascii", "replace"))


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route serving ``scope`` (``/v1/executions/{execution_id}``).

    Routing leaves the route in the scope; a request answered before routing (the body guard's
    413 and 415) is matched here, and one that matches nothing is :data:`UNMATCHED_ROUTE`.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            template = getattr(route, "path", None)
            if isinstance(template, str):
                return template
    return UNMATCHED_ROUTE


class IngressMetrics:
    """What the ingress reports. This base reports nothing (outside Ray)."""

    def execution_stored(self, record: ExecutionRecord) -> None:
        """A terminal record was stored: once per execution, wherever it ended (a streamed
        one's ``stream_dropped_bytes`` counted then too)."""

    def run_started(self) -> None:
        """A run went to the executors."""

    def run_ended(self) -> None:
        """A run came back (or failed)."""

    def rate_limited(self, limit: str) -> None:
        """A request was refused 429 by ``limit`` (one of :data:`RATE_LIMITS`)."""

    def rejected(self, reason: str) -> None:
        """A request was refused for ``reason`` (one of :data:`REJECTION_REASONS`' values)."""

    def db_write_retry(self) -> None:
        """A result write was tried again."""

    def request(self, route: str, method: str, status_code: int, seconds: float) -> None:
        """An HTTP request was answered."""

    def session_created(self) -> None:
        """A session was placed and stored."""

    def session_ended(self, reason: str) -> None:
        """A session's row was ended (once per session, by whoever flipped it)."""


NO_METRICS = IngressMetrics()


class _RayIngressMetrics(IngressMetrics):
    def __init__(self) -> None:
        types = metric_types()
        self._executions = types.Counter(
            "exec_agent_executions_total",
            description="Executions finished (terminal records stored), by status and cached.",
            tag_keys=("status", "cached"),
        )
        self._execution_tags = {
            (status.value, cached): {"status": status.value, "cached": str(cached).lower()}
            for status in TERMINAL_STATUSES
            for cached in (False, True)
        }
        for tags in self._execution_tags.values():
            zero_counter(self._executions, tags)
        self._requests = types.Histogram(
            "exec_agent_request_duration_seconds",
            description="HTTP requests to the API, seconds, by route template, method, status.",
            boundaries=REQUEST_BUCKETS_S,
            tag_keys=("route", "method", "status_code"),
        )
        self._request_tags: dict[tuple[str, str, int], dict[str, str]] = {}
        self._active = KeptGauge(
            types.Gauge(
                "exec_agent_active_executions",
                description="Executions an API replica is running through the executors now.",
            )
        )
        self._running = 0
        self._active.set(0)
        self._rate_limited = types.Counter(
            "exec_agent_rate_limited_total",
            description="Requests refused 429, by limit (rate, concurrency, batch_backlog, auth).",
            tag_keys=("limit",),
        )
        self._limit_tags = {limit: {"limit": limit} for limit in RATE_LIMITS}
        self._rejected = types.Counter(
            "exec_agent_rejected_total",
            description=(
                "Requests refused, by reason (overloaded, unavailable, policy, unauthorized, "
                "invalid)."
            ),
            tag_keys=("reason",),
        )
        self._reason_tags = {
            reason: {"reason": reason} for reason in sorted(set(REJECTION_REASONS.values()))
        }
        for counter, tag_sets in (
            (self._rate_limited, self._limit_tags),
            (self._rejected, self._reason_tags),
        ):
            for tags in tag_sets.values():
                zero_counter(counter, tags)
        self._db_retries = types.Counter(
            "exec_agent_db_write_retries_total",
            description="Result writes tried again after the database failed them.",
        )
        zero_counter(self._db_retries)
        self._sessions_created = types.Counter(
            "exec_agent_sessions_created_total",
            description="Sessions placed on a session host and stored.",
        )
        zero_counter(self._sessions_created)
        self._sessions_ended = types.Counter(
            "exec_agent_sessions_ended_total",
            description="Sessions ended, by reason (idle, ttl, deleted, exited, lost, ...).",
            tag_keys=("reason",),
        )
        self._end_tags = {reason: {"reason": reason} for reason in SESSION_END_REASONS}
        for tags in self._end_tags.values():
            zero_counter(self._sessions_ended, tags)
        self._streamed = types.Counter(
            "exec_agent_streamed_executions_total",
            description="Streamed executions (Server-Sent Events, WebSocket) stored.",
        )
        zero_counter(self._streamed)
        self._stream_dropped = types.Counter(
            "exec_agent_stream_dropped_bytes_total",
            description="Output bytes left out of streams whose client could not keep up.",
        )
        zero_counter(self._stream_dropped)

    def execution_stored(self, record: ExecutionRecord) -> None:
        tags = self._execution_tags.get((record.status.value, record.cached))
        if tags is not None:
            self._executions.inc(tags=tags)
        if record.stream_dropped_bytes is not None:  # streamed
            self._streamed.inc()
            if record.stream_dropped_bytes > 0:
                self._stream_dropped.inc(record.stream_dropped_bytes)

    def run_started(self) -> None:
        self._running += 1
        self._active.set(self._running)

    def run_ended(self) -> None:
        self._running -= 1
        self._active.set(self._running)

    def rate_limited(self, limit: str) -> None:
        self._rate_limited.inc(tags=self._limit_tags[limit])

    def rejected(self, reason: str) -> None:
        self._rejected.inc(tags=self._reason_tags[reason])

    def db_write_retry(self) -> None:
        self._db_retries.inc()

    def session_created(self) -> None:
        self._sessions_created.inc()

    def session_ended(self, reason: str) -> None:
        tags = self._end_tags.get(reason)
        if tags is None:  # a reason newer than this list: counted all the same
            tags = self._end_tags[reason] = {"reason": reason}
        self._sessions_ended.inc(tags=tags)

    def request(self, route: str, method: str, status_code: int, seconds: float) -> None:
        key = (route, method, status_code)
        tags = self._request_tags.get(key)
        if tags is None:
            tags = self._request_tags[key] = {
                "route": route,
                "method": method,
                "status_code": str(status_code),
            }
        self._requests.observe(seconds, tags=tags)


@functools.cache
def _ray_ingress_metrics() -> IngressMetrics:
    return _RayIngressMetrics()


def ingress_metrics() -> IngressMetrics:
    """This process's ingress metrics: Ray's once Ray is connected, else :data:`NO_METRICS`."""
    return _ray_ingress_metrics() if ray_connected() else NO_METRICS


class RequestMetricsMiddleware:
    """Pure ASGI: each HTTP request's duration by route template, method and status code, and
    each refusal by reason (read from the error answer's code). The outermost of the app's own
    middleware, so that the edge's refusals and last-resort 500s are measured too."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # for a request answered before routing named its route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        inspect = False

        async def send_observed(message: Message) -> None:
            nonlocal status, inspect
            if message["type"] == "http.response.start":
                status = message["status"]
                inspect = status in _REJECTION_STATUSES
            elif inspect and message["type"] == "http.response.body":
                inspect = False
                reason = rejection_reason(message.get("body", b""))
                if reason is not None:
                    self.metrics.rejected(reason)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            status = status or 500
            raise
        finally:
            if status:  # none: the client left before an answer began
                seconds = time.perf_counter() - started
                route = route_template(scope, self.routes)
                method = scope["method"]
                if method not in _METHODS:
                    method = OTHER_METHOD  # the client's word: keep the label's values few
                self.metrics.request(route, method, status, seconds)
