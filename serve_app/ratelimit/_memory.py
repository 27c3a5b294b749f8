"""The in-process backend, for the embedded single-process mode."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from serve_app.ratelimit._gcra import PERIOD_US, gcra
from serve_app.ratelimit._types import (
    US_PER_S,
    ClosesOnExit,
    ConcurrencyDecision,
    Lease,
    LimiterHealth,
    RateDecision,
    Reason,
)
from serve_app.ratelimit._validate import positive

DEFAULT_LEASE_TTL_S = 300.0


class MemoryLimiter(ClosesOnExit):
    """Rate and concurrency limits held in this process (not shared between replicas).

    Each operation runs without awaiting and under a lock, so it is atomic for asyncio tasks
    and threads alike. Memory stays bounded: at most once per period a sweep drops keys whose
    allowance is full again and leases that expired. ``clock`` (seconds, monotonic by default)
    is injectable for tests.
    """

    backend = "memory"

    def __init__(
        self,
        *,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease_ttl_us = _us(positive("lease_ttl_s", lease_ttl_s))
        self._clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}
        self._leases: dict[str, dict[str, int]] = {}
        self._next_sweep_us = self._now_us() + PERIOD_US

    @property
    def healthy(self) -> bool:
        return True

    @property
    def tracked_keys(self) -> int:
        """Keys holding state (rate or leases): what the sweep keeps bounded."""
        return len(self._tats) + len(self._leases)

    async def hit(
        self, key: str, limit_per_minute: int, *, cost: int = 1, dry_run: bool = False
    ) -> RateDecision:
        positive("limit_per_minute", limit_per_minute)
        positive("cost", cost)
        with self._lock:
            now = self._tick()
            new_tat, result = gcra(
                self._tats.get(key), now, limit_per_minute, cost, dry_run=dry_run
            )
            if new_tat is not None:
                self._tats[key] = new_tat
            return result

    async def acquire(
        self, key: str, cap: int, *, ttl_s: float | None = None
    ) -> ConcurrencyDecision:
        positive("cap", cap)
        ttl_us = self._ttl_us(ttl_s)
        with self._lock:
            now = self._tick()
            leases = self._live_leases(key, now)
            if len(leases) >= cap:
                return ConcurrencyDecision(Reason.LIMITED, cap, len(leases))
            lease = Lease(key, uuid.uuid4().hex)
            leases[lease.lease_id] = now + ttl_us
            self._leases[key] = leases
            return ConcurrencyDecision(Reason.OK, cap, len(leases), lease)

    async def renew(self, lease: Lease, *, ttl_s: float | None = None) -> bool:
        ttl_us = self._ttl_us(ttl_s)
        with self._lock:
            now = self._tick()
            leases = self._live_leases(lease.key, now)
            if lease.lease_id not in leases:
                return False
            leases[lease.lease_id] = now + ttl_us
            return True

    async def release(self, lease: Lease) -> None:
        with self._lock:
            leases = self._leases.get(lease.key, {})
            leases.pop(lease.lease_id, None)
            if not leases:
                self._leases.pop(lease.key, None)

    async def in_flight(self, key: str) -> int:
        with self._lock:
            return len(self._live_leases(key, self._tick()))

    async def check(self) -> LimiterHealth:
        return LimiterHealth(ok=True, backend="memory", fail_closed=False, rtt_ms=0.0)

    async def aclose(self) -> None:
        with self._lock:
            self._tats.clear()
            self._leases.clear()

    def _now_us(self) -> int:
        return _us(self._clock())

    def _ttl_us(self, ttl_s: float | None) -> int:
        return self._lease_ttl_us if ttl_s is None else _us(positive("ttl_s", ttl_s))

    def _tick(self) -> int:
        """The time now, after the periodic sweep if it is due (call with the lock held)."""
        now = self._now_us()
        if now >= self._next_sweep_us:
            self._sweep(now)
            self._next_sweep_us = now + PERIOD_US
        return now

    def _sweep(self, now: int) -> None:
        # A TAT in the past means a full allowance: the same as no entry at all.
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        for key in list(self._leases):
            if not self._live_leases(key, now):
                del self._leases[key]

    def _live_leases(self, key: str, now: int) -> dict[str, int]:
        """The key's unexpired leases (expired ones are dropped); a new dict if none."""
        leases = self._leases.get(key, {})
        for lease_id in [lid for lid, expires in leases.items() if expires <= now]:
            del leases[lease_id]
        return leases


def _us(seconds: float) -> int:
    return round(seconds * US_PER_S)
