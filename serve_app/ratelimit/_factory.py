"""Choosing the backend from the settings."""

from __future__ import annotations

from serve_app.ratelimit._memory import MemoryLimiter
from serve_app.ratelimit._redis import RedisLimiter
from serve_app.ratelimit._types import Limiter
from serve_app.settings import Settings


def build_rate_limiter(settings: Settings) -> Limiter:
    """Redis (shared by all replicas) when ``REDIS_URL`` is set, else this process's memory.

    ``RATE_LIMIT_FAIL_CLOSED`` and ``REDIS_TIMEOUT_S`` apply to Redis only: the in-memory
    limiter cannot fail.
    """
    if settings.redis_url is None:
        return MemoryLimiter(lease_ttl_s=settings.concurrency_lease_ttl_s)
    return RedisLimiter.from_url(
        settings.redis_url,
        fail_closed=settings.rate_limit_fail_closed,
        timeout_s=settings.redis_timeout_s,
        lease_ttl_s=settings.concurrency_lease_ttl_s,
    )
