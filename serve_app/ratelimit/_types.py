"""What the limiters answer, and the interfaces every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Literal, Protocol, Self

US_PER_S = 1_000_000


class Reason(StrEnum):
    """Why a limiter allowed or refused; the HTTP edge maps it to a status."""

    OK = "ok"
    """The shared state was consulted and the request is within the limit."""
    LIMITED = "limited"
    """The shared state was consulted and the request is over the limit (HTTP 429)."""
    FAIL_OPEN = "fail_open"
    """The store was unreachable; allowed unchecked by the fail-open policy (readiness degraded)."""
    UNAVAILABLE = "unavailable"
    """The store was unreachable; refused by the fail-closed policy (HTTP 503, not 429)."""

    @property
    def allowed(self) -> bool:
        return self in (Reason.OK, Reason.FAIL_OPEN)

    @property
    def degraded(self) -> bool:
        """Whether the answer is the failure policy's rather than the store's."""
        return self in (Reason.FAIL_OPEN, Reason.UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One hit's outcome, with what the ``RateLimit-*`` and ``Retry-After`` headers need.

    ``reset_after_s``: seconds until the key's whole allowance is available again.
    ``retry_after_s``: seconds until the next hit can be allowed; ``None`` when allowed.
    When the store was unreachable (``reason.degraded``), ``remaining`` and ``reset_after_s``
    are unknown and reported as a full allowance.
    """

    reason: Reason
    limit: int
    remaining: int
    reset_after_s: float
    retry_after_s: float | None

    @property
    def allowed(self) -> bool:
        return self.reason.allowed

    @property
    def degraded(self) -> bool:
        return self.reason.degraded


@dataclass(frozen=True, slots=True)
class Lease:
    """One execution's slot under a key's concurrency cap; give it back with ``release``."""

    key: str
    lease_id: str
    stored: bool = True
    """False for a lease granted by the fail-open policy: there is nothing to release."""


@dataclass(frozen=True, slots=True)
class ConcurrencyDecision:
    """The outcome of ``acquire``: a lease when allowed.

    ``in_flight`` counts the key's live leases after this call (``None`` when unknown because
    the store was unreachable); ``retry_after_s`` is set only for ``Reason.UNAVAILABLE``.
    """

    reason: Reason
    cap: int
    in_flight: int | None
    lease: Lease | None = None
    retry_after_s: float | None = None

    @property
    def allowed(self) -> bool:
        return self.reason.allowed


@dataclass(frozen=True, slots=True)
class LimiterHealth:
    """What ``/health/ready`` reports about the limiter (``as_dict`` for its ``checks``)."""

    ok: bool
    backend: Literal["memory", "redis"]
    fail_closed: bool
    rtt_ms: float | None = None
    down_for_s: float | None = None
    error: str | None = None
    """The last failure's exception class, never its message (it may name an address)."""

    def as_dict(self) -> dict[str, object]:
        policy = "fail_closed" if self.fail_closed else "fail_open"
        result: dict[str, object] = {"ok": self.ok, "backend": self.backend, "policy": policy}
        extra = {"rtt_ms": self.rtt_ms, "down_for_s": self.down_for_s, "error": self.error}
        result.update({name: value for name, value in extra.items() if value is not None})
        return result


class ClosesOnExit:
    """``async with`` support for the backends: leaving the block calls ``aclose``."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncResource(Protocol):
    """A backend holding connections: an async context manager that ``aclose`` releases."""

    async def aclose(self) -> None:
        """Release connections; the backend is unusable afterwards."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class RateLimiter(Protocol):
    """Per-key request rate: ``limit_per_minute`` hits per rolling minute, bursts included."""

    async def hit(
        self, key: str, limit_per_minute: int, *, cost: int = 1, dry_run: bool = False
    ) -> RateDecision:
        """Count ``cost`` hits (one per execution) against ``key`` if they are within the
        limit (see ``_gcra.py`` for a cost over the limit); ``dry_run``: only say whether they
        would be, charging nothing."""
        ...


class ConcurrencyLimiter(Protocol):
    """Per-key cap on executions in flight, held as leases that expire on their own."""

    async def acquire(
        self, key: str, cap: int, *, ttl_s: float | None = None
    ) -> ConcurrencyDecision:
        """Take a slot if fewer than ``cap`` live leases exist; the lease expires after ``ttl_s``."""
        ...

    async def renew(self, lease: Lease, *, ttl_s: float | None = None) -> bool:
        """Push a live lease's expiry to ``ttl_s`` from now; False if it is already gone."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the slot back; releasing twice or after expiry is harmless."""
        ...

    async def in_flight(self, key: str) -> int:
        """The key's live leases."""
        ...


class Limiter(RateLimiter, ConcurrencyLimiter, AsyncResource, Protocol):
    """Both limiters over one store, with its health; an async context manager."""

    @property
    def healthy(self) -> bool:
        """False while the store is considered unreachable (decisions follow the policy)."""
        ...

    async def check(self) -> LimiterHealth:
        """Round-trip to the store now (readiness); a success ends a degraded period."""
        ...
