"""One job's run on the host: hand the request to a spare, read its output streams, enforce
its limits (wall clock, CPU budget, output caps, kill requests) and write its record.

The host owns every enforcement that must not depend on the sandboxed side's cooperation: the
wall clock, the job-wide CPU budget, the output caps (read concurrently from both pipes as the
bytes arrive) and the kill.
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from executors._models import ExecutionRecord, ExecutionRequest, ExecutionStatus, JudgeMode, utc_now
from executors._sandbox._artifacts import Artifacts, collect_artifacts
from executors._sandbox._cgroups import JobCgroup
from executors._sandbox._proof import ProofChannel
from executors._sandbox._spare import HANDSHAKE_TIMEOUT_S, Spare, SpareFailed
from executors._sandbox._stdin import StdinPipe
from executors._sandbox._streams import LiveIO, OutputStream
from executors._sandbox._verdict import JobFacts, KillReason, decide

__all__ = ["SANDBOX_OVERHEAD_BYTES", "Job", "JobSlot", "memfd_readonly"]

logger = logging.getLogger("executors.sandbox")

CPU_POLL_INTERVAL_S = 0.05
DRAIN_AFTER_EXIT_S = 1.0
SANDBOX_OVERHEAD_BYTES = 32 * 1024 * 1024
"""The zygote and the job's init, charged to the cgroup on top of the job's memory limit."""


@dataclass(frozen=True)
class JobSlot:
    """What a job needs of the slot it runs in."""

    index: int
    cgroup: JobCgroup | None
    zygote_pids: frozenset[int]
    """The slot's zygotes (one per runtime started), which share the job's cgroup."""
    namespaces: bool
    """Whether jobs have a PID namespace of their own (without, stragglers are found through
    the cgroup)."""
    sandbox_processes: int
    """Counted by the cgroup's pids.max beside the job's own: its init, the zygotes and the
    spares they build meanwhile."""
    kill_requested: Callable[[], KillReason | None]
    """The reason a kill was asked for from another thread, if one was."""


def memfd_readonly(name: str, data: bytes) -> int:
    """A read-only descriptor of an anonymous file holding ``data``."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


class Job:
    """One job on its spare, from hand-over to record (``run``: once)."""

    def __init__(
        self,
        slot: JobSlot,
        request: ExecutionRequest,
        created_at: Any,
        spare: Spare,
        cancel: threading.Event | None,
        live: LiveIO | None = None,
    ) -> None:
        self.slot = slot
        self.live = live or LiveIO()
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
        feed = self.live.stdin
        stdin = None if feed is None else StdinPipe(feed, self.request.stdin.encode())
        try:
            self._submit(out_w, err_w, proof, stdin)
            cap = self.limits.max_output_bytes
            stdout = OutputStream(out_r, cap, self.live.stream_to("stdout"))
            stderr = OutputStream(err_r, cap, self.live.stream_to("stderr"))
            t0 = time.monotonic()
            self._wait(self.spare.sock, stdout, stderr, t0, stdin)
            wall = time.monotonic() - t0
            test_passed = None if proof is None else proof.proved()
            artifacts = collect_artifacts(
                self.spare.workdir_fd,
                max_files=self.limits.max_artifacts,
                max_bytes=self.limits.max_artifact_bytes,
            )
        finally:
            os.close(out_r)
            os.close(err_r)
            if proof is not None:
                proof.close()
            if stdin is not None:
                stdin.close()
            self.spare.discard()  # init is gone already, unless the job never started
        return self._record(stdout, stderr, wall, test_passed, artifacts)

    def _submit(
        self, out_w: int, err_w: int, proof: ProofChannel | None, stdin: StdinPipe | None
    ) -> None:
        """Hand the job to the spare: its payload, then stdin, stdout, stderr and, when
        judged, the proof pipe's write end (the payload then carries the test and nonce).
        Standard input is the request's, sealed in a file, or (interactive) ``stdin``'s pipe."""
        job: dict[str, Any] = {"code": self.request.code, "files": dict(self.request.files)}
        judge = None if proof is None else self.request.judge
        judged: list[int] = []
        if proof is not None:
            secret = {"test_code": self.request.test_code, "nonce": proof.nonce}
            if judge == JudgeMode.ISOLATED:  # for the judge's process alone: a payload of its own
                judged = [proof.write_fd, memfd_readonly("judge", marshal.dumps(secret))]
            else:
                job.update(secret)
                judged = [proof.write_fd]
        fds = [
            memfd_readonly("payload", marshal.dumps(job)),
            memfd_readonly("stdin", self.request.stdin.encode())
            if stdin is None
            else stdin.hand_over(),
            out_w,
            err_w,
            *judged,
        ]
        processes = self.slot.sandbox_processes + (judge == JudgeMode.ISOLATED)
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

    def _wait(
        self,
        host_sock: socket.socket,
        stdout: OutputStream,
        stderr: OutputStream,
        t0: float,
        stdin: StdinPipe | None,
    ) -> None:
        if self.pidfd is None:
            raise RuntimeError("job has no pidfd")
        deadline = t0 + self.limits.wall_timeout_s
        exited_at: float | None = None
        # poll, not epoll: no descriptor to create and no registration syscalls, per job.
        with selectors.PollSelector() as sel:
            sel.register(stdout.fd, selectors.EVENT_READ, stdout)
            sel.register(stderr.fd, selectors.EVENT_READ, stderr)
            sel.register(host_sock, selectors.EVENT_READ, "report")
            sel.register(self.pidfd, selectors.EVENT_READ, "exit")
            if stdin is not None:
                stdin.watch(sel)
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
                    elif isinstance(key.data, StdinPipe):
                        key.data.ready(key.fd)
                    elif key.data.read():
                        self._kill(KillReason.OUTPUT_LIMIT)
                    if isinstance(key.data, OutputStream) and key.data.eof:
                        sel.unregister(key.data.fd)

    def _enforce(self, now: float, deadline: float) -> None:
        requested = self.slot.kill_requested()
        if requested is not None:
            self._kill(requested)
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
        if self.slot.cgroup is not None and not self.slot.namespaces:
            # Without a job PID namespace, stragglers are found through the cgroup.
            self.slot.cgroup.kill_all(timeout_s=2.0, spare=self.slot.zygote_pids)

    def _record(
        self,
        stdout: OutputStream,
        stderr: OutputStream,
        wall_s: float,
        test_passed: bool | None,
        artifacts: Artifacts,
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
            logger.error("slot %d: internal error: %s", self.slot.index, verdict.detail)
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
            runtime=self.request.runtime,
            artifacts=artifacts.files,
            artifacts_truncated=artifacts.truncated,
        )
