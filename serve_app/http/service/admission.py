"""Admission: whether a request may enter, and what it holds while it runs.

The key's rate (one per execution: a batch of N costs N), the import policy (checked before
anything is stored or run), leases of the key's in-flight cap, and this replica's batch
backlog (at most ``BATCH_BACKLOG_BATCHES`` full batches, a key at most a
``1/BATCH_BACKLOG_KEY_SHARES`` share of it and at least one full batch). Refusals are
audited: 429 over a limit, 503 when the backlog (or, fail-closed, the limiter's store) is out.
"""

from __future__ import annotations

import asyncio
import math

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, wait_exponential

from serve_app.api import BatchItem, ExecutionCreate, SessionCall
from serve_app.db import audit
from serve_app.db.models import ApiKey
from serve_app.errors import (
    OverloadedError,
    PolicyViolationError,
    RateLimitedError,
    UnavailableError,
)
from serve_app.http._metrics import IngressMetrics
from serve_app.http.service.auditing import Auditor
from serve_app.policy import ImportPolicy
from serve_app.ratelimit import ConcurrencyDecision, Lease, Limiter, RateDecision, Reason
from serve_app.settings import Settings

__all__ = ["OVERLOADED_RETRY_AFTER_S", "Admission", "ExecutionBody", "rate_limit_headers"]

OVERLOADED_RETRY_AFTER_S = 1.0
BATCH_BACKLOG_BATCHES = 10
"""One replica holds at most this many full batches' worth of unfinished items."""
BATCH_BACKLOG_KEY_SHARES = 4
"""One key holds at most this fraction (1/N) of a replica's batch backlog, and at least one
full batch: a key cannot fill the backlog and leave every other key ``overloaded``."""
BATCH_LEASE_RETRY_FIRST_S = 0.05
BATCH_LEASE_RETRY_MAX_S = 0.5
"""A batch item waiting for a slot under its key's in-flight cap asks again this often."""
POLICY_INLINE_CHARS = 16 * 1024
"""Sources up to this size are parsed on the event loop; larger ones in a worker thread."""

ExecutionBody = ExecutionCreate | BatchItem
"""A request to run one program: on its own, or as an item of a batch."""

_lease_backoff = wait_exponential(multiplier=BATCH_LEASE_RETRY_FIRST_S, max=BATCH_LEASE_RETRY_MAX_S)


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    """The ``RateLimit-*`` headers of one decision (``Reset`` in whole seconds, rounded up)."""
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(max(0, math.ceil(decision.reset_after_s))),
    }


def _lease_wait(state: RetryCallState) -> float:
    """Over the cap: ask again soon (backing off). The store down and fail-closed: after the
    limiter's own back-off."""
    backoff = _lease_backoff(state)
    decision: ConcurrencyDecision | None = state.outcome.result() if state.outcome else None
    if decision is None or decision.reason is Reason.LIMITED:
        return backoff
    return decision.retry_after_s or backoff


class Admission:
    """One replica's admission of requests (rate, policy, in-flight leases, batch backlog)."""

    def __init__(
        self,
        settings: Settings,
        limiter: Limiter,
        policy: ImportPolicy,
        audit: Auditor,
        metrics: IngressMetrics,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._policy = policy
        self._audit = audit
        self._metrics = metrics
        self._batch_items_pending = 0
        self._batch_items_by_key: dict[int, int] = {}

    # --- rate

    async def hit(self, key: ApiKey, executions: int = 1) -> RateDecision:
        """Count a request against the key's rate: one, or one per execution it asks for."""
        limit = key.rate_limit_per_minute or self._settings.rate_limit_per_minute
        return await self._limiter.hit(key.lookup_id, limit, cost=executions)

    def admit(self, decision: RateDecision, key: ApiKey | None = None) -> None:
        """Raise the refusal ``decision`` stands for: 429 over the rate (audited with ``key``'s
        name), 503 when the limiter's store is down and the policy is fail-closed."""
        if decision.reason is Reason.LIMITED:
            if key is not None:
                self._audit(
                    audit.AuditKind.RATE_LIMITED,
                    key_name=key.name,
                    details={"limit": "rate", "per_minute": decision.limit},
                )
            self._metrics.rate_limited("rate")
            raise RateLimitedError(
                decision.retry_after_s or 1.0,
                f"this key's rate limit is reached: {decision.limit} executions a minute",
            )
        if not decision.allowed:
            raise UnavailableError(decision.retry_after_s or 1.0)

    # --- import policy

    async def check_policy(self, key: ApiKey, body: ExecutionBody | SessionCall) -> None:
        """Raise :class:`PolicyViolationError` (audited) if ``body`` imports modules the import
        policy refuses; without a policy, nothing is parsed."""
        if not self._policy.active:
            return
        sources = (body.code, body.test_code)
        size = sum(len(text or "") for text in sources) + sum(map(len, body.files.values()))
        try:
            if size <= POLICY_INLINE_CHARS:
                self._policy.check(sources, body.files)
            else:
                await asyncio.to_thread(self._policy.check, sources, body.files)
        except PolicyViolationError as exc:
            self._audit(
                audit.AuditKind.POLICY_REFUSED,
                key_name=key.name,
                details={"modules": list(exc.modules)},
            )
            raise

    # --- in-flight leases

    def cap(self, key: ApiKey) -> int:
        """The key's in-flight cap."""
        return key.max_concurrency or self._settings.max_concurrent_per_key

    async def lease(self, key: ApiKey) -> Lease | None:
        """A slot under the key's in-flight cap, or 429 (audited) when it is used up."""
        cap = self.cap(key)
        decision = await self._limiter.acquire(key.lookup_id, cap)
        if decision.reason is Reason.LIMITED:
            self._audit(
                audit.AuditKind.RATE_LIMITED,
                key_name=key.name,
                details={"limit": "concurrency", "max_in_flight": cap},
            )
            self._metrics.rate_limited("concurrency")
            raise RateLimitedError(
                1.0,
                f"this key's in-flight cap is reached: at most {cap} executions at once "
                "(set per key by `exec-agent keys create --max-concurrent`, "
                "default MAX_CONCURRENT_PER_KEY)",
            )
        if not decision.allowed:
            raise UnavailableError(decision.retry_after_s or 1.0)
        return decision.lease

    async def wait_for_lease(self, key: ApiKey) -> Lease | None:
        """A slot under the key's in-flight cap for a batch item, waiting for one: the batch
        was accepted, so its items queue behind the key's other runs instead of failing."""
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda decision: not decision.allowed), wait=_lease_wait
        )
        decision: ConcurrencyDecision = await retrying(
            self._limiter.acquire, key.lookup_id, self.cap(key)
        )
        return decision.lease

    async def more_leases(self, key: ApiKey, wanted: int) -> list[Lease | None]:
        """Up to ``wanted`` more slots under the key's in-flight cap, without waiting: as many
        as are free now (a batch's chunk grows to them; waiting for all of them at once could
        deadlock two chunks that each hold a part)."""
        taken: list[Lease | None] = []
        cap = self.cap(key)
        while len(taken) < wanted:
            decision = await self._limiter.acquire(key.lookup_id, cap)
            if not decision.allowed:
                break
            taken.append(decision.lease)
        return taken

    async def release(self, lease: Lease | None) -> None:
        if lease is not None:
            await self._limiter.release(lease)

    # --- the batch backlog

    @property
    def max_pending_batch_items(self) -> int:
        """Unfinished batch items one replica holds at most (a few full batches)."""
        return BATCH_BACKLOG_BATCHES * self._settings.max_batch_items

    @property
    def max_pending_batch_items_per_key(self) -> int:
        """Unfinished batch items of one key one replica holds at most: its fair share."""
        share = self.max_pending_batch_items // BATCH_BACKLOG_KEY_SHARES
        return max(self._settings.max_batch_items, share)

    def check_batch_room(self, key: ApiKey, items: int) -> None:
        """Raise if this replica cannot take ``items`` more of ``key``'s batch items: 429 when
        the key's share of the backlog is used (audited), 503 when the backlog is full."""
        held = self._batch_items_by_key.get(key.id, 0)
        share = self.max_pending_batch_items_per_key
        if held + items > share:
            self._audit(
                audit.AuditKind.RATE_LIMITED,
                key_name=key.name,
                details={"limit": "batch_backlog", "max_pending_items": share},
            )
            self._metrics.rate_limited("batch_backlog")
            raise RateLimitedError(
                OVERLOADED_RETRY_AFTER_S,
                f"at most {share} unfinished batch items per key; retry when some are done",
            )
        if self._batch_items_pending + items > self.max_pending_batch_items:
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S)

    def hold_batch_items(self, key: ApiKey, items: int) -> None:
        self._batch_items_pending += items
        self._batch_items_by_key[key.id] = self._batch_items_by_key.get(key.id, 0) + items

    def drop_batch_items(self, key: ApiKey, items: int) -> None:
        self._batch_items_pending -= items
        left = self._batch_items_by_key.get(key.id, 0) - items
        if left > 0:
            self._batch_items_by_key[key.id] = left
        else:
            self._batch_items_by_key.pop(key.id, None)
