"""Session rows brought up to date with their hosts: ended once, counted once.

The hosts (Ray actors) are the truth on whether a session lives: they end idle and expired
sessions themselves and lose them with their actor or node. Their answers reach the rows here:
a session its host reports ended is ended with a conditional UPDATE (only the replica whose
UPDATE flipped the row counts it in ``exec_agent_sessions_ended_total``), a live one gets its
last use and call count. A reservation never placed (its replica died placing it) ends ``lost``
once ``SESSION_PLACEMENT_TIMEOUT_S`` and a grace are past.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from executors import EndReason, SessionHosts, SessionState, SessionStatus
from serve_app.db import sessions
from serve_app.db.models import LiveSession
from serve_app.http._metrics import IngressMetrics
from serve_app.http.service.transactions import Transact

__all__ = ["PLACEMENT_GRACE_S", "SessionRows", "ended_as"]

logger = logging.getLogger(__name__)

PLACEMENT_GRACE_S = 30.0
"""A reservation still unplaced this long after ``SESSION_PLACEMENT_TIMEOUT_S`` was left by a
replica that died placing it."""


def ended_as(state: SessionState) -> sessions.Ended:
    """How a session its host reports terminated ended, for its row."""
    return sessions.Ended(
        reason=state.terminated_reason or EndReason.LOST,
        at=state.terminated_at or datetime.now(UTC),
        message=state.message,
    )


class SessionRows:
    """Ends and touches session rows from what the hosts say (any replica, any time)."""

    def __init__(
        self,
        transact: Transact,
        metrics: IngressMetrics,
        hosts: SessionHosts,
        placement_timeout_s: float,
    ) -> None:
        self._transact = transact
        self._metrics = metrics
        self._hosts = hosts
        self._stale_after = timedelta(seconds=placement_timeout_s + PLACEMENT_GRACE_S)

    async def end(self, ends: Iterable[tuple[uuid.UUID, sessions.Ended]]) -> None:
        """End these rows; count those this call flipped."""
        wanted = list(ends)
        if not wanted:
            return
        flipped = await self._transact(lambda session: sessions.end_sessions(session, wanted))
        for _, reason in flipped:
            self._metrics.session_ended(reason.value)

    async def apply(self, states: Iterable[SessionState]) -> None:
        """Record what the hosts said: ended ones end, live ones' last use and calls."""
        ends, touches = [], []
        for state in states:
            if state.status is SessionStatus.TERMINATED:
                ends.append((state.id, ended_as(state)))
            else:
                touches.append(state)
        await self.end(ends)
        if touches:

            def touch(session: Session) -> None:
                for state in touches:
                    sessions.touch(
                        session, state.id, last_used_at=state.last_used_at, calls=state.calls
                    )

            await self._transact(touch)

    async def refresh(self, rows: Iterable[LiveSession]) -> int:
        """Ask the hosts of these active rows how their sessions are, and record it; a row
        never placed ends as ``lost``. How many rows ended."""
        by_host: dict[str, list[uuid.UUID]] = defaultdict(list)
        unplaced: list[tuple[uuid.UUID, sessions.Ended]] = []
        for row in rows:
            if row.host is None:
                ended = sessions.Ended(EndReason.LOST, datetime.now(UTC), "never placed")
                unplaced.append((row.id, ended))
            else:
                by_host[row.host].append(row.id)
        await self.end(unplaced)
        answers = await asyncio.gather(
            *(self._hosts.states(host, ids) for host, ids in by_host.items()),
            return_exceptions=True,
        )
        states: list[SessionState] = []
        for host, answer in zip(by_host, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                # A host gone answers `lost` states; this is a host that failed to answer:
                # its rows stay as they are until a later sweep or read.
                logger.warning("session host %s: states not read", host, exc_info=answer)
                continue
            states += answer.values()
        await self.apply(states)
        return len(unplaced) + sum(state.status is SessionStatus.TERMINATED for state in states)

    async def reconcile(self, key_id: int) -> int:
        """Bring the key's active rows up to date with their hosts; how many ended."""
        stale = datetime.now(UTC) - self._stale_after
        rows = await self._transact(
            lambda session: sessions.active_sessions(session, key_id=key_id, placed_before=stale)
        )
        return await self.refresh(rows)

    async def sweep(self) -> int:
        """Bring every active row up to date with its host (idempotent: any replica, any
        time); how many ended."""
        stale = datetime.now(UTC) - self._stale_after
        rows = await self._transact(
            lambda session: sessions.active_sessions(session, placed_before=stale)
        )
        return await self.refresh(rows) if rows else 0
