"""Per-key limits for the API: a request rate and a cap on executions in flight.

One interface (:class:`Limiter`: :class:`RateLimiter` and :class:`ConcurrencyLimiter`) with
two backends that the same test suite runs against:

- :class:`MemoryLimiter`, for the embedded single-process mode;
- :class:`RedisLimiter`, shared by every replica: each decision is one atomic Lua script.

Rates use GCRA (see ``_gcra.py``): ``limit`` hits per rolling minute with a burst of ``limit``,
then one hit per ``60 / limit`` seconds; O(1) state per key. Concurrency uses leases: a key's
in-flight executions are lease ids with an expiry (a Redis sorted set scored by expiry, cleaned
on every acquire), so slots held by a replica that died come back after ``lease_ttl_s``.

When Redis is unreachable, decisions follow a policy instead of failing the request: allowed
with :attr:`Reason.FAIL_OPEN` (default) or refused with :attr:`Reason.UNAVAILABLE` (fail
closed: HTTP 503, unlike :attr:`Reason.LIMITED`'s 429). Calls are bounded by a short timeout,
skipped during a back-off, and the limiter heals itself once Redis answers again
(``_guard.py``). ``healthy`` and ``check()`` feed readiness.

The guard (:class:`StoreGuard`, :func:`redis_for_guard`) and the small helpers
(:class:`ClosesOnExit`, :func:`positive`) serve the result cache too, which keeps its entries
in the same Redis under the same outage policy.
"""

from serve_app.ratelimit._factory import build_rate_limiter
from serve_app.ratelimit._gcra import emission_interval_us
from serve_app.ratelimit._guard import (
    DEFAULT_TIMEOUT_S,
    RedisStore,
    StoreGuard,
    StoreUnavailableError,
    redis_for_guard,
)
from serve_app.ratelimit._memory import DEFAULT_LEASE_TTL_S, MemoryLimiter
from serve_app.ratelimit._redis import DEFAULT_KEY_PREFIX, RedisLimiter
from serve_app.ratelimit._types import (
    AsyncResource,
    ClosesOnExit,
    ConcurrencyDecision,
    ConcurrencyLimiter,
    Lease,
    Limiter,
    LimiterHealth,
    RateDecision,
    RateLimiter,
    Reason,
)
from serve_app.ratelimit._validate import positive

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_LEASE_TTL_S",
    "DEFAULT_TIMEOUT_S",
    "AsyncResource",
    "ClosesOnExit",
    "ConcurrencyDecision",
    "ConcurrencyLimiter",
    "Lease",
    "Limiter",
    "LimiterHealth",
    "MemoryLimiter",
    "RateDecision",
    "RateLimiter",
    "Reason",
    "RedisLimiter",
    "RedisStore",
    "StoreGuard",
    "StoreUnavailableError",
    "build_rate_limiter",
    "emission_interval_us",
    "positive",
    "redis_for_guard",
]
