"""Session hosts' metrics (Prometheus through Ray, as ``ray_exec_agent_...``)::

    exec_agent_sessions_active{host}    gauge: sessions a host holds now (sum: the cluster's)

The service counts sessions created and ended (by reason) where their records change.
"""

from __future__ import annotations

from typing import Any

from executors._metrics import KeptGauge, metric_types, ray_connected

__all__ = ["SessionMetrics", "ray_session_metrics", "session_metrics"]


class SessionMetrics:
    """A host's gauge; records nothing without Ray (``gauge`` None)."""

    def __init__(self, gauge: KeptGauge | None) -> None:
        self._gauge = gauge

    def active(self, host: str, sessions: int) -> None:
        if self._gauge is not None:
            self._gauge.set(float(sessions), {"host": host}, key=host)


def session_metrics() -> SessionMetrics:
    """The host's metrics: Ray's when this process is connected to Ray, else none."""
    return ray_session_metrics() if ray_connected() else SessionMetrics(None)


def ray_session_metrics() -> SessionMetrics:
    """The host's metrics on Ray's metric types."""
    types: Any = metric_types()
    gauge = types.Gauge(
        "exec_agent_sessions_active",
        description="Sessions a session host holds now.",
        tag_keys=("host",),
    )
    return SessionMetrics(KeptGauge(gauge))
