"""The Redis backend: one cache for every replica, entries expiring by themselves."""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from redis.asyncio import Redis

from executors import ExecutionRecord
from serve_app.cache import _codec
from serve_app.cache._memory import DEFAULT_MAX_RECORD_BYTES
from serve_app.cache._types import DEFAULT_KEY_PREFIX, CachedResult
from serve_app.ratelimit import DEFAULT_TIMEOUT_S, RedisStore, StoreUnavailableError, positive

logger = logging.getLogger(__name__)

MS_PER_S = 1000


class RedisResultCache(RedisStore):
    """Entries in Redis under ``{key_prefix}{key_id}:{fingerprint}``, set with an expiry.

    A cache must never be why a request fails or waits: every call is bounded by
    ``timeout_s``, and when Redis is unreachable a lookup is a miss and a store is dropped
    (logged). The rate limiter's :class:`~serve_app.ratelimit.StoreGuard` provides the
    timeout and the back-off, so during an outage calls fail at once instead of each waiting
    out a timeout, and the cache heals by itself once Redis answers again.
    """

    backend: Literal["memory", "redis"] = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        ttl_s: float,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        super().__init__(
            client,
            name="Redis (result cache)",
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
        )
        # Expiries in milliseconds: Redis' EX would round a fractional TTL.
        self._ttl_ms = max(1, round(positive("ttl_s", ttl_s) * MS_PER_S))
        self._max_record_bytes = positive("max_record_bytes", max_record_bytes)
        self._prefix = key_prefix

    async def get(self, key_id: int, fingerprint: str) -> CachedResult | None:
        key = self._key(key_id, fingerprint)
        try:
            data: bytes | str | None = await self._guard.call(lambda: self._client.get(key))
        except StoreUnavailableError:
            logger.debug("result cache lookup skipped: Redis unreachable")
            return None
        return None if data is None else _codec.decode(data)

    async def put(
        self, key_id: int, fingerprint: str, execution_id: uuid.UUID, record: ExecutionRecord
    ) -> None:
        data = _codec.encode(execution_id, record, self._max_record_bytes)
        if data is None:
            return
        key = self._key(key_id, fingerprint)
        try:
            await self._guard.call(lambda: self._client.set(key, data, px=self._ttl_ms))
        except StoreUnavailableError:
            logger.debug("result of %s not cached: Redis unreachable", execution_id)

    def _key(self, key_id: int, fingerprint: str) -> str:
        return f"{self._prefix}{key_id}:{fingerprint}"
