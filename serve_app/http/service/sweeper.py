"""The session sweeper of one ingress replica: rows brought up to date with their hosts.

The hosts end idle and expired sessions themselves (the engine's reaper) and lose them with
their actor or node; the database learns of it here, every ``SESSION_SWEEP_INTERVAL_S``. Every
replica sweeps: a sweep only ends rows whose host says they ended, each with a conditional
UPDATE, so sweeps at once on several replicas end each row once (and count it once). At start
the sweeper also has the first session hosts started (``SESSION_HOSTS_MIN``), in the background:
a first session then finds a host waiting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from serve_app.errors import UnavailableError

if TYPE_CHECKING:
    from serve_app.http.service.sessions import Sessions
    from serve_app.settings import Settings

__all__ = ["SessionSweeper"]

logger = logging.getLogger(__name__)


class SessionSweeper:
    """Sweeps every ``SESSION_SWEEP_INTERVAL_S`` while the replica runs."""

    def __init__(self, sessions: Sessions, settings: Settings) -> None:
        self._sessions = sessions
        self.interval_s = settings.session_sweep_interval_s
        self.swept = 0
        """Rows this sweeper ended (for tests and curiosity)."""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Warm the hosts and begin sweeping, on the running event loop."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._warm()), loop.create_task(self._loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _warm(self) -> None:
        try:
            await self._sessions.hosts.warm()
        except Exception:  # a session's creation places a host itself
            logger.warning("session hosts: warming failed", exc_info=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.swept += await self._sessions.sweep()
            except UnavailableError:
                pass  # the database is down: the next sweep catches up
            except Exception:  # the loop must outlive any one failure
                logger.exception("session sweep failed")
