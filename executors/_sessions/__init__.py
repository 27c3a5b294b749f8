"""Sessions: live interpreters that keep their state from one call to the next, held by session
hosts (:class:`SessionHost`; on Ray, detached actors reached through :class:`SessionHosts`)."""

from executors._sessions._client import (
    HostSummary,
    SessionCallResult,
    SessionHostOptions,
    SessionHosts,
    SessionHostsOverview,
)
from executors._sessions._host import SessionHost
from executors._sessions._models import (
    SESSION_WIDE_LIMITS,
    SessionSpec,
    SessionState,
    SessionStatus,
)

__all__ = [
    "SESSION_WIDE_LIMITS",
    "HostSummary",
    "SessionCallResult",
    "SessionHost",
    "SessionHostOptions",
    "SessionHosts",
    "SessionHostsOverview",
    "SessionSpec",
    "SessionState",
    "SessionStatus",
]
