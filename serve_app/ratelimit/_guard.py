"""Calls to a store that may be down: bounded in time, skipped while it is known down.

The request path must neither hang on nor hammer a dead Redis. Every call runs under a short
timeout. After a failure the store is *down*: calls fail at once, without touching it, until
a back-off passes; then one call (the probe) goes through while the others keep failing fast.
A successful probe ends the outage; a failed one doubles the back-off, up to a ceiling. A
readiness check (:meth:`StoreGuard.probe`) always tries, so it can end an outage sooner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Raised here, defined in the package's error tree (and still importable from here).
from serve_app.errors import StoreUnavailableError
from serve_app.ratelimit._types import ClosesOnExit
from serve_app.ratelimit._validate import positive

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RedisStore",
    "StoreGuard",
    "StoreUnavailableError",
    "redis_for_guard",
]

DEFAULT_TIMEOUT_S = 0.25
"""How long a Redis call on the request path may take before the store counts as down."""

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class StoreGuard:
    """Timeout and back-off around one store's calls (see the module docstring).

    ``errors`` are the exceptions that mean "unreachable"; anything else propagates.
    """

    def __init__(
        self,
        *,
        name: str,
        errors: tuple[type[Exception], ...],
        timeout_s: float,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.timeout_s = positive("timeout_s", timeout_s)
        self._errors: tuple[type[Exception], ...] = (*errors, TimeoutError)
        self._initial_backoff_s = positive("backoff_s", backoff_s)
        self._max_backoff_s = max(backoff_s, max_backoff_s)
        self._clock = clock
        self._backoff_s = backoff_s
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._probing = False
        self.last_error: str | None = None
        """The class name of the last failure (never its message, which may name hosts)."""

    @property
    def healthy(self) -> bool:
        return self._down_since is None

    @property
    def down_for_s(self) -> float | None:
        return None if self._down_since is None else self._clock() - self._down_since

    async def call(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` unless the store is in back-off; raise StoreUnavailableError."""
        probe = self._down_since is not None
        if probe:
            wait_s = self._retry_at - self._clock()
            if wait_s > 0 or self._probing:
                raise StoreUnavailableError(max(wait_s, self._initial_backoff_s))
            self._probing = True
        try:
            return await self._attempt(operation, probe=probe)
        finally:
            if probe:
                self._probing = False

    async def probe(self, operation: Callable[[], Awaitable[object]]) -> float:
        """Run ``operation`` now, back-off or not; its round-trip time in seconds."""
        started = time.perf_counter()
        await self._attempt(operation, probe=not self.healthy)
        return time.perf_counter() - started

    async def _attempt(self, operation: Callable[[], Awaitable[_T]], *, probe: bool) -> _T:
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await operation()
        except self._errors as exc:
            self._failed(exc, probe=probe)
            raise StoreUnavailableError(self._backoff_s) from exc
        self._succeeded()
        return result

    def _failed(self, exc: BaseException, *, probe: bool) -> None:
        now = self._clock()
        self.last_error = type(exc).__name__
        if self._down_since is None:
            logger.warning("%s unreachable (%s); limiter degraded", self.name, self.last_error)
            self._down_since = now
            self._backoff_s = self._initial_backoff_s
        elif probe:
            # Only the probe grows the back-off: calls that were already in flight when the
            # store went down say nothing new about it.
            self._backoff_s = min(2 * self._backoff_s, self._max_backoff_s)
        self._retry_at = now + self._backoff_s

    def _succeeded(self) -> None:
        if self._down_since is not None:
            outage_s = self._clock() - self._down_since
            logger.warning("%s reachable again after %.1f s; limiter healthy", self.name, outage_s)
            self._down_since = None
            self._backoff_s = self._initial_backoff_s


def redis_for_guard(url: str, timeout_s: float) -> Redis:
    """A Redis client with its own connection pool for use behind a :class:`StoreGuard`: no
    client-side retries, ``timeout_s`` on connecting and on every reply (the guard, not
    redis-py, decides when to try again)."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


class RedisStore(ClosesOnExit):
    """A backend whose state is in Redis, every call through its :class:`StoreGuard`.

    Subclasses (the limiter, the result cache) call ``self._guard.call(...)`` with
    ``self._client``; building one from a URL gives it a connection pool of its own.
    """

    def __init__(
        self,
        client: Redis,
        *,
        name: str,
        timeout_s: float,
        backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self._client = client
        self._guard = StoreGuard(
            name=name,
            errors=(RedisError, OSError),
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
        )

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, **options: Any) -> Self:
        """A backend with its own connection pool (:func:`redis_for_guard`)."""
        return cls(redis_for_guard(url, timeout_s), timeout_s=timeout_s, **options)

    @property
    def healthy(self) -> bool:
        return self._guard.healthy

    async def aclose(self) -> None:
        await self._client.aclose()
