"""A session host under watch: the corpus' invariants (tests/data/security_corpus.README.md),
checked on the host side after every call of a session, as ``WatchedPool`` checks them after a
one-shot job.

D (data) and S (secrets) on every record and state a ``WatchedHost`` returns; after a step, by
``WatchedHost.check``: P (nothing of the host's session uid runs but its zygotes, one spare per
zygote and the live sessions; nothing of an ended session a second after it ended; no zombie
piles up outside a live session), H (no zygote replaced), F (nothing new in the host's /tmp,
/var/tmp, /dev/shm and home, no SysV IPC object of the session uid, no cgroup left of an ended
session, every live session in a cgroup of its own).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executors import (
    TERMINAL_STATUSES,
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SessionHost,
    SessionSpec,
    SessionState,
    SessionStatus,
)
from executors._sessions._host import SESSION_UID_OFFSET
from tests.support.canary import Canary
from tests.support.polling import polled
from tests.support.processes import HostProcess, host_processes, read_process
from tests.support.watched_pool import OVERFLOW_UID, SETTLE_S, _host_dirs, _sysv_ipc_objects

__all__ = ["Call", "HostState", "WatchedHost"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
SESSION_CONTROLLERS = ("", "memory", "pids", "cpu", "cpuacct")
"""Where a session's cgroup lives: the v2 hierarchy, or v1's memory, pids and CPU ones."""
SPARES_PER_ZYGOTE = 2
"""A zygote keeps one spare session sandbox ready: its init and its interpreter."""
IDLE_TIMEOUT_S = 600.0
TTL_S = 900.0
TRIVIAL = "1 + 1"
TRIVIAL_CALL_S = 2.0
"""H: a trivial call answers at normal speed (emptying what the last call left in ``out/``)."""


@dataclass(frozen=True)
class Call:
    """One call's record, the session's state after it, and the seconds until the answer."""

    record: ExecutionRecord
    state: SessionState
    elapsed_s: float

    @property
    def ended(self) -> EndReason | None:
        return (
            self.state.terminated_reason if self.state.status == SessionStatus.TERMINATED else None
        )


@dataclass(frozen=True)
class HostState:
    """What invariant F and the zombie count compare against."""

    entries: dict[str, frozenset[str]]
    ipc: dict[str, frozenset[tuple[str, int, int]]]
    zombies: int


class WatchedHost:
    """A started :class:`SessionHost` and the host-side checks of the corpus' invariants."""

    def __init__(self, host: SessionHost, limits: Limits, canary: Canary) -> None:
        self.host = host
        self.limits = limits
        self.canary = canary
        self.uid = host.config.slot_uid_base + SESSION_UID_OFFSET
        self.tracks_processes = os.geteuid() == 0
        self.zygotes: dict[str, int] = {}
        self._namespaces: dict[uuid.UUID, str] = {}
        """Each session's PID namespace, as the host names it (gone with the session)."""
        self._record_ids: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        # Under `unshare --pid` every run is pid 1 or 2: another run's leftovers match our glob.
        self._foreign_cgroups = _session_cgroups()

    # --- sessions and calls ------------------------------------------------------------

    def open(self, runtime: str) -> uuid.UUID:
        """A new session of ``runtime`` with the corpus' limits (its zygote started with the
        service's secrets in the environment, as the service starts it)."""
        spec = SessionSpec(
            runtime=runtime, limits=self.limits, idle_timeout_s=IDLE_TIMEOUT_S, ttl_s=TTL_S
        )
        with self.canary.planted():
            state = self.host.create(spec)
        assert (state.status, state.runtime) == (SessionStatus.ACTIVE, runtime), state
        self._check_secret(state)
        pid = self.host.interpreter_pids()[state.id]
        process = read_process(pid)
        assert process is not None, f"session {state.id}: its init {pid} is gone"
        with self._lock:
            self._namespaces[state.id] = process.pid_namespace
            self.zygotes.setdefault(runtime, self.host.zygote_pids()[runtime])
        return state.id

    def call(self, session_id: uuid.UUID, code: str, **limits: float) -> Call:
        """Run ``code`` in the session (``limits``: the call's own, e.g. ``wall_timeout_s``);
        D and S checked."""
        call_limits = Limits.model_validate({**self.limits.model_dump(), **limits})
        runtime = self.runtime(session_id)
        request = ExecutionRequest(code=code, limits=call_limits, runtime=runtime)
        t0 = time.monotonic()
        record, state = self.host.call(session_id, request)
        call = Call(record, state, time.monotonic() - t0)
        self.check_record(record, call_limits, session_id)
        self._check_secret(state)
        return call

    def answers(self, session_id: uuid.UUID) -> None:
        """H for a live session: a trivial call answers "2" at once, and the session goes on."""
        call = self.call(session_id, TRIVIAL)
        assert (call.record.status, call.record.result, call.ended) == (
            ExecutionStatus.OK,
            "2",
            None,
        ), call
        assert call.elapsed_s < TRIVIAL_CALL_S, f"a trivial call took {call.elapsed_s:.2f} s"

    def end(self, session_id: uuid.UUID) -> SessionState:
        """DELETE: the session ends at once, nothing of it left a second later."""
        state = self.host.end(session_id, EndReason.DELETED)
        self._check_secret(state)
        assert state.status == SessionStatus.TERMINATED, state
        self.check_gone(session_id)
        return state

    def discard(self, session_id: uuid.UUID) -> None:
        """End the session of a failed step, unchecked (a failure is reported already); its
        PID namespace forgotten at once: the kernel may give its number to the next spare."""
        self._namespaces.pop(session_id, None)
        self.host.end(session_id, EndReason.DELETED)

    def runtime(self, session_id: uuid.UUID) -> str:
        (state,) = self.host.states([session_id]).values()
        return state.runtime

    def live(self) -> set[uuid.UUID]:
        return set(self.host.interpreter_pids())

    # --- D and S: every record and state ------------------------------------------------

    def check_record(self, record: ExecutionRecord, limits: Limits, session_id: uuid.UUID) -> None:
        with self._lock:
            assert record.id not in self._record_ids, "two answers carry the same record"
            self._record_ids.add(record.id)
        assert record.session_id == session_id, record
        assert record.status in TERMINAL_STATUSES, record.status
        assert record.status != ExecutionStatus.INTERNAL_ERROR, (
            f"a program made the service fail: {record.stderr[-2000:]!r}"
        )
        texts = {"stdout": record.stdout, "stderr": record.stderr, "result": record.result or ""}
        for name, text in texts.items():
            assert "\x00" not in text, f"{name} holds a NUL"
            encoded = text.encode("utf-8")  # raises on lone surrogates
            assert len(encoded) <= limits.max_output_bytes, (
                f"{name} is {len(encoded)} bytes of UTF-8, over the cap"
            )
        self._check_secret(record)

    def _check_secret(self, value: Any) -> None:
        assert self.canary.token not in value.model_dump_json(), "the canary secret leaked"

    # --- P, H and F: after a step ------------------------------------------------------

    def snapshot(self) -> HostState:
        entries = {d: frozenset(os.listdir(d)) for d in _host_dirs() if os.path.isdir(d)}
        return HostState(entries, _sysv_ipc_objects(), len(self._zombies()))

    def check(self, before: HostState) -> None:
        """P, H and F against the host as it was ``before`` the step."""
        for ended in set(self._namespaces) - self.live():
            self.check_gone(ended)
        if self.tracks_processes:
            strays = polled(self._strays, SETTLE_S, until=lambda found: not found, interval_s=0.05)
            assert not strays, "running beside the zygotes, spares and sessions:\n" + "\n".join(
                map(str, strays)
            )
        for runtime, pid in self.zygotes.items():
            assert self.host.zygote_pids().get(runtime) == pid, f"the {runtime} zygote changed"
        self._check_cgroups()
        after = self.snapshot()
        for directory, names in after.entries.items():
            new = names - before.entries.get(directory, frozenset())
            left = [name for name in sorted(new) if self._from_a_session(Path(directory, name))]
            assert not left, f"left in the host's {directory}: {left}"
        for kind, objects in after.ipc.items():
            created = objects - before.ipc[kind]
            leaked = [o for o in sorted(created) if {o[1], o[2]} & {self.uid, OVERFLOW_UID}]
            assert not leaked, f"SysV IPC {kind} objects left on the host: {leaked}"
        assert after.zombies <= before.zombies, "zombies accumulate:\n" + "\n".join(
            map(str, self._zombies())
        )

    def check_gone(self, session_id: uuid.UUID) -> None:
        """Nothing of an ended session runs a second later; its cgroup is gone."""
        assert session_id not in self.live(), f"session {session_id} still holds its place"
        namespace = self._namespaces.pop(session_id, None)
        if self.tracks_processes and namespace is not None:

            def left() -> list[HostProcess]:
                return [
                    p for p in host_processes() if p.pid_namespace == namespace and not p.zombie
                ]

            survivors = polled(left, SETTLE_S, until=lambda found: not found, interval_s=0.05)
            assert not survivors, f"session {session_id} ended, still running:\n" + "\n".join(
                map(str, survivors)
            )
        assert _cgroup_name(session_id) not in _session_cgroups() - self._foreign_cgroups, (
            f"session {session_id} ended, its cgroup is left"
        )

    def _live_namespaces(self) -> set[str]:
        namespaces = set()
        for pid in self.host.interpreter_pids().values():
            process = read_process(pid)
            if process is not None:
                namespaces.add(process.pid_namespace)
        return namespaces

    def _strays(self) -> list[HostProcess]:
        """Processes of the session uid that are neither a zygote, a zygote's spare (at most one
        namespace per zygote, the zygote's command line), nor in a live session."""
        zygotes = [read_process(pid) for pid in self.host.zygote_pids().values()]
        assert all(zygotes), "a zygote is gone"
        known = {z.pid_namespace for z in zygotes if z} | self._live_namespaces()
        commands = {z.cmdline for z in zygotes if z}
        others = [
            p
            for p in host_processes()
            if p.uid == self.uid and not p.zombie and p.pid_namespace not in known
        ]
        spare_like = (
            len({p.pid_namespace for p in others}) <= len(zygotes)
            and len(others) <= SPARES_PER_ZYGOTE * len(zygotes)
            and all(p.cmdline in commands for p in others)
        )
        return [] if spare_like else others

    def _check_cgroups(self) -> None:
        if not self.tracks_processes:
            return
        live = {_cgroup_name(sid) for sid in self.live()}
        existing = _session_cgroups() - self._foreign_cgroups
        assert existing <= live, f"cgroups of ended sessions left: {sorted(existing - live)}"
        assert live <= existing, f"live sessions without a cgroup: {sorted(live - existing)}"

    def _from_a_session(self, path: Path) -> bool:
        try:
            owner = path.lstat().st_uid
        except FileNotFoundError:
            return False
        return owner in (self.uid, OVERFLOW_UID) or path.name.startswith("exec-agent")

    def _zombies(self) -> list[HostProcess]:
        """Zombies of the session uid outside a live session (inside one, they are its own,
        and go with it), and of this process."""
        me, live = os.getpid(), self._live_namespaces()
        return [
            p
            for p in host_processes()
            if p.zombie and ((p.uid == self.uid and p.pid_namespace not in live) or p.ppid == me)
        ]


def _cgroup_name(session_id: uuid.UUID) -> str:
    return f"session-{session_id.hex[:16]}"


def _session_cgroups() -> set[str]:
    """The session cgroups of this process' session hosts (``exec-agent-<our pid>-*``), in
    every hierarchy."""
    found: set[str] = set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, own = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            if controller not in SESSION_CONTROLLERS:
                continue
            base = CGROUP_ROOT / controller / own.lstrip("/")
            found |= {p.name for p in base.glob(f"exec-agent-{os.getpid()}-*/session-*")}
    return found
