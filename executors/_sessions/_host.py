"""The sessions of one machine's session host: a zygote per runtime, each session a live
interpreter in a sandbox and cgroup of its own, and the reaper that ends them.

Usage::

    host = SessionHost(SandboxConfig(), name="local", capacity=8)
    host.start()
    state = host.create(SessionSpec(runtime="minimal", limits=limits, idle_timeout_s=600, ttl_s=3600))
    record, state = host.call(state.id, ExecutionRequest(code="x = 41", limits=limits))
    record, state = host.call(state.id, ExecutionRequest(code="x + 1", limits=limits))
    record.result                                              # "42"
    host.end(state.id, EndReason.DELETED)
    host.close()

Every session forks from its runtime's zygote (the preloaded modules are shared pages) into new
user, PID, mount, IPC and network namespaces, with seccomp, no capabilities and its own tmpfs,
then moves into a cgroup of its own whose memory and process caps hold for its whole life.
Nothing is shared between two sessions but the read-only zygote pages they were forked from.
The reaper (one thread, the only place that ends idle and expired sessions of this host) also
notices a sandbox that died between calls; whatever ends a session, its processes, cgroup and
tmpfs go with it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from executors._config import SandboxConfig
from executors._errors import (
    SandboxStartError,
    SandboxUnavailableError,
    SessionBusyError,
    SessionEndedError,
    SessionPlacementError,
)
from executors._isolation import IsolationReport, enforce_isolation_policy, isolation_report
from executors._models import EndReason, ExecutionRecord, ExecutionRequest, utc_now
from executors._runtimes import RUNTIMES
from executors._sandbox import (
    ForkServer,
    ForkServerSettings,
    JobCgroup,
    LiveIO,
    SandboxSession,
    SeccompUnavailable,
    SpareFailed,
    compile_filter,
    open_job_cgroup,
    remove_dead_pools_groups,
    remove_group,
)
from executors._sessions._metrics import SessionMetrics
from executors._sessions._models import SessionSpec, SessionState, SessionStatus

__all__ = ["SESSION_UID_OFFSET", "SessionHost"]

logger = logging.getLogger("executors.sessions")

SESSION_UID_OFFSET = 1000
"""Session sandboxes run as host uid ``slot_uid_base + SESSION_UID_OFFSET`` (the pool's slots
take the first few above the base)."""
REAP_INTERVAL_S = 0.5
ENDED_KEPT = 10_000
"""Ended sessions remembered (their reason and time), newest kept."""
SPARE_ATTEMPTS = 3
BUSY_END_WAIT_S = 10.0
"""How long ending a session waits for the call it killed to wind up."""


@dataclass
class _Entry:
    spec: SessionSpec
    sandbox: SandboxSession | None
    """None while it starts."""
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    idle_deadline: float
    """``time.monotonic()`` past which it is idle."""
    expiry: float
    calls: int = 0
    busy: bool = False
    closing: threading.Lock = field(default_factory=threading.Lock)


class SessionHost:
    """The sessions of one host (a Ray actor's, or a process's own)."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        name: str,
        capacity: int,
        node_id: str | None = None,
        metrics: SessionMetrics | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a session host holds at least one session")
        self.config = config
        self.name = name
        self.capacity = capacity
        self.node_id = node_id
        self.metrics = metrics or SessionMetrics(None)
        self._sessions: dict[uuid.UUID, _Entry] = {}
        self._ended: OrderedDict[uuid.UUID, SessionState] = OrderedDict()
        self._lock = threading.Lock()
        self._servers: dict[str, ForkServer] = {}
        self._server_locks: dict[str, threading.Lock] = {
            name: threading.Lock() for name in RUNTIMES
        }
        self._group = f"exec-agent-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seccomp = b""
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        # bubblewrap's --die-with-parent follows the thread that started it: one that lives on.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-launcher")
        self.probe: dict[str, Any] = {}
        self.isolation: IsolationReport | None = None

    # --- life cycle -------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the default runtime's zygote and the reaper; the zygote's self-test report."""
        try:
            self._seccomp = compile_filter()
        except SeccompUnavailable as exc:
            logger.warning("sessions without seccomp: %s", exc)
        if os.geteuid() == 0:
            remove_dead_pools_groups(self.config.cgroup_parent)
        server = self._server(self.config.default_runtime)
        self.probe = server.probe
        if server.plan is None:
            raise SandboxStartError(0, "session zygote started without a launch plan")
        errors = [] if self._seccomp else ["seccomp: unavailable"]
        cgroup = self._open_cgroup(uuid.UUID(int=0))  # tried, not assumed: can sessions have one?
        if cgroup is not None:
            cgroup.remove()
        self.isolation = isolation_report(
            server.plan, self.probe, cgroup=cgroup is not None, errors=errors
        )
        try:
            enforce_isolation_policy(self.isolation, self.config)
        except SandboxUnavailableError:
            self.close()
            raise
        self._reaper = threading.Thread(target=self._reap_loop, daemon=True, name="session-reaper")
        self._reaper.start()
        return self.probe

    def retire_if_empty(self) -> bool:
        """Stop taking sessions if none is held now (then :meth:`close`); whether it did."""
        with self._lock:
            if self._sessions:
                return False
            self._closed.set()
            return True

    def close(self, reason: EndReason = EndReason.SHUTDOWN) -> list[SessionState]:
        """End every session (``reason``), stop the zygotes; the sessions' final states."""
        self._closed.set()
        with self._lock:
            ids = list(self._sessions)
        ended = [self.end(session_id, reason) for session_id in ids]
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        if os.geteuid() == 0:
            remove_group(self._group, self.config.cgroup_parent)
        self._launcher.shutdown(wait=False)
        return ended

    # --- sessions -----------------------------------------------------------------

    def create(self, spec: SessionSpec) -> SessionState:
        """Start a session now; raises :class:`SessionPlacementError` when this host is full
        or closed."""
        with self._lock:
            if self._closed.is_set():
                raise SessionPlacementError(f"session host {self.name} is shutting down")
            if len(self._sessions) >= self.capacity:
                raise SessionPlacementError(f"session host {self.name} is full")
            placeholder = _Entry(spec, None, *_times(spec), busy=True)
            self._sessions[spec.id] = placeholder  # holds its place while it starts
        try:
            sandbox = self._start_sandbox(spec)
        except BaseException:
            with self._lock:
                self._sessions.pop(spec.id, None)
            raise
        with self._lock:
            placeholder.sandbox, placeholder.busy = sandbox, False
            self.metrics.active(self.name, len(self._sessions))
        return self._state(placeholder)

    def _start_sandbox(self, spec: SessionSpec) -> SandboxSession:
        cgroup = self._open_cgroup(spec.id)
        disk = spec.limits.disk_bytes
        try:
            for attempt in range(SPARE_ATTEMPTS):
                with self._server_locks[spec.runtime]:
                    server = self._server(spec.runtime)
                    spare = server.take_spare(disk, session=True)
                    server.request_spare(disk, session=True)  # the next session's, built now
                namespaces = bool(server.probe.get("namespaces"))
                sandbox = SandboxSession(spare, cgroup, spec.limits, namespaces)
                try:
                    sandbox.start(cpu_ceiling_s=spec.ttl_s + 1.0)
                    return sandbox
                except SpareFailed as exc:
                    spare.discard()
                    logger.warning("session %s: spare failed (%s)", spec.id, exc)
                    if attempt + 1 == SPARE_ATTEMPTS:
                        raise SandboxStartError(0, f"session: {exc}") from exc
            raise AssertionError("unreachable")
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise

    def call(
        self, session_id: uuid.UUID, request: ExecutionRequest, live: LiveIO | None = None
    ) -> tuple[ExecutionRecord, SessionState]:
        """Run one call in the session; its record and the session's state after it
        (``live``: its output as it comes, and standard input that stays open).

        Raises :class:`SessionBusyError` while another call runs, :class:`SessionEndedError`
        once the session has ended (or when this host never held it: ``lost``).
        """
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                raise self._ended_error(session_id)
            sandbox = entry.sandbox
            if entry.busy or sandbox is None:
                raise SessionBusyError(str(session_id))
            entry.busy = True
        try:
            outcome = sandbox.call(request, session_id, live)
            with self._lock:
                entry.calls += 1
                entry.last_used_at = utc_now()
                entry.idle_deadline = time.monotonic() + entry.spec.idle_timeout_s
            if outcome.ended is None:
                return outcome.record, self._state(entry, busy=False)
            return outcome.record, self._finish(session_id, entry, outcome.ended)
        finally:
            with self._lock:
                entry.busy = False

    def end(self, session_id: uuid.UUID, reason: EndReason) -> SessionState:
        """End the session now (its processes killed, its cgroup and tmpfs gone); its final
        state. Idempotent: an ended session's state is the one it ended with."""
        with self._lock:
            entry = self._sessions.get(session_id)
        if entry is None:
            return self._ended.get(session_id) or self._lost(session_id)
        if entry.sandbox is None:  # still starting: ended once it has started
            return self._state(entry)
        if entry.busy:
            # Killed under its call, which sees it die and ends the session itself.
            entry.sandbox.kill(reason)
            deadline = time.monotonic() + BUSY_END_WAIT_S
            while entry.busy and time.monotonic() < deadline:
                time.sleep(0.005)
            with self._lock:
                if session_id not in self._sessions:
                    return self._ended.get(session_id) or self._lost(session_id)
        return self._finish(session_id, entry, reason)

    def _finish(self, session_id: uuid.UUID, entry: _Entry, reason: EndReason) -> SessionState:
        """Close the session's sandbox and remember how it ended (once)."""
        with entry.closing:
            if entry.sandbox is None or session_id not in self._sessions:
                return self._ended.get(session_id) or self._lost(session_id)
            why = entry.sandbox.close(reason)
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                return self._ended.get(session_id) or self._lost(session_id)
            state = self._state(entry, why, busy=False)
            self._ended[session_id] = state
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)
            self.metrics.active(self.name, len(self._sessions))
        logger.info("session %s ended (%s) after %d calls", session_id, why, entry.calls)
        return state

    def states(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, SessionState]:
        """What this host knows of each session (``lost``: nothing)."""
        answer = {}
        for session_id in ids:
            with self._lock:
                entry = self._sessions.get(session_id)
            if entry is not None:
                answer[session_id] = self._state(entry)
            else:
                answer[session_id] = self._ended.get(session_id) or self._lost(session_id)
        return answer

    def overview(self) -> dict[str, Any]:
        """This host's name, node, active sessions and capacity (a ``HostSummary``)."""
        with self._lock:
            active = len(self._sessions)
        return {"name": self.name, "node_id": self.node_id, "active": active,
                "capacity": self.capacity}  # fmt: skip

    def interpreter_pids(self) -> dict[uuid.UUID, int]:
        """Each active session's init pid (for measurements: its sandbox's processes)."""
        with self._lock:
            return {sid: e.sandbox.pid for sid, e in self._sessions.items() if e.sandbox}

    def zygote_pids(self) -> dict[str, int]:
        return {runtime: server.zygote_pid for runtime, server in self._servers.items()}

    # --- the reaper -----------------------------------------------------------------

    def reap(self) -> list[SessionState]:
        """End the sessions that are idle, expired, or whose sandbox died; their states."""
        now = time.monotonic()
        due: list[tuple[uuid.UUID, EndReason]] = []
        with self._lock:
            for session_id, entry in self._sessions.items():
                if entry.sandbox is None:
                    continue
                if now >= entry.expiry:
                    due.append((session_id, EndReason.TTL))
                elif not entry.busy and now >= entry.idle_deadline:
                    due.append((session_id, EndReason.IDLE))
                elif not entry.busy and not entry.sandbox.alive():
                    due.append((session_id, entry.sandbox.why_it_died()))
        for session_id, reason in due:
            with self._lock:
                busy = self._sessions.get(session_id)
            if busy is not None and busy.busy and busy.sandbox is not None:
                busy.sandbox.kill(reason)  # its call ends with it, and ends the session
            else:
                self.end(session_id, reason)
        return [self._ended[sid] for sid, _ in due if sid in self._ended]

    def _reap_loop(self) -> None:
        while not self._closed.wait(REAP_INTERVAL_S):
            try:
                self.reap()
            except Exception:  # the reaper must outlive any one session's trouble
                logger.exception("session reaper")

    # --- parts ----------------------------------------------------------------------

    def _server(self, runtime: str) -> ForkServer:
        server = self._servers.get(runtime)
        if server is not None and server.alive():
            return server
        if server is not None:
            logger.warning("restarting the %s zygote of session host %s", runtime, self.name)
            server.close()
        config = self.config
        server = ForkServer(
            ForkServerSettings(
                index=0,
                python=config.python_executable,
                slot_uid=config.slot_uid_base + SESSION_UID_OFFSET,
                seccomp_bpf=self._seccomp,
                runtime=RUNTIMES[runtime],
                runtimes_dir=config.runtimes_dir,
                bwrap=config.bwrap_path,
                start_timeout_s=config.start_timeout_s,
            ),
            None,  # the zygotes stay where the host is; each session gets its own cgroup
        )
        self._launcher.submit(server.start).result()
        self._servers[runtime] = server
        return server

    def _open_cgroup(self, session_id: uuid.UUID) -> JobCgroup | None:
        if os.geteuid() != 0:
            return None
        try:
            return open_job_cgroup(
                f"{self._group}/session-{session_id.hex[:16]}", self.config.cgroup_parent
            )
        except OSError as exc:
            logger.warning("session %s without a cgroup: %s", session_id, exc)
            return None

    def _state(
        self, entry: _Entry, ended: EndReason | None = None, busy: bool | None = None
    ) -> SessionState:
        spec = entry.spec
        return SessionState(
            id=spec.id,
            status=SessionStatus.ACTIVE if ended is None else SessionStatus.TERMINATED,
            runtime=spec.runtime,
            host=self.name,
            node_id=self.node_id,
            created_at=entry.created_at,
            last_used_at=entry.last_used_at,
            expires_at=entry.expires_at,
            idle_timeout_s=spec.idle_timeout_s,
            calls=entry.calls,
            busy=entry.busy if busy is None else busy,
            terminated_reason=ended,
            terminated_at=None if ended is None else utc_now(),
            message=None if ended is None else describe_end(ended, entry.calls),
        )

    def _lost(self, session_id: uuid.UUID) -> SessionState:
        now = utc_now()
        return lost_state(session_id, self.name, self.node_id, now, "this host never held it")

    def _ended_error(self, session_id: uuid.UUID) -> SessionEndedError:
        state = self._ended.get(session_id) or self._lost(session_id)
        reason = state.terminated_reason or EndReason.LOST
        return SessionEndedError(str(session_id), str(reason), state.message or "")


def _times(spec: SessionSpec) -> tuple[datetime, datetime, datetime, float, float]:
    now, mono = utc_now(), time.monotonic()
    expires = now + timedelta(seconds=spec.ttl_s)
    return now, now, expires, mono + spec.idle_timeout_s, mono + spec.ttl_s


_END_MESSAGES: dict[EndReason, str] = {
    EndReason.IDLE: "no call came within its idle timeout",
    EndReason.TTL: "it reached its time to live",
    EndReason.TIMEOUT: "a call ran past its time limit and did not stop when interrupted",
    EndReason.OUTPUT_LIMIT: "a call wrote past its output cap and did not stop when interrupted",
    EndReason.EXITED: "its program ended the interpreter",
    EndReason.MEMORY_LIMIT: "it reached its memory cap",
    EndReason.CRASHED: "its interpreter died of a signal",
    EndReason.DELETED: "it was deleted",
    EndReason.SHUTDOWN: "the service shut down",
    EndReason.LOST: "the machine or process that held it is gone",
}


def describe_end(reason: EndReason, calls: int) -> str:
    """For a person: why a session ended, and what went with it."""
    return (
        f"{_END_MESSAGES[reason]}; its interpreter and working directory are gone "
        f"(after {calls} call{'s' if calls != 1 else ''})"
    )


def lost_state(
    session_id: uuid.UUID, host: str, node_id: str | None, now: datetime, why: str
) -> SessionState:
    """The state of a session whose host is gone or does not know it."""
    return SessionState(
        id=session_id,
        status=SessionStatus.TERMINATED,
        runtime="",
        host=host,
        node_id=node_id,
        created_at=now,
        last_used_at=now,
        expires_at=now,
        idle_timeout_s=0.0,
        terminated_reason=EndReason.LOST,
        terminated_at=now,
        message=f"{_END_MESSAGES[EndReason.LOST]} ({why}): its variables, imports and files "
        "are gone",
    )
