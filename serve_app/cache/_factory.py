"""Choosing the backend from the settings."""

from __future__ import annotations

from serve_app.cache._memory import MemoryResultCache
from serve_app.cache._redis import RedisResultCache
from serve_app.cache._types import ResultCache
from serve_app.settings import Settings


def build_result_cache(settings: Settings) -> ResultCache:
    """Redis (shared by all replicas) when ``REDIS_URL`` is set, else this process's memory.

    ``RESULT_CACHE_TTL_S`` and ``RESULT_CACHE_MAX_RECORD_BYTES`` apply to both;
    ``RESULT_CACHE_MAX_ENTRIES`` bounds the in-process LRU (Redis is bounded by the TTL and
    its own ``maxmemory``); ``REDIS_TIMEOUT_S`` bounds each Redis call.
    """
    if settings.redis_url is None:
        return MemoryResultCache(
            ttl_s=settings.result_cache_ttl_s,
            max_entries=settings.result_cache_max_entries,
            max_record_bytes=settings.result_cache_max_record_bytes,
        )
    return RedisResultCache.from_url(
        settings.redis_url,
        ttl_s=settings.result_cache_ttl_s,
        max_record_bytes=settings.result_cache_max_record_bytes,
        timeout_s=settings.redis_timeout_s,
    )
