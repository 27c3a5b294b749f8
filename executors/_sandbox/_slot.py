"""The host side of one sandbox slot: start its zygote, run jobs, enforce limits.

One job at a time per slot. The host owns every enforcement that must not depend on
the sandboxed side's cooperation: the wall clock, the job-wide CPU budget, the output
caps (read concurrently from both pipes as the bytes arrive) and the kill.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import marshal
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executors._errors import SandboxStartError
from executors._metrics import NO_METRICS, ExecutorMetrics
from executors._models import (
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    JudgeMode,
    cut_utf8,
    utc_now,
)
from executors._sandbox._cgroups import JobCgroup
from executors._sandbox._launch import LaunchPlan, UnusableInterpreter, plan_launch
from executors._sandbox._proof import ProofChannel
from executors._sandbox._verdict import JobFacts, KillReason, decide

__all__ = ["Slot", "SlotSettings"]

logger = logging.getLogger("executors.sandbox")

READ_CHUNK_BYTES = 65536
CPU_POLL_INTERVAL_S = 0.05
HANDSHAKE_TIMEOUT_S = 10.0
SPARE_ATTEMPTS = 3
DRAIN_AFTER_EXIT_S = 1.0
SANDBOX_PROCESSES = 4
"""Counted by the cgroup's pids.max beside the job: the zygote, the job's init, and the
next spare's init and program, built while the job runs."""
ZYGOTE_OOM_SCORE_ADJ = -1000
"""Never the OOM killer's choice (root sets it: lowering a score needs CAP_SYS_RESOURCE)."""
SANDBOX_OVERHEAD_BYTES = 32 * 1024 * 1024
"""The zygote and the job's init, charged to the cgroup on top of the job's memory limit."""


@dataclass(frozen=True)
class SlotSettings:
    index: int
    python: str
    slot_uid: int
    seccomp_bpf: bytes
    bwrap: str = "bwrap"
    start_timeout_s: float = 20.0


@dataclass
class _Stream:
    fd: int
    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    eof: bool = False

    def read(self) -> bool:
        """Read what is there; True when the cap was crossed."""
        chunk = os.read(self.fd, READ_CHUNK_BYTES)
        if not chunk:
            self.eof = True
            return False
        room = self.cap - len(self.data)
        self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
        return self.truncated

    def text(self) -> str:
        """Valid text of at most ``cap`` UTF-8 bytes: invalid bytes replaced, NUL removed.

        A replacement character takes 3 bytes, so replacing can lengthen the output:
        cut again after decoding, on a character boundary, and say so.
        """
        text, cut = cut_utf8(
            self.data.decode("utf-8", errors="replace").replace("\x00", ""), self.cap
        )
        self.truncated = self.truncated or cut
        return text


class SpareFailed(Exception):
    """A spare job sandbox broke before it was given a job."""


@dataclass
class _Spare:
    """A job sandbox that is built and locked down, waiting for its program."""

    sock: socket.socket
    pid: int
    """The job's init, in our PID namespace: killing it ends the whole job."""
    pidfd: int

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)


class Slot:
    """A sandbox slot. ``run`` is not reentrant; the pool hands a slot to one caller."""

    def __init__(self, settings: SlotSettings, cgroup: JobCgroup | None) -> None:
        self.settings = settings
        self.cgroup = cgroup
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.plan: LaunchPlan | None = None
        self.probe: dict[str, Any] = {}
        self._kill_requested: KillReason | None = None
        self._stderr_reader: threading.Thread | None = None
        self.zygote_pid = 0
        self._spare_pending = False
        self._spare_disk_bytes = 0
        self.metrics: ExecutorMetrics = NO_METRICS  # its pool's

    # --- life cycle -------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start bubblewrap and the zygote; return the zygote's self-test report.

        If the kernel refuses per-job namespaces the slot restarts without them, so
        the service runs with what the host allows; the report says what is missing.
        """
        init = {
            "namespaces": True,
            "seccomp_bpf": self.settings.seccomp_bpf,
            "cgroup_memory": self.cgroup is not None,
            "cap_last_cap": int(Path("/proc/sys/kernel/cap_last_cap").read_text()),
        }
        self._launch(init)
        if not self.probe.get("namespaces"):
            error = self.probe.get("error")
            self.close()
            self._launch({**init, "namespaces": False})
            self.probe["namespaces_error"] = error
        return self.probe

    def _launch(self, init: dict[str, Any]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.plan = plan_launch(
                self.settings.python, theirs.fileno(), self.settings.slot_uid, self.settings.bwrap
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
        init = {**init, "new_net": self.plan.mode == "direct", "workdir": self.plan.workdir}
        ours.settimeout(self.settings.start_timeout_s)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            ours.sendall(marshal.dumps(init))
            reply, self.zygote_pid = _recv_with_pid(ours, 65536)
        except OSError as exc:
            self.close()
            raise SandboxStartError(self.settings.index, f"no answer from zygote: {exc}") from exc
        if not reply:
            self.close()
            raise SandboxStartError(self.settings.index, "zygote exited during start-up")
        ours.settimeout(None)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)  # room for SCM_RIGHTS only
        self.probe = json.loads(reply)
        if self.cgroup is not None:
            self._adopt_zygote(self.cgroup)

    def _adopt_zygote(self, cgroup: JobCgroup) -> None:
        """Move the zygote into the job cgroup once, so every job is born inside it.

        Moving a process between cgroups is slow (milliseconds); a job forked inside
        costs nothing. The zygote's memory is part of the cap's allowance, and its jobs
        volunteer as the OOM killer's first choice, so it never picks the zygote.
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
                "slot %d: %s",
                self.settings.index,
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

    def _request_spare(self, disk_bytes: int) -> None:
        if self.control is None or not self.alive():
            raise RuntimeError("slot is not running")
        self.control.sendall(marshal.dumps({"type": "spare", "disk_bytes": disk_bytes}))
        self._spare_pending = True
        self._spare_disk_bytes = disk_bytes

    def _take_spare(self, disk_bytes: int) -> _Spare:
        """A ready job sandbox built to ``disk_bytes`` (asked for now if need be).

        A spare built while the previous job ran may have failed for that job's sake
        (it shares the slot's cgroup: a fork bomb leaves it no process to start, a
        memory hog no memory). Such a spare is replaced, now that the slot is quiet: one
        job's behaviour never becomes the next job's failure.
        """
        for attempt in range(SPARE_ATTEMPTS):
            if self._spare_pending and self._spare_disk_bytes != disk_bytes:
                with contextlib.suppress(SpareFailed):
                    self._receive_spare().discard()
            if not self._spare_pending:
                if self.cgroup is not None:
                    self.cgroup.settle()
                self._request_spare(disk_bytes)
            try:
                return self._receive_spare()
            except SpareFailed as exc:
                self.metrics.start_failed()
                logger.warning(
                    "slot %d: spare failed (%s), building another", self.settings.index, exc
                )
                if attempt + 1 == SPARE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _receive_spare(self) -> _Spare:
        if self.control is None:
            raise RuntimeError("slot is not running")
        self._spare_pending = False
        self.control.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            msg, ancdata, _, _ = self.control.recvmsg(4096, socket.CMSG_SPACE(4))
        finally:
            self.control.settimeout(None)
        fds = [
            fd
            for level, kind, data in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in array.array("i", data[: len(data) - len(data) % 4])
        ]
        reply = json.loads(msg or b"{}")
        if reply.get("type") != "spare" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"no spare sandbox: {reply.get('error', 'zygote gone')}")
        sock = socket.socket(fileno=fds[0])
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            hello, pid = _recv_with_pid(sock, 65536)
        except OSError as exc:
            sock.close()
            raise SpareFailed(str(exc)) from exc
        if hello != b"hello" or not pid:
            sock.close()
            raise SpareFailed(f"no hello from the spare: {hello[:200]!r}")
        spare = _Spare(sock, pid, os.pidfd_open(pid))
        try:
            # The program process says "ready" once locked down; a report instead
            # means the spare broke before any job was given to it.
            ready = sock.recv(65536)
        except OSError as exc:
            spare.discard()
            raise SpareFailed(str(exc)) from exc
        if ready != b"ready":
            spare.discard()
            raise SpareFailed(f"the spare is not ready: {ready[:200]!r}")
        sock.settimeout(None)
        return spare

    def request_kill(self, reason: KillReason) -> None:
        """Ask a running job to be killed (from another thread, e.g. at shutdown)."""
        self._kill_requested = reason

    # --- one job ----------------------------------------------------------------

    def run(
        self, request: ExecutionRequest, cancel: threading.Event | None = None
    ) -> ExecutionRecord:
        """Run one job to its end and return its record (never raises for the job's sake).

        Setting ``cancel`` kills the job (within a poll interval): its caller went away.
        """
        created_at = utc_now()
        self._kill_requested = None
        try:
            for attempt in range(SPARE_ATTEMPTS):
                spare = self._take_spare(request.limits.disk_bytes)
                self._request_spare(request.limits.disk_bytes)  # built while this job runs
                try:
                    return _Job(self, request, created_at, spare, cancel).run()
                except SpareFailed as exc:  # it died before it took the job: take another
                    self.metrics.start_failed()
                    logger.warning("slot %d: spare lost (%s)", self.settings.index, exc)
                    if attempt + 1 == SPARE_ATTEMPTS:
                        raise
            raise AssertionError("unreachable")
        except Exception:
            # A broken slot is the service's failure: report it, restart the slot later.
            logger.exception("slot %d failed a job", self.settings.index)
            self.close()
            return ExecutionRecord.internal_error(request, created_at)


def _recv_with_pid(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """A message and its sender's pid in our PID namespace (``SO_PASSCRED`` must be on)."""
    msg, ancdata, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(struct.calcsize("3i")))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", data[: struct.calcsize("3i")])
            return msg, int(pid)
    return msg, 0


def _memfd_readonly(name: str, data: bytes) -> int:
    """A read-only descriptor of an anonymous file holding ``data``."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


class _Job:
    def __init__(
        self,
        slot: Slot,
        request: ExecutionRequest,
        created_at: Any,
        spare: _Spare,
        cancel: threading.Event | None,
    ) -> None:
        self.slot = slot
        self.cancel = cancel
        self.request = request
        self.limits = request.limits
        self.created_at = created_at
        self.started_at = created_at
        self.spare = spare
        self.pidfd = spare.pidfd
        self.killed_for: KillReason | None = None
        self.report: dict[str, Any] = {}
        self.memory_before = 0
        self.oom_before = 0
        self.next_cpu_check = 0.0

    def run(self) -> ExecutionRecord:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        proof = ProofChannel() if self.request.test_code is not None else None
        try:
            self._submit(out_w, err_w, proof)
            stdout = _Stream(out_r, self.limits.max_output_bytes)
            stderr = _Stream(err_r, self.limits.max_output_bytes)
            t0 = time.monotonic()
            self._wait(self.spare.sock, stdout, stderr, t0)
            wall = time.monotonic() - t0
            test_passed = None if proof is None else proof.proved()
        finally:
            os.close(out_r)
            os.close(err_r)
            if proof is not None:
                proof.close()
            self.spare.discard()  # init is gone already, unless the job never started
        return self._record(stdout, stderr, wall, test_passed)

    def _submit(self, out_w: int, err_w: int, proof: ProofChannel | None) -> None:
        """Hand the job to the spare: its payload, then stdin, stdout, stderr and, when
        judged, the proof pipe's write end (the payload then carries the test and nonce)."""
        job: dict[str, Any] = {"code": self.request.code, "files": dict(self.request.files)}
        judge = None if proof is None else self.request.judge
        judged: list[int] = []
        if proof is not None:
            secret = {"test_code": self.request.test_code, "nonce": proof.nonce}
            if judge == JudgeMode.ISOLATED:  # for the judge's process alone: a payload of its own
                judged = [proof.write_fd, _memfd_readonly("judge", marshal.dumps(secret))]
            else:
                job.update(secret)
                judged = [proof.write_fd]
        fds = [
            _memfd_readonly("payload", marshal.dumps(job)),
            _memfd_readonly("stdin", self.request.stdin.encode()),
            out_w,
            err_w,
            *judged,
        ]
        processes = SANDBOX_PROCESSES + (judge == JudgeMode.ISOLATED)
        try:
            if self.slot.cgroup is not None:
                self.memory_before = self.slot.cgroup.prepare(
                    self.limits.memory_bytes + SANDBOX_OVERHEAD_BYTES,
                    self.limits.max_processes + processes,
                )
                self.oom_before = self.slot.cgroup.oom_kills()
            self.started_at = utc_now()
            header = {"limits": self.limits.model_dump(), "judge": judge and str(judge)}
            self.spare.sock.sendmsg(
                [marshal.dumps(header)],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
        except OSError as exc:
            raise SpareFailed(f"could not hand over the job: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
        self._await_start()

    def _await_start(self) -> None:
        """The program's word that it took the job: before it, a dead spare is no job's."""
        sock = self.spare.sock
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            message = sock.recv(65536)
        except OSError as exc:
            raise SpareFailed(f"no answer to the job: {exc}") from exc
        finally:
            sock.settimeout(None)
        if message != b"started":
            raise SpareFailed(f"the spare did not take the job: {message[:200]!r}")

    def _wait(self, host_sock: socket.socket, stdout: _Stream, stderr: _Stream, t0: float) -> None:
        if self.pidfd is None:
            raise RuntimeError("job has no pidfd")
        deadline = t0 + self.limits.wall_timeout_s
        exited_at: float | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(stdout.fd, selectors.EVENT_READ, stdout)
            sel.register(stderr.fd, selectors.EVENT_READ, stderr)
            sel.register(host_sock, selectors.EVENT_READ, "report")
            sel.register(self.pidfd, selectors.EVENT_READ, "exit")
            while not (exited_at is not None and stdout.eof and stderr.eof):
                now = time.monotonic()
                if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT_S:
                    self._kill(None)  # something outlived the job's namespace: fallback modes
                    if now - exited_at > 2 * DRAIN_AFTER_EXIT_S:
                        break
                if exited_at is None:
                    self._enforce(now, deadline)
                timeout = CPU_POLL_INTERVAL_S if exited_at is None else 0.05
                for key, _ in sel.select(min(timeout, max(0.0, deadline - now) + 0.001)):
                    if key.data == "report":
                        self._read_report(host_sock, sel)
                    elif key.data == "exit":
                        exited_at = time.monotonic()
                        sel.unregister(self.pidfd)
                    elif key.data.read():
                        self._kill(KillReason.OUTPUT_LIMIT)
                    if isinstance(key.data, _Stream) and key.data.eof:
                        sel.unregister(key.data.fd)

    def _enforce(self, now: float, deadline: float) -> None:
        if self.slot._kill_requested is not None:
            self._kill(self.slot._kill_requested)
        elif self.cancel is not None and self.cancel.is_set():
            self._kill(KillReason.CANCELLED)
        elif now >= deadline:
            self._kill(KillReason.WALL_TIMEOUT)
        elif self.slot.cgroup is not None and now >= self.next_cpu_check:
            self.next_cpu_check = now + CPU_POLL_INTERVAL_S
            if self.slot.cgroup.cpu_time_s() > self.limits.cpu_time_s:
                self._kill(KillReason.CPU_TIMEOUT)

    def _read_report(self, host_sock: socket.socket, sel: selectors.BaseSelector) -> None:
        try:
            msg = host_sock.recv(65536)
        except OSError:
            msg = b""
        if not msg:
            sel.unregister(host_sock)
            return
        self.report.update(json.loads(msg))

    def _kill(self, reason: KillReason | None) -> None:
        if reason is not None and self.killed_for is None and "wstatus" not in self.report:
            self.killed_for = reason
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.slot.cgroup is not None and not self.slot.probe.get("namespaces"):
            # Without a job PID namespace, stragglers are found through the cgroup.
            self.slot.cgroup.kill_all(timeout_s=2.0, spare={self.slot.zygote_pid})

    def _record(
        self, stdout: _Stream, stderr: _Stream, wall_s: float, test_passed: bool | None
    ) -> ExecutionRecord:
        """The job's record; ``test_passed``: whether the proof came back (None: not judged)."""
        usage = self.slot.cgroup.usage() if self.slot.cgroup is not None else None
        cpu = usage.cpu_time_s if usage else float(self.report.get("cpu_time_s", 0.0))
        verdict = decide(
            JobFacts(
                wait_status=self.report.get("wstatus"),
                killed_for=self.killed_for,
                oom_kills=(usage.oom_kills - self.oom_before) if usage else 0,
                memory_error=bool(self.report.get("memory_error")),
                cpu_time_s=cpu,
                cpu_limit_s=self.limits.cpu_time_s,
                internal=self.report.get("internal"),
            )
        )
        if verdict.detail and verdict.status == ExecutionStatus.INTERNAL_ERROR:
            logger.error("slot %d: internal error: %s", self.slot.settings.index, verdict.detail)
        if usage:
            peak = max(0, usage.peak_memory_bytes - self.memory_before)
        else:
            peak = int(self.report.get("maxrss_bytes", 0))
        passed = test_passed
        if passed is not None:  # the proof counts only for a run that ended well
            passed = passed and verdict.status == ExecutionStatus.OK
        return ExecutionRecord(
            status=verdict.status,
            exit_code=verdict.exit_code,
            signal=verdict.signal,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            wall_time_s=round(wall_s, 6),
            cpu_time_s=round(cpu, 6),
            peak_memory_bytes=peak,
            limits=self.limits.to_api(),
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=utc_now(),
            passed=passed,
        )
