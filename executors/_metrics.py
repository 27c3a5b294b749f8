"""The executor side's metrics: defined here only, exported by Ray in Prometheus format.

Each name is given to Ray as below; Ray's exporter adds its ``ray_`` namespace (hard-coded in
Ray 2.60), so Prometheus sees ``ray_exec_agent_...``::

    exec_agent_queue_wait_seconds            histogram: from the replica receiving a request to
                                             a job thread (one per slot) starting it
    exec_agent_execution_duration_seconds    histogram: records' wall_time_s (internal_error
                                             records, which ran nothing, are left out)
    exec_agent_execution_peak_memory_bytes   histogram: records' peak_memory_bytes (same)
    exec_agent_sandbox_slots{state}          gauge: busy and free slots of the pool
    exec_agent_queue_depth                   gauge: requests in the replica waiting for a slot
    exec_agent_sandbox_start_failures_total  counter: a slot or a spare job sandbox that failed
                                             to start

Inside a Serve replica they are ``ray.serve.metrics`` (tagged ``deployment``, ``replica``,
``application``), elsewhere in Ray ``ray.util.metrics``; :func:`executor_metrics` gives
:data:`NO_METRICS` (which records nothing) when Ray is not connected, so the engine, its tests and
``exec-agent run`` never need Ray. Ray forgets a gauge series that was not set for two export
intervals: :class:`KeptGauge` sets its last values again every ``GAUGE_REFRESH_S``.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

from executors._models import ExecutionRecord, ExecutionStatus

__all__ = [
    "DURATION_BUCKETS_S",
    "NO_METRICS",
    "ExecutorMetrics",
    "KeptGauge",
    "executor_metrics",
    "metric_types",
    "ray_connected",
    "zero_counter",
]

MIB = 1024 * 1024
DURATION_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
QUEUE_WAIT_BUCKETS_S = [0.001, 0.0025, *DURATION_BUCKETS_S]
MEMORY_BUCKETS_BYTES = [float(MIB << shift) for shift in range(13)]  # 1 MiB .. 4 GiB
GAUGE_REFRESH_S = 5.0
"""Below Ray's gauge lifetime without a new value (2 x ``metrics_report_interval_ms``, 20 s)."""


def ray_connected() -> bool:
    """Whether this process is connected to Ray (without importing Ray when it is not loaded)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def metric_types() -> Any:
    """``ray.serve.metrics`` inside a Serve replica (Serve's tags added), else ``ray.util.metrics``."""
    context = sys.modules.get("ray.serve.context")
    if context is not None and context._get_internal_replica_context() is not None:
        from ray.serve import metrics as serve_metrics

        return serve_metrics
    from ray.util import metrics

    return metrics


def zero_counter(counter: Any, tags: dict[str, str] | None = None) -> None:
    """Export ``counter`` (for ``tags``) at 0 before its first event, so that ``increase()`` and
    alerts see that first event. Ray's ``inc`` refuses 0: this is its recording step."""
    record = getattr(counter, "_record", None)
    if record is not None:
        record(0, tags)


class _Refresher:
    """One daemon thread per process that sets every kept gauge again, now and then."""

    def __init__(self) -> None:
        self._gauges: list[KeptGauge] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, gauge: KeptGauge) -> None:
        with self._lock:
            self._gauges.append(gauge)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="metrics-gauges", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(GAUGE_REFRESH_S)
            with self._lock:
                gauges = list(self._gauges)
            for gauge in gauges:
                gauge.refresh()


_refresher = _Refresher()


class KeptGauge:
    """A Ray gauge whose last value per tag set is set again every ``GAUGE_REFRESH_S``."""

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self._values: dict[str | None, tuple[float, dict[str, str] | None]] = {}
        self._lock = threading.Lock()  # a refresh never sets a value older than the last one
        _refresher.add(self)

    def set(self, value: float, tags: dict[str, str] | None = None, key: str | None = None) -> None:
        """Set the series ``key`` names (one per tag set: pass the same ``key`` with ``tags``)."""
        with self._lock:
            self._values[key] = (value, tags)
            self._gauge.set(value, tags=tags)

    def refresh(self) -> None:
        with self._lock:
            for value, tags in self._values.values():
                self._gauge.set(value, tags=tags)


class ExecutorMetrics:
    """What the engine reports about its work. This base reports nothing (outside Ray)."""

    def received(self) -> float:
        """A request reached the replica; the time to give :meth:`started` or :meth:`dropped`."""
        return 0.0

    def started(self, received_at: float) -> None:
        """The request ``received`` at ``received_at`` left the queue for a slot."""

    def dropped(self) -> None:
        """A received request left the queue without running (the executor shut down)."""

    def finished(self, record: ExecutionRecord) -> None:
        """A run ended with ``record``."""

    def slots(self, busy: int, free: int) -> None:
        """The pool's slots now."""

    def start_failed(self) -> None:
        """A slot or a spare job sandbox failed to start."""


NO_METRICS = ExecutorMetrics()


class _RayExecutorMetrics(ExecutorMetrics):
    def __init__(self) -> None:
        types = metric_types()
        self._queue_wait = types.Histogram(
            "exec_agent_queue_wait_seconds",
            description="Seconds from an executor replica receiving a request to a slot starting it.",
            boundaries=QUEUE_WAIT_BUCKETS_S,
        )
        self._duration = types.Histogram(
            "exec_agent_execution_duration_seconds",
            description="Wall-clock seconds of executions (the record's wall_time_s).",
            boundaries=DURATION_BUCKETS_S,
        )
        self._memory = types.Histogram(
            "exec_agent_execution_peak_memory_bytes",
            description="Peak memory of executions, bytes (the record's peak_memory_bytes).",
            boundaries=MEMORY_BUCKETS_BYTES,
        )
        self._slots = KeptGauge(
            types.Gauge(
                "exec_agent_sandbox_slots",
                description="Sandbox slots of an executor replica, by state (busy, free).",
                tag_keys=("state",),
            )
        )
        self._queue_depth = KeptGauge(
            types.Gauge(
                "exec_agent_queue_depth",
                description="Requests waiting in an executor replica for a sandbox slot.",
            )
        )
        self._start_failures = types.Counter(
            "exec_agent_sandbox_start_failures_total",
            description="Sandbox slots or spare job sandboxes that failed to start.",
        )
        zero_counter(self._start_failures)
        self._busy_tags = {"state": "busy"}
        self._free_tags = {"state": "free"}
        self._lock = threading.Lock()
        self._waiting = 0
        self._queue_depth.set(0)

    def received(self) -> float:
        with self._lock:
            self._waiting += 1
            self._queue_depth.set(self._waiting)
        return time.perf_counter()

    def started(self, received_at: float) -> None:
        self._queue_wait.observe(max(0.0, time.perf_counter() - received_at))
        self._leave_queue()

    def dropped(self) -> None:
        self._leave_queue()

    def _leave_queue(self) -> None:
        with self._lock:
            self._waiting -= 1
            self._queue_depth.set(self._waiting)

    def finished(self, record: ExecutionRecord) -> None:
        if record.status is ExecutionStatus.INTERNAL_ERROR:
            return
        if record.wall_time_s is not None:
            self._duration.observe(record.wall_time_s)
        if record.peak_memory_bytes is not None:
            self._memory.observe(record.peak_memory_bytes)

    def slots(self, busy: int, free: int) -> None:
        self._slots.set(busy, self._busy_tags, "busy")
        self._slots.set(free, self._free_tags, "free")

    def start_failed(self) -> None:
        self._start_failures.inc()


@functools.cache
def _ray_executor_metrics() -> ExecutorMetrics:
    return _RayExecutorMetrics()


def executor_metrics() -> ExecutorMetrics:
    """This process's executor metrics: Ray's once Ray is connected, else :data:`NO_METRICS`."""
    return _ray_executor_metrics() if ray_connected() else NO_METRICS
