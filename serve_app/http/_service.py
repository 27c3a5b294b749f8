"""What the routes do, without HTTP: keys, rate limits, persistence and the executor handle.

Database work is synchronous SQLAlchemy, run in worker threads (one short transaction each;
on SQLite one thread, as SQLite takes one writer at a time) so the replica's event loop keeps
serving. Every accepted execution is inserted first (``queued``; ``running`` at once when the
request waits for it, saving a write), then finished exactly once
(``executions.finish_execution``): with the executor's record, or with an ``internal_error``
record when the executors failed; a failure of the service never reaches the client as a 500.
A key that authenticated is trusted for ``AUTH_CACHE_TTL_S`` (revocation takes effect within
that), so a request does not read its key from the database each time. A request the
executors' bounded queue refuses (``BackPressureError``) was never accepted: its row is removed
and the client gets 503 ``overloaded``.

Without the database (down, restarting) a new request is refused with 503 ``unavailable``
before anything runs; a run already accepted goes on, its client gets its result, and the
result is written when the database is back (retried with back-off, never dropped). Each
execution names this replica as its owner; if the replica dies, another takes over what it
left unfinished (:mod:`serve_app.http._recovery`).

Refusals are audited (:mod:`serve_app.db.audit`): failed authentication, rate-limited requests
and requests the import policy refuses each add one event, written in the background so that
neither the refusal's answer nor a successful request ever waits on (or fails with) that write.
The import policy (:mod:`serve_app.policy`) is checked before anything is stored or run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from opentelemetry.trace import SpanKind, Tracer
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from executors import (
    TERMINAL_STATUSES,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    JudgeMode,
)
from executors.telemetry import (
    ATTEMPT,
    EXECUTION_ID,
    REQUEST_ID,
    STATUS,
    current_tracer,
    inject_context,
    mark_failed,
)
from serve_app.api import BatchCreate, BatchItem, ExecutionCreate, current_request_id
from serve_app.cache import CachedResult, ResultCache, build_result_cache, cache_fingerprint
from serve_app.db import Database, audit, batches, executions, keys
from serve_app.db.models import ApiKey, BatchStatus, Execution
from serve_app.errors import (
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    OverloadedError,
    PolicyViolationError,
    RateLimitedError,
    UnauthorizedError,
    UnavailableError,
)
from serve_app.http._metrics import ingress_metrics
from serve_app.http._record_size import cap_record, record_bytes
from serve_app.http._recovery import InstanceKeeper
from serve_app.ratelimit import Lease, Limiter, RateDecision, Reason
from serve_app.settings import Settings

__all__ = ["MAX_WAIT_S", "Created", "ExecutionService", "rate_limit_headers"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 60.0
"""API.md: ``wait_s`` is at most 60."""
OVERLOADED_RETRY_AFTER_S = 1.0
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
BACKGROUND_RETRY_S = 0.5
"""A background run the executors' queue refused tries again after this long..."""
BACKGROUND_DEADLINE_S = 60.0
"""...until this long has passed; then it ends as ``internal_error`` (batch items wait on)."""
BATCH_BACKLOG_BATCHES = 10
"""One replica holds at most this many full batches' worth of unfinished items."""
BATCH_BACKLOG_KEY_SHARES = 4
"""One key holds at most this fraction (1/N) of a replica's batch backlog, and at least one
full batch: a key cannot fill the backlog and leave every other key ``overloaded``."""
BATCH_LEASE_RETRY_FIRST_S = 0.05
BATCH_LEASE_RETRY_MAX_S = 0.5
"""A batch item waiting for a slot under its key's in-flight cap asks again this often."""
RECORD_CAP_INLINE_BYTES = 256 * 1024
"""Records up to this size are measured and cut on the event loop; larger ones in a thread."""
RECORD_CAP_MARGIN_BYTES = 1024
"""Kept free under ``MAX_RECORD_BYTES`` for what storing fills in after the cut (the row's
id, timestamps and limits: a few hundred bytes at most)."""
FINISH_RETRY_MAX_S = 30.0
"""A result the database could not take is written again, backing off up to this long."""
EXECUTOR_ATTEMPTS = 2
"""A run is tried again once if its executor replica dies under it (issue: "retried once
where safe"); never after the program reported a result."""
HANDLE_MARGIN_S = 60.0
"""How long past its wall timeout a run may take through the handle (queueing included)."""
AUDIT_MAX_PENDING = 64
"""Audit writes one replica keeps in flight; beyond, events are dropped (and logged): a flood
of refusals must not become a flood of database writes."""
AUDIT_CLOSE_TIMEOUT_S = 5.0
POLICY_INLINE_CHARS = 16 * 1024
"""Sources up to this size are parsed on the event loop; larger ones in a worker thread."""
AUTH_CACHE_TTL_S = 2.0
"""How long one replica trusts a key it authenticated (issue 3: "cache at most a few
seconds"): a revoked key, or a key's new limits, take effect within this long. Entries are
found by the presented key's HMAC (the stored form), never by the key itself."""
AUTH_CACHE_MAX_ENTRIES = 1024
"""Beyond this many cached keys the cache starts over (many keys at once is not the hot path)."""
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

_T = TypeVar("_T")
ExecutionBody = ExecutionCreate | BatchItem
"""A request to run one program: on its own, or as an item of a batch."""


def rate_limit_headers(decision: RateDecision) -> dict[str, str]:
    """The ``RateLimit-*`` headers of one decision (``Reset`` in whole seconds, rounded up)."""
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(max(0, math.ceil(decision.reset_after_s))),
    }


class Created:
    """The outcome of ``create``: the record to answer with, and whether it is finished."""

    def __init__(self, record: ExecutionRecord) -> None:
        self.record = record

    @property
    def terminal(self) -> bool:
        return self.record.status in TERMINAL_STATUSES


class ExecutionService:
    """One per ingress replica: its database, its limiter and the executor handle."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        limiter: Limiter,
        executor: Any,
        cache: ResultCache | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.limiter = limiter
        self.executor = executor
        self.cache = cache if cache is not None else build_result_cache(settings)
        self.metrics = ingress_metrics()  # no-ops without Ray
        self._batch_items_pending = 0
        self._batch_items_by_key: dict[int, int] = {}
        self.policy = settings.import_policy()
        self._default_limits = settings.default_limits()  # once: settings never change
        self._max_limits = settings.max_limits()
        self._background: set[asyncio.Task[None]] = set()
        self._audit_tasks: set[asyncio.Task[None]] = set()
        self.audit_dropped = 0
        self._auth_cache: dict[str, tuple[float, ApiKey]] = {}
        self._failed_keys: dict[str, float] = {}
        self._known_good: dict[str, float] = {}
        self._clock: Callable[[], float] = time.monotonic
        # SQLite takes one writer at a time: writers in several threads of this process would
        # meet on its lock and sleep in its busy handler (milliseconds each). One thread runs
        # them back to back instead. PostgreSQL uses the default pool of worker threads.
        self._db_thread: ThreadPoolExecutor | None = None
        if database.engine.dialect.name == "sqlite":
            self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self.keeper = InstanceKeeper(self)

    def start(self) -> None:
        """Start the replica's background duties (on its event loop): heartbeats, takeover."""
        self.keeper.start()

    # --- database in worker threads

    async def db(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in one transaction, off the event loop; raises
        :class:`~serve_app.errors.DatabaseUnavailableError` when the database is unreachable."""

        def in_transaction() -> _T:
            with self.database.session() as session:
                return work(session)

        if self._db_thread is None:
            return await asyncio.to_thread(in_transaction)
        call = functools.partial(contextvars.copy_context().run, in_transaction)
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, call)

    # --- audit events of refusals

    def audit(
        self,
        kind: audit.AuditKind,
        *,
        key_name: str | None = None,
        source_address: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one event in the background (with the current request id); a failed write is
        logged, never raised."""
        if len(self._audit_tasks) >= AUDIT_MAX_PENDING:
            self.audit_dropped += 1
            logger.warning("audit event %s dropped: too many writes pending", kind.value)
            return
        request_id = current_request_id()

        def write(session: Session) -> None:
            audit.record(
                session,
                kind,
                key_name=key_name,
                source_address=source_address,
                request_id=request_id,
                details=details,
            )

        async def store() -> None:
            try:
                await self.db(write)
            except Exception as exc:  # noqa: BLE001 - the refusal stands; the event is logged
                logger.warning("audit event %s not stored: %s", kind.value, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(store())
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    # --- callers

    async def authenticate(
        self, presented: str | None, *, source_address: str | None = None
    ) -> ApiKey:
        """The live key presented, or :class:`UnauthorizedError` (audited, without the key).

        An address past ``AUTH_FAILURES_PER_MINUTE`` failures gets :class:`RateLimitedError`
        instead, before any key is looked up; a key that failed is refused for
        ``AUTH_FAILED_CACHE_TTL_S`` without a database round trip."""
        cache_key = None
        if presented is not None and len(presented) == keys.KEY_CHARS:
            cache_key = keys.hash_key(presented, self.settings.api_key_secret)
        now = self._clock()
        if cache_key is not None:
            cached = self._auth_cache.get(cache_key)
            if cached is not None and cached[0] > now:
                return cached[1]
        if cache_key is None or self._known_good.get(cache_key, 0.0) <= now:
            # A key that worked lately is looked up even from a throttled address: clients
            # behind one NAT or proxy with an attacker keep working.
            await self._check_address(source_address)
        if not presented:
            await self._refuse(source_address, "missing", "an API key is required")
        if cache_key is None or self._failed_keys.get(cache_key, 0.0) > now:
            # Malformed (no stored key has its shape), or failed a moment ago.
            await self._refuse(source_address, "unknown_or_revoked", UNKNOWN_KEY)
        secret = self.settings.api_key_secret
        row = await self.db(lambda session: keys.authenticate(session, presented, secret))
        if row is None:
            _remember(self._failed_keys, cache_key, now + AUTH_FAILED_CACHE_TTL_S)
            await self._refuse(source_address, "unknown_or_revoked", UNKNOWN_KEY)
        _remember(self._auth_cache, cache_key, (now + AUTH_CACHE_TTL_S, row))
        _remember(self._known_good, cache_key, now + AUTH_KNOWN_GOOD_S)
        return row

    async def _check_address(self, source_address: str | None) -> None:
        """Raise :class:`RateLimitedError` if ``source_address`` used up its failures. Not
        audited: the failure that used them up was, and a write per refusal is what an
        attacker would want."""
        if source_address is None:
            return
        decision = await self.limiter.hit(
            AUTH_THROTTLE_PREFIX + source_address,
            self.settings.auth_failures_per_minute,
            dry_run=True,
        )
        if decision.reason is Reason.LIMITED:
            self.metrics.rate_limited("auth")
            raise RateLimitedError(decision.retry_after_s or 1.0, TOO_MANY_FAILURES)

    async def _refuse(self, source_address: str | None, reason: str, message: str) -> NoReturn:
        """Count a failed authentication against its address, audit it, and raise: 401, or
        429 when this failure is one too many for the address."""
        details: dict[str, Any] = {"reason": reason}
        refused = None
        if source_address is not None:
            decision = await self.limiter.hit(
                AUTH_THROTTLE_PREFIX + source_address, self.settings.auth_failures_per_minute
            )
            refused = decision if decision.reason is Reason.LIMITED else None
            if refused is not None or (decision.reason is Reason.OK and decision.remaining == 0):
                # From now on the address is refused (by _check_address, unaudited): this is
                # the event that says so.
                details["throttled"] = True
        self.audit(audit.AuditKind.AUTH_FAILED, source_address=source_address, details=details)
        if refused is not None:  # failures that raced past _check_address
            self.metrics.rate_limited("auth")
            raise RateLimitedError(refused.retry_after_s or 1.0, TOO_MANY_FAILURES)
        raise UnauthorizedError(message)

    async def hit(self, key: ApiKey, executions: int = 1) -> RateDecision:
        """Count a request against the key's rate: one, or one per execution it asks for (a
        batch of N costs N); :meth:`admit` says whether it may pass."""
        limit = key.rate_limit_per_minute or self.settings.rate_limit_per_minute
        return await self.limiter.hit(key.lookup_id, limit, cost=executions)

    def admit(self, decision: RateDecision, key: ApiKey | None = None) -> None:
        """Raise the refusal ``decision`` stands for: 429 over the rate (audited with ``key``'s
        name), 503 when the limiter's store is down and the policy is fail-closed."""
        if decision.reason is Reason.LIMITED:
            if key is not None:
                self.audit(
                    audit.AuditKind.RATE_LIMITED,
                    key_name=key.name,
                    details={"limit": "rate", "per_minute": decision.limit},
                )
            self.metrics.rate_limited("rate")
            raise RateLimitedError(decision.retry_after_s or 1.0)
        if not decision.allowed:
            raise UnavailableError(decision.retry_after_s or 1.0)

    async def _lease(self, key: ApiKey) -> Lease | None:
        cap = key.max_concurrency or self.settings.max_concurrent_per_key
        decision = await self.limiter.acquire(key.lookup_id, cap)
        if decision.reason is Reason.LIMITED:
            self.audit(
                audit.AuditKind.RATE_LIMITED,
                key_name=key.name,
                details={"limit": "concurrency", "max_in_flight": cap},
            )
            self.metrics.rate_limited("concurrency")
            raise RateLimitedError(1.0, f"at most {cap} executions in flight per key")
        if not decision.allowed:
            raise UnavailableError(decision.retry_after_s or 1.0)
        return decision.lease

    async def _wait_for_lease(self, key: ApiKey) -> Lease | None:
        """A slot under the key's in-flight cap for a batch item, waiting for one: the batch
        was accepted, so its items queue behind the key's other runs instead of failing."""
        cap = key.max_concurrency or self.settings.max_concurrent_per_key
        delay = BATCH_LEASE_RETRY_FIRST_S
        while True:
            decision = await self.limiter.acquire(key.lookup_id, cap)
            if decision.allowed:
                return decision.lease
            # Over the cap: ask again soon. The store down and fail-closed: after its back-off.
            wait = delay if decision.reason is Reason.LIMITED else decision.retry_after_s
            await asyncio.sleep(wait or delay)
            delay = min(delay * 2, BATCH_LEASE_RETRY_MAX_S)

    async def _release(self, lease: Lease | None) -> None:
        if lease is not None:
            await self.limiter.release(lease)

    # --- executions

    async def create(
        self,
        key: ApiKey,
        body: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Created:
        """Accept ``body``: run it now (``wait``) or in the background; or replay the execution
        an ``Idempotency-Key`` already names, or answer from the result cache (``cache``).
        Code the import policy refuses is refused first, before anything is stored or run."""
        await self.check_policy(key, body)
        item = self._accept(body)
        idempotency = None
        if idempotency_key is not None:
            fingerprint = executions.request_fingerprint(body.model_dump(mode="json"))
            idempotency = executions.Idempotency(idempotency_key, fingerprint)
            replay = await self._replay(key, idempotency)
            if replay is not None:
                return replay
        cache_as = self._cache_as(key, item) if body.cache else None
        if cache_as is not None:
            hit = await self.cache.get(*cache_as)
            if hit is not None:
                return Created(await self._store_copy(key, item, hit, request_id, idempotency))
        if not body.wait and self.background_room() <= 0:
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S)
        lease = await self._lease(key)
        try:
            try:
                row = await self.db(
                    lambda session: executions.insert_execution(
                        session,
                        key.id,
                        item,
                        request_id=request_id,
                        idempotency=idempotency,
                        running=body.wait,
                        owner=self.keeper.instance_id,
                    )
                )
            except ConflictError:
                replay = await self._replay(key, idempotency) if idempotency else None
                if replay is None:
                    raise
                return replay
            if body.wait:
                # Inserted as running already: one write fewer before the run.
                record = await self._run(
                    row.id, item, background=False, inserted=row, cache_as=cache_as
                )
                return Created(record)
            self._spawn(
                self._run_in_background(
                    row.id,
                    item,
                    lease,
                    cache_as=cache_as,
                    deadline_s=BACKGROUND_DEADLINE_S,
                )
            )
            lease = None  # the task gives it back
            return Created(executions.to_record(row))
        finally:
            await self._release(lease)

    def _accept(self, body: ExecutionBody) -> ExecutionRequest:
        """What will run for ``body``: its program and judging, with the effective limits."""
        limits = body.limits.resolve(self._default_limits, self._max_limits)
        return ExecutionRequest(
            code=body.code,
            stdin=body.stdin,
            files=body.files,
            test_code=body.test_code,
            judge=JudgeMode(body.judge),
            cases=body.cases,
            limits=limits,
        )

    @staticmethod
    def _cache_as(key: ApiKey, request: ExecutionRequest) -> tuple[int, str]:
        """Where ``request``'s result is cached: the key's id and the request's fingerprint."""
        return key.id, cache_fingerprint(request)

    async def _store_copy(
        self,
        key: ApiKey,
        item: ExecutionRequest,
        hit: CachedResult,
        request_id: str | None,
        idempotency: executions.Idempotency | None,
    ) -> ExecutionRecord:
        """Store and answer a new execution that reuses ``hit``'s result (a cache hit)."""
        # Cached before MAX_RECORD_BYTES was lowered, perhaps: the cap holds for copies too.
        capped = CachedResult(hit.execution_id, await self._capped(hit.record))

        def store(session: Session) -> ExecutionRecord:
            row = executions.insert_execution(
                session,
                key.id,
                item,
                request_id=request_id,
                idempotency=idempotency,
                running=True,
                owner=self.keeper.instance_id,
            )
            return executions.finish_inserted_execution(session, row, _copy_of(capped, row.id))

        try:
            stored = await self.db(store)
        except ConflictError:
            replay = await self._replay(key, idempotency) if idempotency else None
            if replay is None:
                raise
            return replay.record
        self.metrics.execution_stored(stored)
        return stored

    # --- batches

    async def create_batch(
        self, key: ApiKey, body: BatchCreate, *, request_id: str | None = None
    ) -> dict[str, Any]:
        """Accept a batch: store it with its items, then run them in the background, each
        under a slot of the key's in-flight cap (and no more at once than the executors can
        take). Refused whole (nothing stored) if an item breaks the import policy, or the
        key's share of the replica's batch backlog, or the backlog itself, is full."""
        for body_item in body.items:
            await self.check_policy(key, body_item)
        items = [self._accept(body_item) for body_item in body.items]
        self.check_batch_room(key, len(items))
        self._hold_batch_items(key, len(items))  # before any await: concurrent batches count
        try:
            new = await self.db(
                lambda session: batches.insert_batch(
                    session, key.id, items, request_id, owner=self.keeper.instance_id
                )
            )
        except BaseException:
            self._drop_batch_items(key, len(items))
            raise
        cache_as = [
            self._cache_as(key, item) if body_item.cache else None
            for item, body_item in zip(items, body.items, strict=True)
        ]
        # The key's cap, but no more than keeps every slot busy with one run waiting behind
        # it: more in flight would only wait in Serve's router, which backs off.
        slots = self.settings.max_concurrent_executions * self.settings.executor_num_replicas_max
        in_flight = min(key.max_concurrency or self.settings.max_concurrent_per_key, 2 * slots)
        self._spawn(self._run_batch(key, new, items, cache_as, in_flight))
        return {"id": str(new.batch.id), "status": "queued", "total": len(items)}

    @property
    def max_pending_batch_items(self) -> int:
        """Unfinished batch items one replica holds at most (a few full batches)."""
        return BATCH_BACKLOG_BATCHES * self.settings.max_batch_items

    @property
    def max_pending_batch_items_per_key(self) -> int:
        """Unfinished batch items of one key one replica holds at most: its fair share."""
        share = self.max_pending_batch_items // BATCH_BACKLOG_KEY_SHARES
        return max(self.settings.max_batch_items, share)

    def check_batch_room(self, key: ApiKey, items: int) -> None:
        """Raise if this replica cannot take ``items`` more of ``key``'s batch items: 429 when
        the key's share of the backlog is used (audited), 503 when the backlog is full."""
        held = self._batch_items_by_key.get(key.id, 0)
        if held + items > self.max_pending_batch_items_per_key:
            share = self.max_pending_batch_items_per_key
            self.audit(
                audit.AuditKind.RATE_LIMITED,
                key_name=key.name,
                details={"limit": "batch_backlog", "max_pending_items": share},
            )
            self.metrics.rate_limited("batch_backlog")
            raise RateLimitedError(
                OVERLOADED_RETRY_AFTER_S,
                f"at most {share} unfinished batch items per key; retry when some are done",
            )
        if self._batch_items_pending + items > self.max_pending_batch_items:
            raise OverloadedError(OVERLOADED_RETRY_AFTER_S)

    def _hold_batch_items(self, key: ApiKey, items: int) -> None:
        self._batch_items_pending += items
        self._batch_items_by_key[key.id] = self._batch_items_by_key.get(key.id, 0) + items

    def _drop_batch_items(self, key: ApiKey, items: int) -> None:
        self._batch_items_pending -= items
        left = self._batch_items_by_key.get(key.id, 0) - items
        if left > 0:
            self._batch_items_by_key[key.id] = left
        else:
            self._batch_items_by_key.pop(key.id, None)

    async def _run_batch(
        self,
        key: ApiKey,
        new: batches.NewBatch,
        items: list[ExecutionRequest],
        cache_as: list[tuple[int, str] | None],
        in_flight: int,
    ) -> None:
        """Run a batch's items, ``in_flight`` at a time, each holding a lease of the key's
        in-flight cap while it runs (so the key's batches and its other requests share the
        cap). Items with ``cache`` run once per fingerprint: the first runs (unless the cache
        has it), the others copy its result. The stored batch status follows once, at the end
        (the API derives it from the items anyway): a write per item would cost more than the
        items themselves."""
        gate = asyncio.Semaphore(in_flight)
        firsts: dict[str, asyncio.Future[ExecutionRecord | None]] = {}

        async def run_item(execution_id: uuid.UUID, item: ExecutionRequest, where: Any) -> None:
            try:
                if where is not None and await self._finish_from_cache(execution_id, where, firsts):
                    return
                async with gate:
                    lease = await self._wait_for_lease(key)
                    # _run_in_background gives the lease back.
                    record = await self._run_in_background(
                        execution_id, item, lease, cache_as=where
                    )
                if where is not None and not firsts[where[1]].done():
                    firsts[where[1]].set_result(record)
            finally:
                self._drop_batch_items(key, 1)
                if where is not None and not firsts[where[1]].done():
                    firsts[where[1]].set_result(None)

        await asyncio.gather(
            *(
                run_item(execution_id, item, where)
                for execution_id, item, where in zip(new.item_ids, items, cache_as, strict=True)
            )
        )
        await self._refresh_batch(new.batch.id)

    async def _finish_from_cache(
        self,
        execution_id: uuid.UUID,
        cache_as: tuple[int, str],
        firsts: dict[str, asyncio.Future[ExecutionRecord | None]],
    ) -> bool:
        """Finish a batch item with a cached result, or with the result of the same item
        earlier in its batch; False if it must run (it is then the first of its kind)."""
        fingerprint = cache_as[1]
        first = firsts.get(fingerprint)
        if first is None:
            firsts[fingerprint] = asyncio.get_running_loop().create_future()
            hit = await self.cache.get(*cache_as)
            if hit is None:
                return False
            firsts[fingerprint].set_result(_copy_of(hit, hit.execution_id))
            record = _copy_of(hit, execution_id)
        else:
            earlier = await first
            if earlier is None or earlier.status is ExecutionStatus.INTERNAL_ERROR:
                return False
            record = _copy_of(CachedResult(earlier.id, earlier), execution_id)
        await self._finish(execution_id, record)
        return True

    async def _refresh_batch(self, batch_id: uuid.UUID) -> None:
        # The stored status only follows (the API derives it from the items): a write that
        # cannot be made now waits for the batch's next refresh.
        with contextlib.suppress(DatabaseUnavailableError):
            await self.db(lambda session: batches.refresh_batch_status(session, batch_id))

    async def get_batch(self, key: ApiKey, batch_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The key's batch with its records in request order; with ``wait_s``, once done or
        after that long."""
        try:
            wanted = uuid.UUID(batch_id)
        except ValueError:
            raise NotFoundError("no such batch") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
        interval = POLL_FIRST_S
        while True:
            progress = await self.db(
                lambda session: batches.batch_progress(session, key.id, wanted)
            )
            if progress is None:
                raise NotFoundError("no such batch")
            remaining = deadline - loop.time()
            if progress.status is BatchStatus.DONE or remaining <= 0:
                break
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, POLL_MAX_S)
        view = await self.db(lambda session: batches.get_batch(session, key.id, wanted))
        if view is None:
            raise NotFoundError("no such batch")
        return {
            "id": str(view.id),
            "status": str(view.status),
            "total": view.total,
            "done": view.done,
            "items": [executions.to_record(row).to_api() for row in view.items],
        }

    async def check_policy(self, key: ApiKey, body: ExecutionBody) -> None:
        """Raise :class:`PolicyViolationError` (audited) if ``body`` imports modules the import
        policy refuses; without a policy, nothing is parsed."""
        if not self.policy.active:
            return
        sources = (body.code, body.test_code)
        size = sum(len(text or "") for text in sources) + sum(map(len, body.files.values()))
        try:
            if size <= POLICY_INLINE_CHARS:
                self.policy.check(sources, body.files)
            else:
                await asyncio.to_thread(self.policy.check, sources, body.files)
        except PolicyViolationError as exc:
            self.audit(
                audit.AuditKind.POLICY_REFUSED,
                key_name=key.name,
                details={"modules": list(exc.modules)},
            )
            raise

    async def _replay(self, key: ApiKey, idempotency: executions.Idempotency) -> Created | None:
        row = await self.db(
            lambda session: executions.find_by_idempotency_key(session, key.id, idempotency)
        )
        return None if row is None else Created(executions.to_record(row))

    async def _run(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        *,
        background: bool,
        inserted: Execution | None = None,
        cache_as: tuple[int, str] | None = None,
    ) -> ExecutionRecord:
        """Run through the executor handle and finish the stored execution (``inserted``: the
        row this request inserted, running); with ``cache_as``, cache the result there.

        A run whose executor replica died under it is run once more (the program never
        reported, so nothing of it reached the client); a second failure, or any other failure
        of the executors, ends as ``internal_error``: the service failed, not the code."""
        tracer = current_tracer()
        for attempt in range(1, EXECUTOR_ATTEMPTS + 1):
            try:
                call = (
                    self._at_executors(self.executor.run.remote(request))
                    if tracer is None
                    else self._traced_at_executors(tracer, execution_id, request, attempt)
                )
                result = await asyncio.wait_for(
                    call, timeout=request.limits.wall_timeout_s + HANDLE_MARGIN_S
                )
                record = ExecutionRecord.model_validate(result)
                break
            except BackPressureError:
                if background:
                    raise
                if attempt > 1:
                    # The retry of a run whose replica died under it: that run was accepted
                    # and started, so it ends as a record, not as a refusal that forgets it.
                    logger.warning("execution %s: no executor for the retry", execution_id)
                    record = ExecutionRecord.internal_error(request)
                    break
                await self._discard(execution_id, request)
                raise OverloadedError(OVERLOADED_RETRY_AFTER_S) from None
            except asyncio.CancelledError:
                # The client went away (or the replica is stopping): the record still ends.
                self._spawn(self._finish(execution_id, ExecutionRecord.internal_error(request)))
                raise
            except RayActorError as exc:
                logger.warning(
                    "execution %s: executor replica lost (attempt %d): %s",
                    execution_id,
                    attempt,
                    type(exc).__name__,
                )
                record = ExecutionRecord.internal_error(request)
            except Exception as exc:  # noqa: BLE001 - any executor failure ends as internal_error
                # The type only (no traceback): a remote error may carry the program's text.
                logger.error(
                    "execution %s failed in the executors: %s", execution_id, type(exc).__name__
                )
                record = ExecutionRecord.internal_error(request)
                break
        finished = await self._finish(execution_id, record, inserted)
        if cache_as is not None and finished.status is not ExecutionStatus.INTERNAL_ERROR:
            await self.cache.put(*cache_as, execution_id, finished)
        return finished

    async def _at_executors(self, call: Any) -> Any:
        """Await the executors' answer to ``call``, counted as an active execution meanwhile."""
        self.metrics.run_started()
        try:
            return await call
        finally:
            self.metrics.run_ended()

    async def _traced_at_executors(
        self, tracer: Tracer, execution_id: uuid.UUID, request: ExecutionRequest, attempt: int
    ) -> Any:
        """:meth:`_at_executors` of the run, in an ``executor.run`` span (tracing on) whose
        context goes to the executor replica with the request; ids and the status only."""
        with tracer.start_as_current_span(
            "executor.run",
            kind=SpanKind.CLIENT,
            attributes={EXECUTION_ID: str(execution_id), ATTEMPT: attempt},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            request_id = current_request_id()
            if request_id:
                span.set_attribute(REQUEST_ID, request_id)
            carrier = inject_context(str(execution_id))
            try:
                result = await self._at_executors(
                    self.executor.run.remote(request, trace_context=carrier)
                )
            except BaseException as exc:
                mark_failed(span, exc)
                raise
            status = result.get("status") if isinstance(result, dict) else None
            if isinstance(status, str):
                span.set_attribute(STATUS, status)
            return result

    async def _discard(self, execution_id: uuid.UUID, request: ExecutionRequest) -> None:
        """Forget a run the executors refused (the client gets 503); if the database cannot be
        reached to forget it, it ends as ``internal_error`` once it can."""
        try:
            await self.db(lambda session: _discard_unfinished(session, execution_id))
        except DatabaseUnavailableError:
            self._spawn(self._finish_later(execution_id, ExecutionRecord.internal_error(request)))

    async def _run_in_background(
        self,
        execution_id: uuid.UUID,
        request: ExecutionRequest,
        lease: Lease | None,
        *,
        cache_as: tuple[int, str] | None = None,
        batch_id: uuid.UUID | None = None,
        deadline_s: float | None = None,
    ) -> ExecutionRecord | None:
        """Run a queued execution; the executors' refusals are retried until ``deadline_s``
        (then ``internal_error``), without end if None (a batch item waits its turn). The
        record, or None if it was not queued any more."""
        loop = asyncio.get_running_loop()
        deadline = None if deadline_s is None else loop.time() + deadline_s
        try:
            if not await self._start(execution_id):
                return None
            while True:
                try:
                    return await self._run(
                        execution_id, request, background=True, cache_as=cache_as
                    )
                except BackPressureError:
                    if deadline is not None and loop.time() >= deadline:
                        logger.warning("execution %s: executors stayed at capacity", execution_id)
                        return await self._finish(
                            execution_id, ExecutionRecord.internal_error(request)
                        )
                    await asyncio.sleep(BACKGROUND_RETRY_S)
        finally:
            await self._release(lease)
            if batch_id is not None:
                await self._refresh_batch(batch_id)

    async def _start(self, execution_id: uuid.UUID) -> bool:
        """Mark a queued execution running; False if it is not queued any more (finished, or
        taken by another instance). Without the database it runs anyway: the finish, retried
        until the database is back, records it, exactly once."""
        try:
            started = await self.db(
                lambda session: executions.start_execution(session, execution_id)
            )
        except DatabaseUnavailableError:
            return True
        if not started:
            logger.warning("execution %s: not queued any more, not run", execution_id)
        return started

    async def _finish(
        self,
        execution_id: uuid.UUID,
        record: ExecutionRecord,
        inserted: Execution | None = None,
    ) -> ExecutionRecord:
        """Store the terminal record; if the database is down, keep retrying in the background
        and answer with the record as it will be stored. With the row this request
        ``inserted``, the stored record is not read back (one statement fewer). A record over
        ``MAX_RECORD_BYTES`` is stored (and answered) with its outputs cut to fit."""
        record = await self._capped(executions.with_finish_time(record))
        try:
            if inserted is not None:
                row = inserted
                finished = await self.db(
                    lambda session: executions.finish_inserted_execution(session, row, record)
                )
                self.metrics.execution_stored(finished)
                return finished
            stored = await self.db(
                lambda session: executions.finish_execution(session, execution_id, record)
            )
        except DatabaseUnavailableError:
            logger.warning(
                "execution %s: result not stored yet: database unavailable", execution_id
            )
            self._spawn(self._finish_later(execution_id, record))
            if inserted is not None:
                return executions.as_stored(inserted, record)
            return record.model_copy(update={"id": execution_id})
        self.metrics.execution_stored(record)
        return executions.to_record(stored)

    async def _capped(self, record: ExecutionRecord) -> ExecutionRecord:
        """``record`` within ``MAX_RECORD_BYTES`` (:func:`cap_record`); a big one is measured
        and cut in a worker thread, off the event loop."""
        limit = self.settings.max_record_bytes - RECORD_CAP_MARGIN_BYTES
        if (
            len(record.stdout) + len(record.stderr) + _case_output_chars(record)
            <= min(limit, RECORD_CAP_INLINE_BYTES) // 6
        ):
            return record  # even escaped (at most 6 bytes a character) the outputs fit
        if record_bytes(record) <= RECORD_CAP_INLINE_BYTES:
            return cap_record(record, limit)
        return await asyncio.to_thread(cap_record, record, limit)

    async def _finish_later(self, execution_id: uuid.UUID, record: ExecutionRecord) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            self.metrics.db_write_retry()
            try:
                await self.db(
                    lambda session: executions.finish_execution(session, execution_id, record)
                )
                self.metrics.execution_stored(record)
                return
            except ConflictError:
                return  # finished meanwhile: exactly once still holds
            except DatabaseUnavailableError:
                delay = min(delay * 2, FINISH_RETRY_MAX_S)

    def background_room(self) -> int:
        """How many more background runs this replica takes (its share of the bounded queue)."""
        return self.settings.executor_max_queued_requests - len(self._background)

    def resume(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """Run a queued execution accepted by another (dead) instance, in the background."""
        self._spawn(self._run_in_background(execution_id, request, None, batch_id=batch_id))

    async def fail(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """End an execution whose run was lost (its instance died) as ``internal_error``."""
        await self._finish(execution_id, ExecutionRecord.internal_error(request))
        if batch_id is not None:
            await self._refresh_batch(batch_id)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def get(self, key: ApiKey, execution_id: str, wait_s: float = 0.0) -> ExecutionRecord:
        """The key's execution; with ``wait_s``, once terminal or after that long."""
        try:
            wanted = uuid.UUID(execution_id)
        except ValueError:
            raise NotFoundError("no such execution") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_s, 0.0), MAX_WAIT_S)
        interval = POLL_FIRST_S
        while True:
            row = await self.db(lambda session: executions.get_execution(session, key.id, wanted))
            if row is None:
                raise NotFoundError("no such execution")
            remaining = deadline - loop.time()
            if row.status in TERMINAL_STATUSES or remaining <= 0:
                return executions.to_record(row)
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * 1.5, POLL_MAX_S)

    async def list(self, key: ApiKey, limit: int, cursor: str | None) -> dict[str, Any]:
        """A page of the key's executions, newest first, in the API's shape."""
        page = await self.db(
            lambda session: executions.list_executions(session, key.id, limit=limit, cursor=cursor)
        )
        return {
            "items": [executions.to_record(row).to_api() for row in page.items],
            "next_cursor": page.next_cursor,
        }

    async def aclose(self, timeout_s: float) -> None:
        """Let background runs finish (up to ``timeout_s``), then release the connections."""
        await self.keeper.stop()
        pending = set(self._background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
        if self._audit_tasks:
            await asyncio.wait(set(self._audit_tasks), timeout=AUDIT_CLOSE_TIMEOUT_S)
        await self.limiter.aclose()
        await self.cache.aclose()
        await asyncio.to_thread(self.database.dispose)
        if self._db_thread is not None:
            self._db_thread.shutdown(wait=False)


def _copy_of(hit: CachedResult, execution_id: uuid.UUID) -> ExecutionRecord:
    """A new execution's record reusing ``hit``'s result (its outputs and measured usage;
    started and finished now)."""
    now = datetime.now(UTC)
    return hit.record.model_copy(
        update={
            "id": execution_id,
            "cached": True,
            "cached_from": hit.execution_id,
            "started_at": now,
            "finished_at": now,
        }
    )


def _remember(cache: dict[str, _T], key: str | None, value: _T) -> None:
    """Keep ``value`` under ``key`` in one of the authentication caches; a full cache starts
    over (many keys at once is not the path worth keeping fast)."""
    if key is None:
        return
    if len(cache) >= AUTH_CACHE_MAX_ENTRIES:
        cache.clear()
    cache[key] = value


def _case_output_chars(record: ExecutionRecord) -> int:
    return sum(len(case.stdout) + len(case.stderr) for case in record.cases or ())


def _discard_unfinished(session: Session, execution_id: uuid.UUID) -> None:
    """Forget an execution the executors refused before it ran (the client got 503)."""
    session.execute(
        delete(Execution).where(
            Execution.id == execution_id,
            Execution.status.in_((ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)),
        )
    )
