"""Choosing the backend from the settings."""

from __future__ import annotations

from serve_app.ratelimit._memory import DEFAULT_LEASE_TTL_S, MemoryLimiter
from serve_app.ratelimit._redis import DEFAULT_TIMEOUT_S, RedisLimiter
from serve_app.ratelimit._types import Limiter
from serve_app.settings import Settings


def build_rate_limiter(
    settings: Settings,
    *,
    fail_closed: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> Limiter:
    """Redis (shared by all replicas) when ``REDIS_URL`` is set, else this process's memory.

    ``fail_closed`` and ``timeout_s`` apply to Redis only: the in-memory limiter cannot fail.
    """
    if settings.redis_url is None:
        return MemoryLimiter(lease_ttl_s=lease_ttl_s)
    return RedisLimiter.from_url(
        settings.redis_url, fail_closed=fail_closed, timeout_s=timeout_s, lease_ttl_s=lease_ttl_s
    )
