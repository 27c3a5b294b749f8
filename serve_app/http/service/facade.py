""":class:`ExecutionService`: what the routes do, without HTTP; composes the replica's parts.

Authentication (:mod:`.auth`), admission (:mod:`.admission`), single executions
(:mod:`.executions`), batches (:mod:`.batches`) and sessions (:mod:`.sessions`, with their
sweeper, :mod:`.sweeper`) over the executor call (:mod:`.runner`),
result writing (:mod:`.results`), audit writes (:mod:`.auditing`), database transactions
(:mod:`.transactions`) and background tasks (:mod:`.background`); the recovery keeper
(:mod:`serve_app.http._recovery`) knows it as its :class:`RecoveryHost`. The names the routes,
readiness, the ingress and the keeper use keep their signatures; answers still reach the routes
as the API's JSON objects (the typed ones: :meth:`batch` and :meth:`page`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from executors import (
    Artifact,
    ExecutionRecord,
    ExecutionRequest,
    RuntimeInfo,
    SessionHosts,
    StdinChannel,
    StdinRelays,
    runtime_catalog,
)
from serve_app.api import BatchCreate, ExecutionCreate, SessionCall, SessionCreate, SessionInfo
from serve_app.cache import ResultCache, build_result_cache
from serve_app.db import Database
from serve_app.db.models import ApiKey
from serve_app.errors import UnavailableError
from serve_app.http._metrics import ingress_metrics
from serve_app.http._recovery import InstanceKeeper
from serve_app.http.service.admission import Admission, ExecutionBody
from serve_app.http.service.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.http.service.auditing import Auditor
from serve_app.http.service.auth import Authenticator
from serve_app.http.service.background import BackgroundTasks
from serve_app.http.service.batches import Batches
from serve_app.http.service.executions import Executions, Parts
from serve_app.http.service.polling import Wakers
from serve_app.http.service.results import Results
from serve_app.http.service.runner import Runner
from serve_app.http.service.sessions import SessionPage, Sessions
from serve_app.http.service.streams import EventStream
from serve_app.http.service.sweeper import SessionSweeper
from serve_app.http.service.transactions import Transactions
from serve_app.ratelimit import Limiter, RateDecision
from serve_app.settings import Settings

__all__ = ["ExecutionService"]

_T = TypeVar("_T")

NO_SESSIONS_RETRY_AFTER_S = 5.0


class ExecutionService:
    """One per ingress replica: its database, its limiter and the executor handle."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        limiter: Limiter,
        executor: Any,
        cache: ResultCache | None = None,
        *,
        runtime_executors: Mapping[str, Any] | None = None,
        session_hosts: SessionHosts | None = None,
    ) -> None:
        self.settings = settings
        self._runtimes: list[RuntimeInfo] | None = None
        self.limiter = limiter
        self.cache = cache if cache is not None else build_result_cache(settings)
        self.metrics = ingress_metrics()  # no-ops without Ray
        self.policy = settings.import_policy()
        self.transactions = Transactions(database)
        self.auditor = Auditor(self.transactions)
        self.audit = self.auditor  # service.audit(kind, ...): one event, in the background
        self.auth = Authenticator(
            settings, self.transactions, limiter, self.auditor, self.metrics, time.monotonic
        )
        self.admission = Admission(settings, limiter, self.policy, self.auditor, self.metrics)
        self.background = BackgroundTasks(settings.executor_max_queued_requests)
        self.runner = Runner(
            executor,
            self.metrics,
            runtime_executors,
            stream_buffer_bytes=settings.stream_buffer_bytes,
        )
        self.results = Results(
            self.transactions, self.metrics, self.background, settings.max_record_bytes
        )
        self.keeper = InstanceKeeper(self)
        parts = Parts(
            transact=self.transactions,
            admission=self.admission,
            results=self.results,
            cache=self.cache,
            background=self.background,
            owner=self.keeper.instance_id,
            wakers=Wakers(),
            stream_buffer_bytes=settings.stream_buffer_bytes,
        )
        limits = (settings.default_limits(), settings.max_limits())
        self.executions = Executions(parts, self.runner, limits)
        slots = settings.max_concurrent_executions * settings.executor_num_replicas_max
        self.batches = Batches(
            parts, self.executions, self.runner, slots, settings.max_concurrent_executions
        )
        self.create = self.executions.create  # accept one execution: same signature
        # Without session hosts (a service built outside an ingress replica), no sessions.
        self.sessions = (
            None
            if session_hosts is None
            else Sessions(parts, settings, self.metrics, session_hosts)
        )
        self.sweeper = None if self.sessions is None else SessionSweeper(self.sessions, settings)
        self._stdin_relays: StdinRelays | None = None

    # --- the parts' state, under the names readiness, the ingress and tests use

    @property
    def database(self) -> Database:
        return self.transactions.database

    @database.setter
    def database(self, database: Database) -> None:
        self.transactions.database = database

    @property
    def executor(self) -> Any:
        return self.runner.executor

    @property
    def runtime_executors(self) -> Mapping[str, Any]:
        return self.runner.runtime_executors

    @property
    def stdin_relays(self) -> StdinRelays:
        """The replica's relays of interactive standard input (``/v1/ws``), made at first use:
        a replica that never serves a WebSocket starts no relay actor."""
        if self._stdin_relays is None:
            self._stdin_relays = StdinRelays()
        return self._stdin_relays

    @property
    def audit_dropped(self) -> int:
        return self.auditor.dropped

    @property
    def _audit_tasks(self) -> set[Any]:
        return self.auditor.tasks

    @property
    def _auth_cache(self) -> Any:
        return self.auth.valid

    @property
    def _clock(self) -> Callable[[], float]:
        return self.auth.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self.auth.clock = clock

    # --- life cycle

    def start(self) -> None:
        """Start the replica's background duties (on its event loop): heartbeats, takeover,
        the session sweeper (and the first session hosts)."""
        self.keeper.start()
        if self.sweeper is not None:
            self.sweeper.start()

    async def aclose(self, timeout_s: float) -> None:
        """Let background runs finish (up to ``timeout_s``), then release the connections.
        Sessions live on: they are the hosts', and outlive this replica."""
        await self.keeper.stop()
        if self.sweeper is not None:
            await self.sweeper.stop()
        await self.background.drain(timeout_s)
        if self._stdin_relays is not None:
            self._stdin_relays.shutdown()  # its actor: no run of this replica reads it now
        await self.auditor.aclose()
        await self.limiter.aclose()
        await self.cache.aclose()
        await self.transactions.aclose()

    # --- the RecoveryHost of the keeper

    async def db(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in one transaction, off the event loop."""
        return await self.transactions(work)

    def background_room(self) -> int:
        """How many more background runs this replica takes (its share of the bounded queue)."""
        return self.background.room()

    def resume(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """Run a queued execution accepted by another (dead) instance, in the background."""
        self.background.spawn(self._resume(execution_id, request, batch_id))

    async def _resume(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        try:
            await self.executions.run_in_background(execution_id, request, None)
        finally:
            if batch_id is not None:
                await self.batches.refresh(batch_id)

    async def fail(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """End an execution whose run was lost (its instance died) as ``internal_error``."""
        await self.results.finish(execution_id, ExecutionRecord.internal_error(request))
        if batch_id is not None:
            await self.batches.refresh(batch_id)

    # --- what the routes call

    async def authenticate(
        self, presented: str | None, *, source_address: str | None = None
    ) -> ApiKey:
        """The live key presented (:meth:`Authenticator.authenticate`)."""
        return await self.auth.authenticate(presented, source_address)

    async def hit(self, key: ApiKey, executions: int = 1) -> RateDecision:
        """Count a request against the key's rate; :meth:`admit` says whether it may pass."""
        return await self.admission.hit(key, executions)

    def admit(self, decision: RateDecision, key: ApiKey | None = None) -> None:
        """Raise the refusal ``decision`` stands for (429 or 503), if any."""
        self.admission.admit(decision, key)

    async def check_policy(self, key: ApiKey, body: ExecutionBody) -> None:
        """Raise :class:`PolicyViolationError` (audited) if the import policy refuses ``body``."""
        await self.admission.check_policy(key, body)

    @property
    def max_pending_batch_items(self) -> int:
        return self.admission.max_pending_batch_items

    @property
    def max_pending_batch_items_per_key(self) -> int:
        return self.admission.max_pending_batch_items_per_key

    def check_batch_room(self, key: ApiKey, items: int) -> None:
        """Raise if this replica cannot take ``items`` more of ``key``'s batch items."""
        self.admission.check_batch_room(key, items)

    async def get(self, key: ApiKey, execution_id: str, wait_s: float = 0.0) -> ExecutionRecord:
        """The key's execution; with ``wait_s``, once terminal or after that long."""
        return await self.executions.get(key, execution_id, wait_s)

    async def artifact(self, key: ApiKey, execution_id: str, path: str) -> Artifact:
        """An artifact of the key's execution (:meth:`Executions.artifact`)."""
        return await self.executions.artifact(key, execution_id, path)

    async def runtimes(self) -> list[RuntimeInfo]:
        """Every runtime programs may run in, ``DEFAULT_RUNTIME`` flagged. Built once: the
        first call asks the sandbox's interpreter its version, off the event loop."""
        if self._runtimes is None:
            python = self.settings.sandbox_config().python_executable
            self._runtimes = await asyncio.to_thread(
                runtime_catalog, self.settings.default_runtime, python
            )
        return self._runtimes

    async def page(self, key: ApiKey, limit: int, cursor: str | None) -> ExecutionPage:
        """A page of the key's executions, newest first."""
        return await self.executions.page(key, limit, cursor)

    async def stream_execution(
        self,
        key: ApiKey,
        body: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> EventStream:
        """Accept one execution and stream it (:meth:`Executions.open_stream`): refusals are
        raised here; the stream's events are the output as it comes, the stored record last."""
        return await self.executions.open_stream(
            key, body, idempotency_key=idempotency_key, request_id=request_id, stdin=stdin
        )

    async def create_batch(
        self, key: ApiKey, body: BatchCreate, *, request_id: str | None = None
    ) -> BatchAccepted:
        """Accept a batch (:meth:`Batches.create`): stored at once, its items queued."""
        return await self.batches.create(key, body, request_id=request_id)

    async def batch(self, key: ApiKey, batch_id: str, wait_s: float = 0.0) -> BatchAnswer:
        """The key's batch with its records in request order (:meth:`Batches.get`)."""
        return await self.batches.get(key, batch_id, wait_s)

    # --- sessions

    def _sessions(self) -> Sessions:
        if self.sessions is None:
            raise UnavailableError(NO_SESSIONS_RETRY_AFTER_S, "no session hosts on this replica")
        return self.sessions

    async def create_session(
        self, key: ApiKey, body: SessionCreate, *, request_id: str | None = None
    ) -> SessionInfo:
        """Start a session (:meth:`Sessions.create`): reserved under the key's cap, placed."""
        return await self._sessions().create(key, body, request_id=request_id)

    async def session(self, key: ApiKey, session_id: str) -> SessionInfo:
        """The key's session, as its host says it is now."""
        return await self._sessions().get(key, session_id)

    async def session_page(self, key: ApiKey, limit: int, cursor: str | None) -> SessionPage:
        """A page of the key's sessions, newest first."""
        return await self._sessions().page(key, limit, cursor)

    async def delete_session(self, key: ApiKey, session_id: str) -> None:
        """End the key's session at once (nothing if it had ended)."""
        await self._sessions().delete(key, session_id)

    async def session_call(
        self, key: ApiKey, session_id: str, body: SessionCall, *, request_id: str | None = None
    ) -> ExecutionRecord:
        """Run one call in the key's session; its record, stored with ``session_id``."""
        return await self._sessions().call(key, session_id, body, request_id=request_id)

    async def stream_session_call(
        self,
        key: ApiKey,
        session_id: str,
        body: SessionCall,
        *,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> EventStream:
        """One call in the key's session, streamed (:meth:`Sessions.open_call_stream`)."""
        return await self._sessions().open_call_stream(
            key, session_id, body, request_id=request_id, stdin=stdin
        )
