"""One session's live interpreter, run from the host: a session spare (``zygote._serve_session``)
in a cgroup of its own, its calls one at a time.

The host owns everything that must not depend on the interpreter's cooperation: each call's wall
clock, CPU budget and output caps (past them: SIGINT, then the whole sandbox killed if the
interpreter has not answered within ``INTERRUPT_GRACE_S``), the session's memory and process
caps (its cgroup, for its whole life) and its death (its init's pidfd). What the interpreter
reports of a call (how it ended, its result) is its own word about itself, bounded here.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import marshal
import os
import select
import selectors
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from executors._models import (
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    utc_now,
)
from executors._sandbox._artifacts import collect_artifacts
from executors._sandbox._cgroups import JobCgroup
from executors._sandbox._job import SANDBOX_OVERHEAD_BYTES, memfd_readonly
from executors._sandbox._spare import HANDSHAKE_TIMEOUT_S, Spare, SpareFailed, recv_with_pid
from executors._sandbox._stdin import StdinPipe
from executors._sandbox._streams import LiveIO, OutputStream

__all__ = ["INTERRUPT_GRACE_S", "CallOutcome", "SandboxSession"]

logger = logging.getLogger("executors.sandbox")

INTERRUPT_GRACE_S = 1.0
"""How long an interrupted call has to give control back before its session is killed."""
POLL_INTERVAL_S = 0.05
DEATH_WAIT_S = 2.0
"""How long an interpreter that said it exits (or was killed) has to be gone."""
SESSION_PROCESSES = 2
"""Counted by the session's pids.max beside its own: its init and its interpreter."""
MAX_REPORT_BYTES = 4096
RESULT_MARK = b"R"
_END_STATUS = {
    EndReason.TIMEOUT: ExecutionStatus.TIMEOUT,
    EndReason.TTL: ExecutionStatus.TIMEOUT,
    EndReason.OUTPUT_LIMIT: ExecutionStatus.OUTPUT_LIMIT,
    EndReason.MEMORY_LIMIT: ExecutionStatus.MEMORY_LIMIT,
}
"""A call's status when the host ended its session under it (any other reason: the service
stopped it, ``internal_error``)."""


@dataclass(frozen=True)
class CallOutcome:
    """A call's record, and whether (and why) the session ended with it."""

    record: ExecutionRecord
    ended: EndReason | None = None


@dataclass
class _Watch:
    """What one call's host loop saw."""

    report: dict[str, Any] | None = None
    died: bool = False
    interrupted_for: EndReason | None = None
    interrupted_at: float | None = None
    killed_for: EndReason | None = None
    init_report: dict[str, Any] = field(default_factory=dict)


class SandboxSession:
    """A live interpreter in its sandbox. ``call`` is not reentrant (the host makes sure);
    ``kill`` may come from any thread."""

    def __init__(
        self, spare: Spare, cgroup: JobCgroup | None, limits: Limits, namespaces: bool
    ) -> None:
        self.spare = spare
        self.cgroup = cgroup
        self.limits = limits
        self.namespaces = namespaces
        self.ended: EndReason | None = None
        self._kill_reason: EndReason | None = None
        self._program_pidfd: int | None = None
        self._oom_kills = 0
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The session's init (pid 1 of its namespace), in ours."""
        return self.spare.pid

    # --- life cycle -------------------------------------------------------------

    def start(self, cpu_ceiling_s: float) -> None:
        """Move the spare into the session's cgroup (its caps hold from now on for its whole
        life) and hand it the session's rlimits (``cpu_ceiling_s``: its interpreter's whole
        CPU time, a backstop: each call's budget is enforced here)."""
        spare = self.spare
        try:
            if not spare.program_pid:
                raise SpareFailed("the spare did not say which process is its interpreter")
            self._program_pidfd = os.pidfd_open(spare.program_pid)
            if self.cgroup is not None:
                self.cgroup.limit(
                    self.limits.memory_bytes + SANDBOX_OVERHEAD_BYTES,
                    self.limits.max_processes + SESSION_PROCESSES,
                )
                self.cgroup.add(spare.pid)
                self.cgroup.add(spare.program_pid)
                self._oom_kills = self.cgroup.oom_kills()
            caps = {**self.limits.model_dump(), "cpu_time_s": cpu_ceiling_s}
            spare.sock.sendall(marshal.dumps({"limits": caps}))
            spare.sock.settimeout(HANDSHAKE_TIMEOUT_S)
            started = spare.sock.recv(MAX_REPORT_BYTES)
            spare.sock.settimeout(None)
        except OSError as exc:
            raise SpareFailed(f"the session could not start: {exc}") from exc
        if started != b"started":
            raise SpareFailed(f"the session did not start: {started[:200]!r}")

    def alive(self) -> bool:
        """Whether the interpreter's sandbox still runs (its init's pidfd not readable)."""
        return self.ended is None and not _readable(self.spare.pidfd, 0.0)

    def kill(self, reason: EndReason) -> None:
        """End the session now, for ``reason`` (the first reason given wins): every process of
        its sandbox is killed; a call under way ends with it."""
        if self._kill_reason is None:
            self._kill_reason = reason
        for pidfd in (self.spare.pidfd, self._program_pidfd):
            if pidfd is not None:  # the interpreter too: without a PID namespace it outlives init
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if self.cgroup is not None and not self.namespaces:
            self.cgroup.kill_all(timeout_s=2.0)  # without a PID namespace, through the cgroup

    def why_it_died(self) -> EndReason:
        """Why a session whose sandbox is gone ended (the host's kill, the memory cap, or how its
        interpreter exited as its init reports it)."""
        if self.ended is not None:
            return self.ended
        if self._kill_reason is not None:
            return self._kill_reason
        if self.cgroup is not None and self.cgroup.oom_kills() > self._oom_kills:
            return EndReason.MEMORY_LIMIT
        wstatus = self._init_report().get("wstatus")
        if isinstance(wstatus, int) and os.WIFSIGNALED(wstatus):
            return EndReason.CRASHED
        return EndReason.EXITED

    def close(self, reason: EndReason) -> EndReason:
        """Kill the sandbox if it runs, wait for it to be gone, remove its cgroup; why it
        ended (``reason`` if it was still running)."""
        if self.ended is None:
            if self.alive():
                self.kill(reason)
            _readable(self.spare.pidfd, DEATH_WAIT_S)
            self.ended = self.why_it_died()
        else:
            self.kill(self.ended)  # ended by its call: make sure, and wait for it to be gone
            _readable(self.spare.pidfd, DEATH_WAIT_S)
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if self._program_pidfd is not None:
            os.close(self._program_pidfd)
            self._program_pidfd = None
        with contextlib.suppress(OSError):
            self.spare.close()
        return self.ended

    # --- one call -----------------------------------------------------------------

    def call(
        self, request: ExecutionRequest, session_id: uuid.UUID, live: LiveIO | None = None
    ) -> CallOutcome:
        """Run one call to its end; its record, and whether the session ended with it.
        ``live``: its output as it comes, and standard input that stays open (streamed)."""
        live = live or LiveIO()
        with self._lock:
            created_at = utc_now()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            result_r, result_w = os.pipe()
            payload = {"code": request.code, "files": dict(request.files)}
            stdin = None if live.stdin is None else StdinPipe(live.stdin, request.stdin.encode())
            fds = [
                memfd_readonly("payload", marshal.dumps(payload)),
                memfd_readonly("stdin", request.stdin.encode())
                if stdin is None
                else stdin.hand_over(),
                out_w,
                err_w,
                result_w,
            ]
            limits = request.limits
            streams = (
                OutputStream(out_r, limits.max_output_bytes, live.stream_to("stdout")),
                OutputStream(err_r, limits.max_output_bytes, live.stream_to("stderr")),
                OutputStream(result_r, limits.max_output_bytes + len(RESULT_MARK)),
            )
            try:
                memory_before = self.cgroup.restart_counters() if self.cgroup else 0
                started_at, t0 = utc_now(), time.monotonic()
                watch = self._send_and_watch(fds, streams, limits, t0, stdin)
                wall_s = time.monotonic() - t0
                artifacts = collect_artifacts(
                    self.spare.workdir_fd,
                    max_files=limits.max_artifacts,
                    max_bytes=limits.max_artifact_bytes,
                )
            finally:
                for fd in (out_r, err_r, result_r):
                    os.close(fd)
                if stdin is not None:
                    stdin.close()
            record, ended = self._verdict(watch, streams, limits)
            usage = self.cgroup.usage() if self.cgroup is not None else None
            outcome = CallOutcome(
                record.model_copy(
                    update={
                        "wall_time_s": round(wall_s, 6),
                        "cpu_time_s": round(usage.cpu_time_s, 6) if usage else None,
                        "peak_memory_bytes": max(usage.peak_memory_bytes, memory_before)
                        if usage
                        else None,
                        "created_at": created_at,
                        "started_at": started_at,
                        "finished_at": utc_now(),
                        "runtime": request.runtime,
                        "session_id": session_id,
                        "artifacts": artifacts.files,
                        "artifacts_truncated": artifacts.truncated,
                    }
                ),
                ended,
            )
            if ended is not None:
                self.ended = ended
            return outcome

    def _send_and_watch(
        self,
        fds: list[int],
        streams: tuple[OutputStream, OutputStream, OutputStream],
        limits: Limits,
        t0: float,
        stdin: StdinPipe | None,
    ) -> _Watch:
        watch = _Watch()
        try:
            self.spare.sock.sendmsg(
                [marshal.dumps({"type": "call"})],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
        except OSError:
            watch.died = True  # the interpreter is gone: its death says why
        finally:
            for fd in fds:
                os.close(fd)
        deadline = t0 + limits.wall_timeout_s
        with selectors.PollSelector() as sel:
            for stream in streams:
                sel.register(stream.fd, selectors.EVENT_READ, stream)
            sel.register(self.spare.sock, selectors.EVENT_READ, "report")
            sel.register(self.spare.pidfd, selectors.EVENT_READ, "exit")
            if stdin is not None:
                stdin.watch(sel)
            while watch.report is None and not watch.died:
                self._enforce(watch, limits, deadline)
                for key, _ in sel.select(POLL_INTERVAL_S):
                    if key.data == "report":
                        self._read_report(watch)
                    elif key.data == "exit":
                        watch.died = True
                    elif isinstance(key.data, StdinPipe):
                        key.data.ready(key.fd)
                    elif key.data.read() and key.data is not streams[2]:
                        self._interrupt(watch, EndReason.OUTPUT_LIMIT)
                    if isinstance(key.data, OutputStream) and key.data.eof:
                        sel.unregister(key.data.fd)
        if watch.report is not None and watch.report.get("outcome") == "exit":
            # It said it exits: wait for it, kill what outlives its grace.
            if not _readable(self.spare.pidfd, DEATH_WAIT_S):
                self.kill(EndReason.EXITED)
                _readable(self.spare.pidfd, DEATH_WAIT_S)
            watch.died = True
        self._drain(streams, until_eof=watch.died)
        return watch

    def _enforce(self, watch: _Watch, limits: Limits, deadline: float) -> None:
        now = time.monotonic()
        if self._kill_reason is not None:
            watch.killed_for = self._kill_reason
        elif watch.interrupted_at is not None:
            if now - watch.interrupted_at > INTERRUPT_GRACE_S:
                watch.killed_for = watch.interrupted_for
                self.kill(watch.interrupted_for or EndReason.TIMEOUT)
        elif now >= deadline or self._over_cpu_budget(limits):
            self._interrupt(watch, EndReason.TIMEOUT)

    def _over_cpu_budget(self, limits: Limits) -> bool:
        return self.cgroup is not None and self.cgroup.cpu_time_s() > limits.cpu_time_s

    def _interrupt(self, watch: _Watch, why: EndReason) -> None:
        """SIGINT to the interpreter: ``KeyboardInterrupt`` in the call, which has the grace
        period to give control back."""
        if watch.interrupted_at is not None:
            return
        watch.interrupted_for, watch.interrupted_at = why, time.monotonic()
        if self._program_pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._program_pidfd, signal.SIGINT)

    def _read_report(self, watch: _Watch) -> None:
        """A message on the session's socket: the interpreter's word on its call, or its
        init's report of the interpreter's exit (told apart by the sender's pid)."""
        message, pid = recv_with_pid(self.spare.sock, MAX_REPORT_BYTES)
        if not message:
            watch.died = True
            return
        try:
            report = json.loads(message)
        except ValueError:
            return
        if not isinstance(report, dict):
            return
        if pid == self.spare.pid:
            watch.init_report = report
        elif pid == self.spare.program_pid and report.get("type") == "done":
            watch.report = report

    def _init_report(self) -> dict[str, Any]:
        """Init's report of the interpreter's exit, if it is waiting on the socket."""
        report: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            while _readable(self.spare.sock.fileno(), 0.0):
                message, pid = recv_with_pid(self.spare.sock, MAX_REPORT_BYTES)
                if not message:
                    break
                if pid == self.spare.pid:
                    parsed = json.loads(message)
                    if isinstance(parsed, dict):
                        report = parsed
        return report

    def _drain(self, streams: tuple[OutputStream, ...], until_eof: bool) -> None:
        """Read what the call left in its pipes: to their end once the sandbox is gone, else
        what is there now (the interpreter flushed before its report; a thread or child the
        call left behind may hold the pipes open)."""
        deadline = time.monotonic() + (DEATH_WAIT_S if until_eof else 0.0)
        for stream in streams:
            os.set_blocking(stream.fd, False)
            while not stream.eof:
                try:
                    stream.read()
                except BlockingIOError:
                    if not until_eof or time.monotonic() > deadline:
                        break
                    _readable(stream.fd, 0.05)

    def _verdict(
        self,
        watch: _Watch,
        streams: tuple[OutputStream, OutputStream, OutputStream],
        limits: Limits,
    ) -> tuple[ExecutionRecord, EndReason | None]:
        stdout, stderr, result = streams
        base: dict[str, Any] = {
            "stdout": stdout.text(),
            "stderr": stderr.text(),
            "stdout_truncated": stdout.truncated,
            "stderr_truncated": stderr.truncated,
            "limits": limits.to_api(),
        }
        oom = self.cgroup is not None and self.cgroup.oom_kills() > self._oom_kills
        report = watch.report or {}
        outcome = report.get("outcome")
        if watch.died and outcome != "exit":
            return self._death_verdict(watch, oom, base)
        if oom or report.get("memory_error") is True:
            self.kill(EndReason.MEMORY_LIMIT)  # the memory cap ends the session (API.md)
            code = 1 if outcome in ("error", "interrupted") else None
            status = ExecutionStatus.MEMORY_LIMIT
            return ExecutionRecord(status=status, exit_code=code, **base), EndReason.MEMORY_LIMIT
        if outcome == "exit":
            code = report.get("status")
            code = code & 0xFF if isinstance(code, int) and not isinstance(code, bool) else 1
            status = ExecutionStatus.OK if code == 0 else ExecutionStatus.NONZERO_EXIT
            return ExecutionRecord(status=status, exit_code=code, **base), EndReason.EXITED
        if outcome == "no_descriptors":
            self.kill(EndReason.EXITED)
            note = (
                "exec-agent: the session's interpreter holds every file descriptor it may open, "
                "so it cannot take another call; the session has ended\n"
            )
            base["stderr"] = note
            return ExecutionRecord(status=ExecutionStatus.NONZERO_EXIT, exit_code=1, **base), (
                EndReason.EXITED
            )
        if watch.interrupted_for == EndReason.OUTPUT_LIMIT or (
            outcome in ("error", "interrupted") and watch.interrupted_for is not None
        ):
            # Interrupted at a limit (its KeyboardInterrupt, or whatever it raised meanwhile).
            status = _END_STATUS[watch.interrupted_for]
            return ExecutionRecord(status=status, signal=signal.SIGINT, **base), None
        if outcome in ("error", "interrupted"):
            return ExecutionRecord(status=ExecutionStatus.NONZERO_EXIT, exit_code=1, **base), None
        if outcome == "ok":
            value = None
            if result.data[:1] == RESULT_MARK:
                del result.data[:1]
                result.cap -= len(RESULT_MARK)
                value = result.text()
            return ExecutionRecord(
                status=ExecutionStatus.OK, exit_code=0, result=value, **base
            ), None
        logger.error("session call: the interpreter reported %r", str(outcome)[:100])
        return ExecutionRecord(status=ExecutionStatus.INTERNAL_ERROR, **base), None

    def _death_verdict(
        self, watch: _Watch, oom: bool, base: dict[str, Any]
    ) -> tuple[ExecutionRecord, EndReason]:
        """The record of a call during which the sandbox died, and why the session ended."""
        killed_for = watch.killed_for or self._kill_reason
        if killed_for is not None:
            status = _END_STATUS.get(killed_for, ExecutionStatus.INTERNAL_ERROR)
            return ExecutionRecord(status=status, signal=signal.SIGKILL, **base), killed_for
        if oom:
            status = ExecutionStatus.MEMORY_LIMIT
            return ExecutionRecord(status=status, signal=signal.SIGKILL, **base), (
                EndReason.MEMORY_LIMIT
            )
        wstatus = (watch.init_report or self._init_report()).get("wstatus")
        if isinstance(wstatus, int) and os.WIFSIGNALED(wstatus):
            sig = os.WTERMSIG(wstatus)
            return ExecutionRecord(status=ExecutionStatus.CRASHED, signal=sig, **base), (
                EndReason.CRASHED
            )
        if isinstance(wstatus, int) and os.WIFEXITED(wstatus):
            code = os.WEXITSTATUS(wstatus)
            status = ExecutionStatus.OK if code == 0 else ExecutionStatus.NONZERO_EXIT
            return ExecutionRecord(status=status, exit_code=code, **base), EndReason.EXITED
        return ExecutionRecord(status=ExecutionStatus.INTERNAL_ERROR, **base), EndReason.CRASHED


def _readable(fd: int, timeout_s: float) -> bool:
    """Whether ``fd`` becomes readable within ``timeout_s`` (a pidfd: its process exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout_s * 1000)))
