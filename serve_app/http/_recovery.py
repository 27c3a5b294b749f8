"""Executions outlive the replica that accepted them: heartbeats and takeover.

Each ingress replica (service instance) beats every ``INSTANCE_HEARTBEAT_INTERVAL_S`` and
stamps the executions it accepts with its id. A replica that dies (killed, out of memory, its
node lost) leaves executions behind that nobody would finish; once its heartbeat is older than
``INSTANCE_STALE_AFTER_S``, a live replica claims them: queued ones run as if just accepted (a
batch's unfinished items still complete), running ones end as ``internal_error`` (the run died
with its process; running it again could repeat its effects, and the client may have been told
of the failure already). Claims are conditional on the previous owner, so with several replicas
each orphan is taken over once.

A replica only takes over after the database has been reachable to it for a whole
``INSTANCE_STALE_AFTER_S``: after an outage every live replica has beaten again by then, so none
mistakes another that was merely cut off from the database for a dead one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar

from executors import ExecutionStatus
from serve_app.db import executions, instances
from serve_app.errors import UnavailableError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from executors import ExecutionRequest
    from serve_app.db.models import Execution
    from serve_app.settings import Settings

__all__ = ["InstanceKeeper", "RecoveryHost"]

_T = TypeVar("_T")


class RecoveryHost(Protocol):
    """What the keeper needs of the service it keeps alive (the execution service)."""

    settings: Settings

    async def db(self, work: Callable[[Session], _T]) -> _T:
        """``work`` in one transaction, off the event loop."""

    def background_room(self) -> int:
        """How many more background runs the replica takes."""

    def resume(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """Run a queued execution that another (dead) replica accepted."""

    async def fail(
        self, execution_id: uuid.UUID, request: ExecutionRequest, batch_id: uuid.UUID | None
    ) -> None:
        """End an execution whose run died with its replica as ``internal_error``."""


logger = logging.getLogger(__name__)

MAX_TAKEOVERS_PER_SWEEP = 100


class InstanceKeeper:
    """The heartbeat and takeover loop of one ingress replica."""

    def __init__(self, service: RecoveryHost) -> None:
        self.service = service
        self.instance_id = uuid.uuid4().hex
        settings = service.settings
        self.interval_s = settings.instance_heartbeat_interval_s
        self.stale_after = timedelta(seconds=settings.instance_stale_after_s)
        self.taken_over = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin beating (and, in time, taking over) on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        reachable_since: datetime | None = None
        while True:
            now = datetime.now(UTC)
            try:
                await self.service.db(functools.partial(self._beat, now=now))
                reachable_since = reachable_since or now
                if now - reachable_since >= self.stale_after:
                    await self.sweep(now)
            except UnavailableError:
                reachable_since = None
            except Exception:  # the loop must outlive any one failure
                logger.exception("instance %s: heartbeat or takeover failed", self.instance_id)
            await asyncio.sleep(self.interval_s)

    def _beat(self, session: Session, *, now: datetime) -> None:
        instances.heartbeat(session, self.instance_id, now)

    def _claim(self, session: Session, *, orphan: instances.Orphan) -> Execution | None:
        return instances.claim(session, orphan, self.instance_id)

    async def sweep(self, now: datetime) -> int:
        """Take over what dead instances left unfinished; how many executions were taken."""
        dead_before = now - self.stale_after
        room = self.service.background_room()
        if room <= 0:
            return 0
        orphans = await self.service.db(
            lambda session: instances.orphaned_executions(
                session, dead_before=dead_before, limit=min(room, MAX_TAKEOVERS_PER_SWEEP)
            )
        )
        taken = 0
        for orphan in orphans:
            row = await self.service.db(functools.partial(self._claim, orphan=orphan))
            if row is None:
                continue  # finished, or another replica was faster
            taken += 1
            request = executions.to_request(row)
            if row.status is ExecutionStatus.QUEUED:
                logger.warning("execution %s: resumed from dead instance %s", row.id, orphan.owner)
                self.service.resume(row.id, request, row.batch_id)
            else:
                logger.warning(
                    "execution %s: its instance %s died while running it", row.id, orphan.owner
                )
                await self.service.fail(row.id, request, row.batch_id)
        await self.service.db(
            lambda session: instances.forget_dead_instances(session, dead_before=dead_before)
        )
        self.taken_over += taken
        return taken
