"""Sessions: live interpreters on the engine's session hosts, as the API knows them.

The hosts (Ray actors, :class:`executors.SessionHosts`) hold the interpreters and are the truth
on whether one lives; the database holds what the API answers and pages, and counts the key's
active sessions against ``MAX_SESSIONS_PER_KEY``. Any ingress replica reaches any session
through its row (``host``: the actor's name), so a session outlives the replica that made it.

A session is reserved (its row, under the key's cap) before it is placed, then placed, then its
row records where. A call's execution is inserted ``running`` and finished once, like any other,
with ``session_id``; a call the host refuses (busy: 409, ended: 410) leaves no execution (a
streamed call too: :meth:`Sessions.open_call_stream` waits for its first event). Rows
of sessions that ended on their host (idle, ttl, lost) are ended by :meth:`Sessions.sweep`,
which every replica runs every ``SESSION_SWEEP_INTERVAL_S`` (:mod:`.session_rows`: ending is a
conditional UPDATE, so replicas sweeping at once end each row once, and only one counts it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from executors import (
    SESSION_WIDE_LIMITS,
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    Limits,
    SessionBusyError,
    SessionEndedError,
    SessionHosts,
    SessionPlacementError,
    SessionSpec,
    SessionState,
    SessionStatus,
    buffered,
    record_event,
)
from serve_app.api import SessionCall, SessionCreate, SessionInfo
from serve_app.db import executions, sessions
from serve_app.db.models import ApiKey, Execution, LiveSession
from serve_app.errors import (
    NotFoundError,
    SessionInUseError,
    SessionLimitError,
    SessionTerminatedError,
    UnavailableError,
)
from serve_app.http._metrics import IngressMetrics
from serve_app.http.service.executions import Parts
from serve_app.http.service.runner import Event
from serve_app.http.service.session_rows import SessionRows, ended_as
from serve_app.http.service.streams import EventStream, closing, primed
from serve_app.ratelimit import Lease
from serve_app.settings import Settings

if TYPE_CHECKING:
    from executors import StdinChannel

__all__ = ["PLACEMENT_RETRY_AFTER_S", "SessionPage", "Sessions", "terminated_error"]

logger = logging.getLogger(__name__)

PLACEMENT_RETRY_AFTER_S = 5.0
"""``Retry-After`` of a 503 when no session host could take a session (a node may be coming)."""


@dataclass(frozen=True)
class SessionPage:
    """One page of a key's sessions, newest first."""

    items: list[SessionInfo]
    next_cursor: str | None

    def to_api(self) -> dict[str, Any]:
        return {"items": [item.to_api() for item in self.items], "next_cursor": self.next_cursor}


def _ended(exc: SessionEndedError) -> sessions.Ended:
    """How a session the host says has ended ends its row."""
    return sessions.Ended(EndReason(exc.reason), datetime.now(UTC), exc.detail or None)


def terminated_error(session_id: uuid.UUID, reason: str, message: str | None) -> Exception:
    """The 410 of a call or read on a session that ended (``message``: the host's why)."""
    said = f"session {session_id} has ended ({reason})"
    return SessionTerminatedError(f"{said}: {message}" if message else said, reason)


class Sessions:
    """One replica's sessions over its :class:`executors.SessionHosts` (``hosts``)."""

    def __init__(
        self, parts: Parts, settings: Settings, metrics: IngressMetrics, hosts: SessionHosts
    ) -> None:
        self._parts = parts
        self._metrics = metrics
        self._hosts = hosts
        self._cap = settings.max_sessions_per_key
        self._default_limits = settings.default_limits()
        self._max_limits = settings.max_limits()
        self.rows = SessionRows(
            parts.transact, metrics, hosts, settings.session_placement_timeout_s
        )

    @property
    def hosts(self) -> SessionHosts:
        return self._hosts

    # --- create

    async def create(
        self, key: ApiKey, body: SessionCreate, *, request_id: str | None = None
    ) -> SessionInfo:
        """Reserve a session under the key's cap (429 past it, once the key's active rows
        were checked with their hosts), place it (503 if no host can take it), store where."""
        limits = body.limits_request().resolve(self._default_limits, self._max_limits)
        new = sessions.NewSession(
            id=uuid.uuid4(),
            runtime=body.runtime,
            limits=limits,
            idle_timeout_s=body.idle_timeout_s,
            ttl_s=body.ttl_s,
            request_id=request_id,
        )
        if await self._reserve(key, new) is None:
            await self.rows.reconcile(key.id)  # reaped ones must not count
            if await self._reserve(key, new) is None:
                raise SessionLimitError(self._cap)
        # Placed even if the client goes away meanwhile: the row then says where it lives.
        row = await self._parts.background.outlive(self._place(new))
        return sessions.to_info(row)

    async def _reserve(self, key: ApiKey, new: sessions.NewSession) -> LiveSession | None:
        return await self._parts.transact(
            lambda session: sessions.reserve(session, key.id, new, self._cap)
        )

    async def _place(self, new: sessions.NewSession) -> LiveSession:
        spec = SessionSpec(
            id=new.id,
            runtime=new.runtime,
            limits=new.limits,
            idle_timeout_s=new.idle_timeout_s,
            ttl_s=new.ttl_s,
        )
        try:
            state = await self._hosts.create(spec)
        except BaseException as exc:
            await self._parts.transact(lambda session: sessions.forget_unplaced(session, new.id))
            if isinstance(exc, SessionPlacementError):
                raise UnavailableError(PLACEMENT_RETRY_AFTER_S, str(exc)) from None
            raise
        placed = sessions.Placed(
            host=state.host,
            node_id=state.node_id,
            created_at=state.created_at,
            last_used_at=state.last_used_at,
            expires_at=state.expires_at,
        )
        row = await self._parts.transact(
            lambda session: sessions.record_placement(session, new.id, placed)
        )
        if row is None:  # deleted while it was placed: it must not live on unseen
            ended = await self._hosts.end(state.host, new.id, EndReason.DELETED)
            raise terminated_error(new.id, EndReason.DELETED.value, ended.message)
        self._metrics.session_created()
        return row

    # --- read

    async def _row(self, key: ApiKey, session_id: str) -> LiveSession:
        try:
            wanted = uuid.UUID(session_id)
        except ValueError:
            raise NotFoundError("no such session") from None
        row = await self._parts.transact(
            lambda session: sessions.get_session(session, key.id, wanted)
        )
        if row is None:
            raise NotFoundError("no such session")
        return row

    async def get(self, key: ApiKey, session_id: str) -> SessionInfo:
        """The key's session, brought up to date with its host (an idle one reaped there
        reads as ended here at once, not at the next sweep)."""
        row = await self._row(key, session_id)
        if row.status is SessionStatus.ACTIVE and row.host is not None:
            await self.rows.refresh([row])
            row = await self._row(key, session_id)
        return sessions.to_info(row)

    async def page(self, key: ApiKey, limit: int, cursor: str | None) -> SessionPage:
        """A page of the key's sessions, newest first (as the last sweep left them)."""
        page = await self._parts.transact(
            lambda session: sessions.list_sessions(session, key.id, limit=limit, cursor=cursor)
        )
        return SessionPage([sessions.to_info(row) for row in page.items], page.next_cursor)

    # --- delete

    async def delete(self, key: ApiKey, session_id: str) -> None:
        """End the key's session at once (its interpreter killed); nothing if it had ended."""
        row = await self._row(key, session_id)
        if row.status is not SessionStatus.ACTIVE:
            return
        ended = sessions.Ended(EndReason.DELETED, datetime.now(UTC), "deleted by its client")
        if row.host is not None:
            state = await self._hosts.end(row.host, row.id, EndReason.DELETED)
            if state.status is SessionStatus.TERMINATED:
                ended = ended_as(state)  # ended before (idle, exited): that is why it ended
        await self.rows.end([(row.id, ended)])

    # --- calls

    async def call(
        self, key: ApiKey, session_id: str, body: SessionCall, *, request_id: str | None = None
    ) -> ExecutionRecord:
        """Run ``body`` in the key's session: its record, stored with ``session_id``."""
        row, request = await self._callable(key, session_id, body)
        lease = await self._parts.admission.lease(key)
        try:
            return await self._run(key, row, request, request_id)
        finally:
            await self._parts.admission.release(lease)

    async def open_call_stream(
        self,
        key: ApiKey,
        session_id: str,
        body: SessionCall,
        *,
        request_id: str | None = None,
        stdin: StdinChannel | None = None,
    ) -> EventStream:
        """:meth:`call`, streamed: every refusal raised here (409 busy, 410 ended among them:
        the call's first event is awaited first), then the call's output as it comes, through
        this replica's bounded buffer, and its stored record last. Closing the stream early
        leaves the call running to its limits on its host (as a :meth:`call` whose client went
        away); its execution ends ``internal_error``. ``stdin``: standard input sent while it
        runs (:class:`executors.StdinChannel`)."""
        row, request = await self._callable(key, session_id, body)
        lease = await self._parts.admission.lease(key)
        try:
            inserted = await self._insert_call(key, row, request, request_id)
            events = self._streamed(row, request, inserted, lease, stdin)
            lease = None  # the stream gives it back, whatever becomes of it
            return await EventStream.open(inserted.id, events)
        finally:
            await self._parts.admission.release(lease)

    async def _callable(
        self, key: ApiKey, session_id: str, body: SessionCall
    ) -> tuple[LiveSession, ExecutionRequest]:
        """The key's session that may take ``body`` now, and the call's request (410 if it
        ended, 409 while it is still being placed, 422 if the import policy refuses it)."""
        row = await self._row(key, session_id)
        if row.status is not SessionStatus.ACTIVE:
            reason = row.terminated_reason or EndReason.LOST
            raise terminated_error(row.id, str(reason), row.message)
        if row.host is None:
            raise SessionInUseError(f"session {row.id} is still being started")
        await self._parts.admission.check_policy(key, body)
        return row, self._request(row, body)

    def _request(self, row: LiveSession, body: SessionCall) -> ExecutionRequest:
        """The call's request: its own limits over the session's (whose session-wide caps
        hold whatever the call asks)."""
        own = body.limits_request().resolve(Limits.model_validate(row.limits), self._max_limits)
        session_wide = {name: row.limits[name] for name in SESSION_WIDE_LIMITS}
        limits = Limits.model_validate({**own.model_dump(), **session_wide})
        return ExecutionRequest(
            code=body.code, stdin=body.stdin, files=body.files, runtime=row.runtime, limits=limits
        )

    async def _insert_call(
        self, key: ApiKey, row: LiveSession, request: ExecutionRequest, request_id: str | None
    ) -> Execution:
        return await self._parts.transact(
            lambda session: executions.insert_execution(
                session,
                key.id,
                request,
                request_id=request_id,
                running=True,
                owner=self._parts.owner,
                session_id=row.id,
            )
        )

    async def _run(
        self, key: ApiKey, row: LiveSession, request: ExecutionRequest, request_id: str | None
    ) -> ExecutionRecord:
        host = row.host
        assert host is not None  # checked by the caller  # noqa: S101
        inserted = await self._insert_call(key, row, request, request_id)
        results = self._parts.results
        try:
            called = await self._hosts.call(host, row.id, request)
        except (SessionBusyError, SessionEndedError) as exc:
            raise await self._refused(row, inserted, request, exc) from None
        except asyncio.CancelledError:
            # The client went away (or the replica is stopping): the record still ends.
            failed = ExecutionRecord.internal_error(request)
            self._parts.background.spawn(results.finish(inserted.id, failed))
            raise
        except Exception:
            await results.finish(inserted.id, ExecutionRecord.internal_error(request))
            raise
        return await self._finish_call(row, inserted, called.record, called.state)

    async def _streamed(
        self,
        row: LiveSession,
        request: ExecutionRequest,
        inserted: Execution,
        lease: Lease | None,
        stdin: StdinChannel | None,
    ) -> AsyncGenerator[Event, None]:
        """The events of a call in ``row``'s session, its stored record last; ``lease`` given
        back at the end. The first event raises the host's refusal (busy, ended)."""
        host = row.host
        assert host is not None  # checked by the caller  # noqa: S101
        limit = self._parts.stream_buffer_bytes
        settled = False  # the execution is finished (or forgotten): nothing left to end it
        try:
            try:
                events = await primed(
                    self._hosts.call_stream(host, row.id, request, stdin=stdin, buffer_bytes=limit)
                )
            except (SessionBusyError, SessionEndedError) as exc:
                settled = True
                raise await self._refused(row, inserted, request, exc) from None
            last: Event | None = None
            async with closing(buffered(events, max_bytes=limit)) as output:
                try:
                    async for event in output:
                        if event.get("type") == "record":
                            last = event
                            break
                        yield event
                except SessionEndedError as exc:  # its host died under it
                    await self.rows.end([(row.id, _ended(exc))])
                except Exception as exc:  # noqa: BLE001 - the stream ends with internal_error
                    logger.error("session %s: call failed: %s", row.id, type(exc).__name__)
            settled = True
            if last is None:
                record, state = ExecutionRecord.internal_error(request), None
            else:
                record = ExecutionRecord.model_validate(last.get("record"))
                state = last.get("state")
            finished = await self._finish_call(row, inserted, record, state)
            await self._parts.admission.release(lease)
            lease = None
            yield record_event(finished)
        finally:
            if not settled:  # closed early (the client went away): the record still ends
                failed = ExecutionRecord.internal_error(request)
                self._parts.background.spawn(self._parts.results.finish(inserted.id, failed))
            await self._parts.admission.release(lease)

    async def _refused(
        self,
        row: LiveSession,
        inserted: Execution,
        request: ExecutionRequest,
        refusal: SessionBusyError | SessionEndedError,
    ) -> Exception:
        """The service's error for a call its host refused; its execution is forgotten (and
        the session's row ended if the session has)."""
        await self._parts.results.discard(inserted.id, request)
        if isinstance(refusal, SessionBusyError):
            return SessionInUseError(f"session {row.id} is running another call")
        await self.rows.end([(row.id, _ended(refusal))])
        return terminated_error(row.id, refusal.reason, refusal.detail or None)

    async def _finish_call(
        self,
        row: LiveSession,
        inserted: Execution,
        record: ExecutionRecord,
        state: SessionState | None,
    ) -> ExecutionRecord:
        """Store a call's record (with ``session_id``); the session's ``state`` after the call
        is recorded afterwards."""
        record = record.model_copy(update={"session_id": row.id})
        finished = await self._parts.results.finish(inserted.id, record, inserted)
        if state is not None:
            # Off the answer's path: a read asks the host anyway, the next call finds out itself.
            self._parts.background.detach(self._apply_quietly(state))
        return finished

    async def _apply_quietly(self, state: SessionState) -> None:
        try:
            await self.rows.apply([state])
        except Exception:  # the sweeper records it later: nothing is lost but time
            logger.warning("session %s: state not recorded after a call", state.id, exc_info=True)

    async def sweep(self) -> int:
        """Bring every active row up to date with its host (:meth:`SessionRows.sweep`)."""
        return await self.rows.sweep()
