"""Audit events of refusals (:mod:`serve_app.db.audit`), written in the background.

Neither a refusal's answer nor a successful request ever waits on (or fails with) that write;
a flood of refusals does not become a flood of writes: beyond ``AUDIT_MAX_PENDING`` writes in
flight, events are dropped (and logged).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.orm import Session

from serve_app.api import current_request_id
from serve_app.db import audit
from serve_app.http.service.transactions import Transact

__all__ = ["AUDIT_MAX_PENDING", "Auditor"]

logger = logging.getLogger(__name__)

AUDIT_MAX_PENDING = 64
"""Audit writes one replica keeps in flight; beyond, events are dropped (and logged)."""
AUDIT_CLOSE_TIMEOUT_S = 5.0


class Auditor:
    """Background audit writes of one replica: call it with an event."""

    def __init__(self, transact: Transact) -> None:
        self._transact = transact
        self.tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def __call__(
        self,
        kind: audit.AuditKind,
        *,
        key_name: str | None = None,
        source_address: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one event in the background (with the current request id); a failed write is
        logged, never raised."""
        if len(self.tasks) >= AUDIT_MAX_PENDING:
            self.dropped += 1
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
                await self._transact(write)
            except Exception as exc:  # noqa: BLE001 - the refusal stands; the event is logged
                logger.warning("audit event %s not stored: %s", kind.value, type(exc).__name__)

        task = asyncio.get_running_loop().create_task(store())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def aclose(self) -> None:
        """Wait (a little) for the writes in flight."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=AUDIT_CLOSE_TIMEOUT_S)
