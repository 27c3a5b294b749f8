"""A pool of sandbox slots: the engine's entry point.

``SandboxPool.run`` is thread-safe and blocks until a slot is free and the job is over;
the Ray deployment calls it from worker threads. Slots that die are restarted on
their next use; a job that hits a dead slot ends as ``internal_error``. A request with
``cases`` runs as one job per case, spread over the slots (``executors/_evaluation.py``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self

from executors._config import SandboxConfig
from executors._errors import PoolClosedError, SandboxStartError, SandboxUnavailableError
from executors._evaluation import run_cases
from executors._isolation import IsolationReport, enforce_isolation_policy, isolation_report
from executors._metrics import NO_METRICS, ExecutorMetrics
from executors._models import ExecutionRecord, ExecutionRequest
from executors._sandbox import (
    JobCgroup,
    KillReason,
    LiveIO,
    SeccompUnavailable,
    Slot,
    SlotSettings,
    compile_filter,
    launch_mode,
    open_job_cgroup,
    remove_dead_pools_groups,
    remove_group,
)

__all__ = ["SandboxPool", "refuse_without_bubblewrap"]

logger = logging.getLogger("executors.pool")

WITHOUT_BUBBLEWRAP = ("bubblewrap", "read_only_root", "uts_namespace")
"""The layers only bubblewrap provides: missing for certain when it is not installed."""


def refuse_without_bubblewrap(config: SandboxConfig) -> None:
    """Raise :class:`SandboxUnavailableError` if ``config`` requires full isolation and this
    host has no bubblewrap (the layers only it gives would be missing). What a pool checks
    first; a service may check it before it starts anything else."""
    if config.require_full_isolation and launch_mode(config.bwrap_path) == "direct":
        raise SandboxUnavailableError(list(WITHOUT_BUBBLEWRAP))


class SandboxPool:
    """``slots`` sandboxes that run one job each at a time."""

    def __init__(self, config: SandboxConfig, slots: int) -> None:
        if slots < 1:
            raise ValueError("a pool needs at least one slot")
        self.config = config
        self.size = slots
        self._slots: list[Slot] = []
        self._free: queue.Queue[Slot] = queue.Queue()
        self._busy: set[Slot] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._group = f"exec-agent-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._cgroups: list[JobCgroup] = []
        # Slots start on this one long-lived thread: bubblewrap's --die-with-parent
        # follows the thread that started it, which must outlive the slot.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-launcher")
        self.isolation: IsolationReport | None = None
        self.metrics: ExecutorMetrics = NO_METRICS  # set before start() to report

    # --- life cycle -------------------------------------------------------------

    def start(self) -> IsolationReport:
        """Start every slot; refuse (when configured to) if a layer is missing."""
        errors: list[str] = []
        refuse_without_bubblewrap(self.config)
        try:
            seccomp = compile_filter()
        except SeccompUnavailable as exc:
            seccomp, errors = b"", [f"seccomp: {exc}"]
        if os.geteuid() == 0:
            for gone in remove_dead_pools_groups(self.config.cgroup_parent):
                logger.warning("removed the cgroups of a pool whose process died: %s", gone)
        probes = []
        for index in range(self.size):
            cgroup = self._open_cgroup(index, errors)
            slot = Slot(
                SlotSettings(
                    index=index,
                    python=self.config.python_executable,
                    slot_uid=self.config.slot_uid_base + index,
                    seccomp_bpf=seccomp,
                    default_runtime=self.config.default_runtime,
                    runtimes_dir=self.config.runtimes_dir,
                    bwrap=self.config.bwrap_path,
                    start_timeout_s=self.config.start_timeout_s,
                ),
                cgroup,
            )
            slot.metrics = self.metrics
            slot.launch = self._launch
            try:
                probes.append(slot.start())
            except SandboxStartError:
                self.metrics.start_failed()
                self.close()
                raise
            self._slots.append(slot)
            self._free.put(slot)
        self.metrics.slots(0, self.size)
        self.isolation = self._report(probes[0], errors)
        self._enforce_policy(self.isolation)
        return self.isolation

    def _open_cgroup(self, index: int, errors: list[str]) -> JobCgroup | None:
        if os.geteuid() != 0:
            return None
        try:
            cgroup = open_job_cgroup(f"{self._group}/slot-{index}", self.config.cgroup_parent)
        except OSError as exc:
            if not errors or "cgroup" not in errors[-1]:
                errors.append(f"cgroup: {exc}")
            return None
        self._cgroups.append(cgroup)
        return cgroup

    def _report(self, probe: dict[str, Any], errors: list[str]) -> IsolationReport:
        slot = self._slots[0]
        if slot.plan is None:
            raise SandboxStartError(0, "slot started without a launch plan")
        return isolation_report(slot.plan, probe, cgroup=slot.cgroup is not None, errors=errors)

    def _enforce_policy(self, report: IsolationReport) -> None:
        try:
            enforce_isolation_policy(report, self.config)
        except SandboxUnavailableError:
            self.close()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, grace_s: float = 0.0) -> None:
        """Stop taking work; let running jobs finish for ``grace_s``, then kill them."""
        with self._lock:
            self._closed = True
            deadline = time.monotonic() + grace_s
            while self._busy and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            for slot in self._busy:
                slot.request_kill(KillReason.SHUTDOWN)
            while self._busy:
                self._idle.wait(1.0)
        for slot in self._slots:
            slot.close()
        for cgroup in self._cgroups:
            cgroup.remove()
        remove_group(self._group, self.config.cgroup_parent)
        self._slots, self._cgroups = [], []
        self._launcher.shutdown(wait=False)
        self.metrics.slots(0, 0)

    # --- work -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive_slots(self) -> int:
        """Slots whose sandbox is running (a dead one restarts on its next use)."""
        return sum(slot.alive() for slot in self._slots)

    @property
    def free_slots(self) -> int:
        return self._free.qsize()

    def zygote_pids(self) -> dict[str, list[int]]:
        """Runtime → the pids of its zygotes (one per slot that started it), for measurements."""
        pids: dict[str, list[int]] = {}
        for slot in self._slots:
            for runtime, server in slot.servers.items():
                if server.alive():
                    pids.setdefault(runtime, []).append(server.zygote_pid)
        return pids

    @property
    def busy_slots(self) -> int:
        return len(self._busy)

    def run(
        self,
        request: ExecutionRequest,
        cancel: threading.Event | None = None,
        live: LiveIO | None = None,
    ) -> ExecutionRecord:
        """Run ``request`` in the next free slot (waiting for one) and return its record.

        With ``cases``, one job per case, as many at once as there are slots.
        ``cancel``, set by another thread, kills the run (or skips it if it has not
        started): the record then says ``internal_error``, as the service stopped it.
        ``live``: the program's output as it writes it, and its standard input as it comes
        (not for ``cases``, whose runs each have their own input and output).
        """
        if request.runtime is None:
            request = request.model_copy(update={"runtime": self.config.default_runtime})
        if request.cases is not None:
            return run_cases(request, self._run_job, self.size, cancel)
        return self._run_job(request, cancel, live)

    def _run_job(
        self,
        request: ExecutionRequest,
        cancel: threading.Event | None,
        live: LiveIO | None = None,
    ) -> ExecutionRecord:
        slot = self._acquire()
        try:
            if not slot.alive():
                self._restart(slot)
            return slot.run(request, cancel, live)
        except SandboxStartError:
            self.metrics.start_failed()
            logger.exception("sandbox slot %d could not be restarted", slot.settings.index)
            return ExecutionRecord.internal_error(request)
        finally:
            self._release(slot)

    def _acquire(self) -> Slot:
        while True:
            self._raise_if_closed()
            try:
                slot = self._free.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._lock:
                if not self._closed:
                    self._busy.add(slot)
                    self.metrics.slots(len(self._busy), self.size - len(self._busy))
                    return slot
            self._free.put(slot)

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise PoolClosedError("the pool is closed")

    def _release(self, slot: Slot) -> None:
        with self._lock:
            self._busy.discard(slot)
            self.metrics.slots(len(self._busy), self.size - len(self._busy))
            self._idle.notify_all()
        self._free.put(slot)

    def _restart(self, slot: Slot) -> None:
        logger.warning("restarting sandbox slot %d", slot.settings.index)
        slot.close()
        slot.start()

    def _launch(self, start: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``start`` (a zygote's) on the launcher thread, which outlives every slot:
        bubblewrap's --die-with-parent follows the thread that started it."""
        return self._launcher.submit(start).result()
