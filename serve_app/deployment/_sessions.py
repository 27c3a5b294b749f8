"""Sessions at the end of ``exec-agent serve``: every interpreter ended, every row too.

The ingress replicas leave sessions alive when they stop (a session outlives the replica that
made it); the service as a whole stopping ends them all: the hosts end each one (``shutdown``)
and stop, then the database records it, so that no row says ``active`` of an interpreter gone.
Run after the application is deleted, when no call can start any more. Not counted in
``exec_agent_sessions_ended_total``: that is the replicas', gone by then with their metrics.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from executors import SessionState
    from serve_app.db import Database
    from serve_app.settings import Settings

__all__ = ["end_all_sessions"]

logger = logging.getLogger(__name__)

HOSTS_SHUTDOWN_TIMEOUT_S = 30.0
"""Longest wait for the hosts to end their sessions: a host never placed (no node had room)
must not keep ``exec-agent serve`` from stopping; the rows are ended all the same."""


def end_all_sessions(settings: Settings, label_selector: dict[str, str] | None = None) -> int:
    """End every session on every host and record it; how many rows this ended."""
    from executors import SessionHosts
    from serve_app.db import Database

    options = settings.session_host_options(label_selector=label_selector)
    hosts = SessionHosts(settings.sandbox_config(), options)
    try:
        states = asyncio.run(asyncio.wait_for(hosts.shutdown(), HOSTS_SHUTDOWN_TIMEOUT_S))
    except Exception:  # the rows are ended all the same: their hosts are going away
        logger.exception("session hosts: shutdown failed")
        states = []
    database = Database.from_settings(settings)
    try:
        return _end_rows(database, states)
    finally:
        database.dispose()


def _end_rows(database: Database, states: list[SessionState]) -> int:
    from executors import EndReason, SessionStatus
    from serve_app.db import sessions

    now = datetime.now(UTC)
    reported = {
        state.id: sessions.Ended(
            state.terminated_reason or EndReason.SHUTDOWN,
            state.terminated_at or now,
            state.message,
        )
        for state in states
        if state.status is SessionStatus.TERMINATED
    }
    shutdown = sessions.Ended(EndReason.SHUTDOWN, now, "the service shut down")
    with database.session() as session:
        rows = sessions.active_sessions(session, placed_before=now)
        flipped = sessions.end_sessions(
            session, [(row.id, reported.get(row.id, shutdown)) for row in rows]
        )
    return len(flipped)
