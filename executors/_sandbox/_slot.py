"""The host side of one sandbox slot: a zygote per runtime (each a
:class:`~executors._sandbox._fork_server.ForkServer`, the default runtime's started with the slot,
the others at their first job), one job cgroup they all fork into, and its jobs, one at a time
(each run by :class:`~executors._sandbox._job.Job`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from executors._errors import SandboxStartError
from executors._metrics import NO_METRICS, ExecutorMetrics
from executors._models import ExecutionRecord, ExecutionRequest, utc_now
from executors._runtimes import RUNTIMES
from executors._sandbox._cgroups import JobCgroup
from executors._sandbox._fork_server import SPARE_ATTEMPTS, ForkServer, ForkServerSettings
from executors._sandbox._job import Job, JobSlot
from executors._sandbox._launch import LaunchPlan
from executors._sandbox._spare import SpareFailed
from executors._sandbox._streams import LiveIO
from executors._sandbox._verdict import KillReason

__all__ = ["Slot", "SlotSettings"]

logger = logging.getLogger("executors.sandbox")

PROCESSES_PER_ZYGOTE = 3
"""Counted by the cgroup's pids.max beside a job: each zygote and its spare's init and program
(built while the job runs)."""


@dataclass(frozen=True)
class SlotSettings:
    index: int
    python: str
    slot_uid: int
    seccomp_bpf: bytes
    default_runtime: str
    runtimes_dir: str
    bwrap: str = "bwrap"
    start_timeout_s: float = 20.0


def _run_here(start: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return start()


class Slot:
    """A sandbox slot. ``run`` is not reentrant; the pool hands a slot to one caller."""

    def __init__(self, settings: SlotSettings, cgroup: JobCgroup | None) -> None:
        self.settings = settings
        self.cgroup = cgroup
        self.servers: dict[str, ForkServer] = {}
        self._kill_requested: KillReason | None = None
        self.metrics: ExecutorMetrics = NO_METRICS  # its pool's
        self.launch: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] = _run_here
        """Where zygotes start (the pool's launcher thread: bubblewrap's --die-with-parent
        follows the thread that started it)."""

    # --- life cycle -------------------------------------------------------------

    @property
    def plan(self) -> LaunchPlan | None:
        default = self.servers.get(self.settings.default_runtime)
        return None if default is None else default.plan

    @property
    def probe(self) -> dict[str, Any]:
        default = self.servers.get(self.settings.default_runtime)
        return {} if default is None else default.probe

    def start(self) -> dict[str, Any]:
        """Start the default runtime's zygote; return its self-test report."""
        return self._start_server(self.settings.default_runtime).probe

    def _start_server(self, runtime: str) -> ForkServer:
        old = self.servers.pop(runtime, None)
        if old is not None:
            old.close()
        s = self.settings
        server = ForkServer(
            ForkServerSettings(
                index=s.index,
                python=s.python,
                slot_uid=s.slot_uid,
                seccomp_bpf=s.seccomp_bpf,
                runtime=RUNTIMES[runtime],
                runtimes_dir=s.runtimes_dir,
                bwrap=s.bwrap,
                start_timeout_s=s.start_timeout_s,
            ),
            self.cgroup,
        )
        server.metrics = self.metrics
        self.launch(server.start)
        self.servers[runtime] = server
        return server

    def _server(self, runtime: str) -> ForkServer:
        """The runtime's zygote, started (or restarted) if need be."""
        server = self.servers.get(runtime)
        if server is None or not server.alive():
            if server is not None:
                logger.warning("restarting the %s zygote of slot %d", runtime, self.settings.index)
            server = self._start_server(runtime)
        return server

    def alive(self) -> bool:
        """Whether the default runtime's zygote runs (the others restart on demand)."""
        default = self.servers.get(self.settings.default_runtime)
        return default is not None and default.alive()

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def request_kill(self, reason: KillReason) -> None:
        """Ask a running job to be killed (from another thread, e.g. at shutdown)."""
        self._kill_requested = reason

    def _job_slot(self, server: ForkServer) -> JobSlot:
        """What a job sees of this slot (its kill requests read as they come)."""
        return JobSlot(
            index=self.settings.index,
            cgroup=self.cgroup,
            zygote_pids=frozenset(s.zygote_pid for s in self.servers.values()),
            namespaces=bool(server.probe.get("namespaces")),
            sandbox_processes=1 + PROCESSES_PER_ZYGOTE * len(self.servers),
            kill_requested=lambda: self._kill_requested,
        )

    # --- one job ----------------------------------------------------------------

    def run(
        self,
        request: ExecutionRequest,
        cancel: threading.Event | None = None,
        live: LiveIO | None = None,
    ) -> ExecutionRecord:
        """Run one job to its end and return its record (never raises for the job's sake).

        Setting ``cancel`` kills the job (within a poll interval): its caller went away.
        ``live``: its output as it comes, and standard input that stays open (a streamed run).
        """
        created_at = utc_now()
        self._kill_requested = None
        runtime = request.runtime or self.settings.default_runtime  # the pool names it
        disk_bytes = request.limits.disk_bytes
        try:
            server = self._server(runtime)
            for attempt in range(SPARE_ATTEMPTS):
                spare = server.take_spare(disk_bytes)
                server.request_spare(disk_bytes)  # built while this job runs
                try:
                    job = Job(self._job_slot(server), request, created_at, spare, cancel, live)
                    return job.run()
                except SpareFailed as exc:  # it died before it took the job: take another
                    self.metrics.start_failed()
                    logger.warning("%s: spare lost (%s)", server.name, exc)
                    if attempt + 1 == SPARE_ATTEMPTS:
                        raise
            raise AssertionError("unreachable")
        except SandboxStartError:
            # A runtime that cannot start: this job's failure is the service's, the slot
            # goes on serving its other runtimes.
            self.metrics.start_failed()
            logger.exception("slot %d could not start runtime %s", self.settings.index, runtime)
            return ExecutionRecord.internal_error(request, created_at)
        except Exception:
            # A broken slot is the service's failure: report it, restart the slot later.
            logger.exception("slot %d failed a job", self.settings.index)
            self.close()
            return ExecutionRecord.internal_error(request, created_at)
