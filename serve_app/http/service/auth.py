"""Authentication: the presented key checked against the database, with the replica's caches
of keys that worked and keys that failed, and the throttle of an address's failures.

A key that authenticated is trusted for ``AUTH_CACHE_TTL_S`` (revocation takes effect within
that); a key that failed is refused for ``AUTH_FAILED_CACHE_TTL_S`` without a database lookup.
An address past ``AUTH_FAILURES_PER_MINUTE`` failures is refused (429) before any lookup, but
keys that worked in the last ``AUTH_KNOWN_GOOD_S`` still pass. Every counted failure is audited.
Caches are found by the presented key's HMAC (the stored form), never by the key itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from cachetools import TTLCache

from serve_app.db import audit, keys
from serve_app.db.models import ApiKey
from serve_app.errors import RateLimitedError, UnauthorizedError
from serve_app.http._metrics import IngressMetrics
from serve_app.http.service.auditing import Auditor
from serve_app.http.service.transactions import Transact
from serve_app.ratelimit import Limiter, Reason
from serve_app.settings import Settings

__all__ = ["AUTH_CACHE_TTL_S", "Authenticator"]

AUTH_CACHE_TTL_S = 2.0
"""How long one replica trusts a key it authenticated (issue 3: "cache at most a few
seconds"): a revoked key, or a key's new limits, take effect within this long."""
AUTH_CACHE_MAX_ENTRIES = 1024
"""Keys each cache holds at most (many keys at once is not the hot path)."""
AUTH_FAILED_CACHE_TTL_S = 30.0
"""How long one replica refuses a key that failed without asking the database again (issue 10
item 4). Keys are random and shown only once created, and a revoked key stays revoked: a key
that failed cannot start to work meanwhile."""
AUTH_KNOWN_GOOD_S = 600.0
"""How long a key that authenticated passes an address's throttle (it is still looked up)."""
AUTH_THROTTLE_PREFIX = "auth-address:"
"""The limiter key of a client address's failed authentications (apart from API keys' ids)."""
UNKNOWN_KEY = "unknown or revoked API key"
TOO_MANY_FAILURES = "too many failed authentications from this address; retry later"

_V = TypeVar("_V")


class Authenticator:
    """One replica's authentication of presented keys."""

    def __init__(
        self,
        settings: Settings,
        transact: Transact,
        limiter: Limiter,
        audit: Auditor,
        metrics: IngressMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._transact = transact
        self._limiter = limiter
        self._audit = audit
        self._metrics = metrics
        self.clock = clock  # replaceable: the caches read it through _now
        self.valid: TTLCache[str, ApiKey] = self._cache(AUTH_CACHE_TTL_S)
        self.failed: TTLCache[str, bool] = self._cache(AUTH_FAILED_CACHE_TTL_S)
        self.known_good: TTLCache[str, bool] = self._cache(AUTH_KNOWN_GOOD_S)

    def _now(self) -> float:
        return self.clock()

    def _cache(self, ttl: float) -> TTLCache[str, _V]:
        return TTLCache(maxsize=AUTH_CACHE_MAX_ENTRIES, ttl=ttl, timer=self._now)

    async def authenticate(self, presented: str | None, source_address: str | None) -> ApiKey:
        """The live key presented, or :class:`UnauthorizedError` (audited, without the key).

        An address past ``AUTH_FAILURES_PER_MINUTE`` failures gets :class:`RateLimitedError`
        instead, before any key is looked up; a key that failed is refused for
        ``AUTH_FAILED_CACHE_TTL_S`` without a database round trip."""
        cache_key = None
        if presented is not None and len(presented) == keys.KEY_CHARS:
            cache_key = keys.hash_key(presented, self._settings.api_key_secret)
        if cache_key is not None:
            cached = self.valid.get(cache_key)
            if cached is not None:
                return cached
        if cache_key is None or cache_key not in self.known_good:
            # A key that worked lately is looked up even from a throttled address: clients
            # behind one NAT or proxy with an attacker keep working.
            await self._check_address(source_address)
        if not presented:
            await self._refuse(source_address, "missing", "an API key is required")
        if cache_key is None or cache_key in self.failed:
            # Malformed (no stored key has its shape), or failed a moment ago.
            await self._refuse(source_address, "unknown_or_revoked", UNKNOWN_KEY)
        secret = self._settings.api_key_secret
        row = await self._transact(lambda session: keys.authenticate(session, presented, secret))
        if row is None:
            self.failed[cache_key] = True
            await self._refuse(source_address, "unknown_or_revoked", UNKNOWN_KEY)
        self.valid[cache_key] = row
        self.known_good[cache_key] = True
        return row

    async def _check_address(self, source_address: str | None) -> None:
        """Raise :class:`RateLimitedError` if ``source_address`` used up its failures. Not
        audited: the failure that used them up was, and a write per refusal is what an
        attacker would want."""
        if source_address is None:
            return
        decision = await self._limiter.hit(
            AUTH_THROTTLE_PREFIX + source_address,
            self._settings.auth_failures_per_minute,
            dry_run=True,
        )
        if decision.reason is Reason.LIMITED:
            self._metrics.rate_limited("auth")
            raise RateLimitedError(decision.retry_after_s or 1.0, TOO_MANY_FAILURES)

    async def _refuse(self, source_address: str | None, reason: str, message: str) -> NoReturn:
        """Count a failed authentication against its address, audit it, and raise: 401, or
        429 when this failure is one too many for the address."""
        details: dict[str, Any] = {"reason": reason}
        refused = None
        if source_address is not None:
            decision = await self._limiter.hit(
                AUTH_THROTTLE_PREFIX + source_address, self._settings.auth_failures_per_minute
            )
            refused = decision if decision.reason is Reason.LIMITED else None
            if refused is not None or (decision.reason is Reason.OK and decision.remaining == 0):
                # From now on the address is refused (by _check_address, unaudited): this is
                # the event that says so.
                details["throttled"] = True
        self._audit(audit.AuditKind.AUTH_FAILED, source_address=source_address, details=details)
        if refused is not None:  # failures that raced past _check_address
            self._metrics.rate_limited("auth")
            raise RateLimitedError(refused.retry_after_s or 1.0, TOO_MANY_FAILURES)
        raise UnauthorizedError(message)
