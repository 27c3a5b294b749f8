"""The Redis backend: one state for every replica, each decision one atomic script call."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from serve_app.ratelimit import _lua
from serve_app.ratelimit._gcra import PERIOD_US, decision
from serve_app.ratelimit._guard import DEFAULT_TIMEOUT_S, RedisStore, StoreUnavailableError
from serve_app.ratelimit._memory import DEFAULT_LEASE_TTL_S
from serve_app.ratelimit._types import (
    US_PER_S,
    ConcurrencyDecision,
    Lease,
    LimiterHealth,
    RateDecision,
    Reason,
)
from serve_app.ratelimit._validate import positive

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "exec-agent:limits:"


class RedisLimiter(RedisStore):
    """Rate and concurrency limits in Redis, shared by all replicas.

    Keys are ``{key_prefix}rate:{key}`` (a GCRA TAT) and ``{key_prefix}lease:{key}`` (a sorted
    set of lease ids scored by expiry); both expire once their state no longer matters. When
    Redis is unreachable (error or ``timeout_s``), decisions follow the policy: allowed with
    ``Reason.FAIL_OPEN`` by default, refused with ``Reason.UNAVAILABLE`` if ``fail_closed``;
    :class:`~serve_app.ratelimit.StoreGuard` retries after a back-off, so the limiter
    recovers by itself. ``clock`` (seconds) replaces Redis' ``TIME`` in tests.
    """

    backend = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        fail_closed: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            client,
            name="Redis",
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
        )
        self.fail_closed = fail_closed
        self._lease_ttl_s = positive("lease_ttl_s", lease_ttl_s)
        self._prefix = key_prefix
        self._clock = clock
        self._gcra = client.register_script(_lua.GCRA)
        self._acquire = client.register_script(_lua.ACQUIRE)
        self._renew = client.register_script(_lua.RENEW)
        self._in_flight = client.register_script(_lua.IN_FLIGHT)

    async def hit(
        self, key: str, limit_per_minute: int, *, cost: int = 1, dry_run: bool = False
    ) -> RateDecision:
        positive("limit_per_minute", limit_per_minute)
        positive("cost", cost)
        try:
            reply = await self._eval(
                self._gcra,
                self._key("rate", key),
                limit_per_minute,
                PERIOD_US,
                cost,
                int(dry_run),
            )
        except StoreUnavailableError as exc:
            if self.fail_closed:
                return RateDecision(Reason.UNAVAILABLE, limit_per_minute, 0, 0.0, exc.retry_after_s)
            return RateDecision(Reason.FAIL_OPEN, limit_per_minute, limit_per_minute, 0.0, None)
        allowed, remaining, reset_after_us, retry_after_us = (int(value) for value in reply)
        return decision(limit_per_minute, allowed == 1, remaining, reset_after_us, retry_after_us)

    async def acquire(
        self, key: str, cap: int, *, ttl_s: float | None = None
    ) -> ConcurrencyDecision:
        positive("cap", cap)
        lease = Lease(key, uuid.uuid4().hex)
        ttl_us = self._ttl_us(ttl_s)
        try:
            acquired, held = await self._eval(
                self._acquire, self._key("lease", key), cap, lease.lease_id, ttl_us
            )
        except StoreUnavailableError as exc:
            if self.fail_closed:
                return ConcurrencyDecision(Reason.UNAVAILABLE, cap, None, None, exc.retry_after_s)
            return ConcurrencyDecision(
                Reason.FAIL_OPEN, cap, None, Lease(key, lease.lease_id, False)
            )
        if int(acquired) != 1:
            return ConcurrencyDecision(Reason.LIMITED, cap, int(held))
        return ConcurrencyDecision(Reason.OK, cap, int(held), lease)

    async def renew(self, lease: Lease, *, ttl_s: float | None = None) -> bool:
        """Also False when Redis is unreachable: the lease may then expire on time."""
        if not lease.stored:
            return False
        key, ttl_us = self._key("lease", lease.key), self._ttl_us(ttl_s)
        try:
            return int(await self._eval(self._renew, key, lease.lease_id, ttl_us)) == 1
        except StoreUnavailableError:
            return False

    async def release(self, lease: Lease) -> None:
        """If Redis is unreachable the lease is left to expire (``lease_ttl_s``)."""
        if not lease.stored:
            return
        key = self._key("lease", lease.key)
        try:
            await self._guard.call(lambda: self._client.zrem(key, lease.lease_id))
        except StoreUnavailableError:
            logger.info("lease not released (Redis unreachable); it expires by itself")

    async def in_flight(self, key: str) -> int:
        """Raises :class:`StoreUnavailableError` when Redis is unreachable."""
        return int(await self._eval(self._in_flight, self._key("lease", key)))

    async def check(self) -> LimiterHealth:
        try:
            rtt_s = await self._guard.probe(self._client.ping)
        except StoreUnavailableError:
            return LimiterHealth(
                ok=False,
                backend="redis",
                fail_closed=self.fail_closed,
                down_for_s=self._guard.down_for_s,
                error=self._guard.last_error,
            )
        return LimiterHealth(
            ok=True, backend="redis", fail_closed=self.fail_closed, rtt_ms=rtt_s * 1000
        )

    async def _eval(self, script: AsyncScript, key: str, *args: int | str) -> Any:
        """Run a script on one key, through the guard; the time is always the last argument."""
        return await self._guard.call(lambda: script([key], [*args, self._now()]))

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def _now(self) -> str:
        """The time to pass the scripts: empty for Redis' own clock."""
        return "" if self._clock is None else str(round(self._clock() * US_PER_S))

    def _ttl_us(self, ttl_s: float | None) -> int:
        return round(positive("ttl_s", self._lease_ttl_s if ttl_s is None else ttl_s) * US_PER_S)
