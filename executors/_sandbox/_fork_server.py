"""The host's handle on one zygote: a fork server for one runtime inside a slot's sandbox.

It starts bubblewrap and the zygote (restarting without per-job namespaces where the kernel
refuses them), moves the zygote into the slot's job cgroup, and asks it for spares: job
sandboxes built ahead of their job (:mod:`executors._sandbox._spare`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executors._errors import RuntimeNotInstalledError, SandboxStartError
from executors._metrics import NO_METRICS, ExecutorMetrics
from executors._runtimes import Runtime
from executors._sandbox._cgroups import JobCgroup
from executors._sandbox._launch import LaunchPlan, UnusableInterpreter, plan_launch
from executors._sandbox._spare import Spare, SpareFailed, receive_spare, recv_with_pid

__all__ = ["ForkServer", "ForkServerSettings"]

logger = logging.getLogger("executors.sandbox")

SPARE_ATTEMPTS = 3
ZYGOTE_OOM_SCORE_ADJ = -1000
"""Never the OOM killer's choice (root sets it: lowering a score needs CAP_SYS_RESOURCE)."""


@dataclass(frozen=True)
class ForkServerSettings:
    index: int
    """The slot's."""
    python: str
    slot_uid: int
    seccomp_bpf: bytes
    runtime: Runtime
    runtimes_dir: str
    bwrap: str = "bwrap"
    start_timeout_s: float = 20.0


class ForkServer:
    """One runtime's zygote in a slot; used by one job at a time (the slot's)."""

    def __init__(self, settings: ForkServerSettings, cgroup: JobCgroup | None) -> None:
        self.settings = settings
        self.cgroup = cgroup
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.plan: LaunchPlan | None = None
        self.probe: dict[str, Any] = {}
        self._stderr_reader: threading.Thread | None = None
        self.zygote_pid = 0
        self._spare_pending = False
        self._spare_kind: tuple[int, bool] = (0, False)
        """The pending spare's disk size, and whether it is a session's."""
        self.metrics: ExecutorMetrics = NO_METRICS  # its pool's

    @property
    def name(self) -> str:
        return f"slot {self.settings.index} ({self.settings.runtime.name})"

    # --- life cycle -------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start bubblewrap and the zygote; return the zygote's self-test report.

        If the kernel refuses per-job namespaces the zygote restarts without them, so the
        service runs with what the host allows; the report says what is missing.
        """
        runtime = self.settings.runtime
        try:
            site_packages = runtime.site_packages(self.settings.runtimes_dir)
        except RuntimeNotInstalledError as exc:
            raise SandboxStartError(self.settings.index, str(exc)) from exc
        init = {
            "namespaces": True,
            "seccomp_bpf": self.settings.seccomp_bpf,
            "cgroup_memory": self.cgroup is not None,
            "cap_last_cap": int(Path("/proc/sys/kernel/cap_last_cap").read_text()),
            "runtime": {"preload": list(runtime.preload), "env": dict(runtime.env)},
        }
        runtime_root = None if site_packages is None else str(site_packages.parent)
        self._launch(init, runtime_root)
        if not self.probe.get("namespaces"):
            error = self.probe.get("error")
            self.close()
            self._launch({**init, "namespaces": False}, runtime_root)
            self.probe["namespaces_error"] = error
        return self.probe

    def _launch(self, init: dict[str, Any], runtime_root: str | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.plan = plan_launch(
                self.settings.python,
                theirs.fileno(),
                self.settings.slot_uid,
                self.settings.bwrap,
                runtime_root=runtime_root,
            )
            self.process = subprocess.Popen(
                self.plan.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env=self.plan.env,  # never the service's own: no secret reaches a slot
            )
        except (OSError, UnusableInterpreter) as exc:
            ours.close()
            raise SandboxStartError(self.settings.index, str(exc)) from exc
        finally:
            theirs.close()
        self.control = ours
        self._stderr_reader = threading.Thread(
            target=self._log_stderr, daemon=True, name=f"slot-{self.settings.index}-stderr"
        )
        self._stderr_reader.start()
        seen_at = self.plan.runtime_root
        init = {
            **init,
            "new_net": self.plan.mode == "direct",
            "workdir": self.plan.workdir,
            "runtime": {**init["runtime"], "path": seen_at and f"{seen_at}/site-packages"},
        }
        ours.settimeout(self.settings.start_timeout_s)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            ours.sendall(marshal.dumps(init))
            reply, self.zygote_pid = recv_with_pid(ours, 65536)
        except OSError as exc:
            self.close()
            raise SandboxStartError(self.settings.index, f"no answer from zygote: {exc}") from exc
        if not reply:
            self.close()
            raise SandboxStartError(self.settings.index, "zygote exited during start-up")
        ours.settimeout(None)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)  # room for SCM_RIGHTS only
        self.probe = json.loads(reply)
        if self.probe.get("preload_error"):
            self.close()
            raise SandboxStartError(
                self.settings.index,
                f"runtime {self.settings.runtime.name}: {self.probe['preload_error']}",
            )
        if self.cgroup is not None:
            self._adopt_zygote(self.cgroup)

    def _adopt_zygote(self, cgroup: JobCgroup) -> None:
        """Move the zygote into the job cgroup once, so every job is born inside it.

        Moving a process between cgroups is slow (milliseconds); a job forked inside costs
        nothing. The zygote's memory so far (its preloaded modules) stays charged where it was
        allocated; its jobs volunteer as the OOM killer's first choice, so it never picks the
        zygote.
        """
        cgroup.add(self.zygote_pid)
        # The OOM killer's last choice in the cgroup: its jobs raise their own score, and one
        # that lowers it again reaches at most this (then it waits for its wall timeout).
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.zygote_pid}/oom_score_adj").write_text(str(ZYGOTE_OOM_SCORE_ADJ))

    def _log_stderr(self) -> None:
        process = self.process
        if process is None or process.stderr is None:
            return
        for line in process.stderr:
            logger.warning(
                "%s: %s",
                self.name,
                line.decode(errors="replace").rstrip()[:500].encode("unicode_escape").decode(),
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        self._spare_pending = False  # a spare asked of this zygote dies with it
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self._stderr_reader is not None:
                self._stderr_reader.join(timeout=2)  # it ends at EOF, now that bwrap is gone
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    # --- spares -----------------------------------------------------------------

    def request_spare(self, disk_bytes: int, session: bool = False) -> None:
        """Ask for the next job's sandbox now, to be built while this job runs (``session``:
        a live interpreter's, see ``zygote._serve_session``)."""
        if self.control is None or not self.alive():
            raise RuntimeError("slot is not running")
        request = {"type": "spare", "disk_bytes": disk_bytes, "session": session}
        self.control.sendall(marshal.dumps(request))
        self._spare_pending = True
        self._spare_kind = (disk_bytes, session)

    def take_spare(self, disk_bytes: int, session: bool = False) -> Spare:
        """A ready job sandbox built to ``disk_bytes`` (asked for now if need be).

        A spare built while the previous job ran may have failed for that job's sake
        (it shares the slot's cgroup: a fork bomb leaves it no process to start, a
        memory hog no memory). Such a spare is replaced, now that the slot is quiet: one
        job's behaviour never becomes the next job's failure.
        """
        for attempt in range(SPARE_ATTEMPTS):
            if self._spare_pending and self._spare_kind != (disk_bytes, session):
                with contextlib.suppress(SpareFailed):
                    self._receive_spare().discard()
            if not self._spare_pending:
                if self.cgroup is not None and not session:
                    self.cgroup.settle()
                self.request_spare(disk_bytes, session)
            try:
                return self._receive_spare()
            except SpareFailed as exc:
                self.metrics.start_failed()
                logger.warning("%s: spare failed (%s), building another", self.name, exc)
                if attempt + 1 == SPARE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _receive_spare(self) -> Spare:
        if self.control is None:
            raise RuntimeError("slot is not running")
        self._spare_pending = False
        return receive_spare(self.control)
