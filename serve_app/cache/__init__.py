"""Reuse of finished results for requests that ask for it (``"cache": true``, API.md).

An entry is keyed by the API key's id and :func:`cache_fingerprint` of the request (code,
stdin, files, tests, effective limits), so one key never sees another's results. It holds the
original execution's id and record; the HTTP layer answers a hit with a new execution marked
``cached: true, cached_from: <that id>``. Entries expire ``RESULT_CACHE_TTL_S`` after they are
stored. ``internal_error`` results (the service's failure, not the program's), copies of cached
results and records over ``RESULT_CACHE_MAX_RECORD_BYTES`` are never stored.

One interface (:class:`ResultCache`), two backends that the same test suite runs against:

- :class:`MemoryResultCache`, an LRU in this process, for the embedded single-process mode;
- :class:`RedisResultCache`, shared by every replica.

A cache must never fail or slow a request: when Redis is unreachable, lookups miss and stores
are dropped, with the rate limiter's timeout and back-off (``serve_app.ratelimit._guard``).
"""

from serve_app.cache._factory import build_result_cache
from serve_app.cache._fingerprint import FINGERPRINT_VERSION, cache_fingerprint
from serve_app.cache._memory import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    MemoryResultCache,
)
from serve_app.cache._redis import RedisResultCache
from serve_app.cache._types import DEFAULT_KEY_PREFIX, CachedResult, ResultCache
from serve_app.ratelimit import DEFAULT_TIMEOUT_S

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_TIMEOUT_S",
    "FINGERPRINT_VERSION",
    "CachedResult",
    "MemoryResultCache",
    "RedisResultCache",
    "ResultCache",
    "build_result_cache",
    "cache_fingerprint",
]
