"""The sandbox engine under watch: pools whose every answer and every case are checked against
the invariants of tests/data/security_corpus.README.md, on the host side.

D (data) and S (secrets) on every record a ``WatchedPool`` returns; P (processes), H (health)
and F (files) after a case, by ``WatchedPool.watch()``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executors import (
    RUNTIMES,
    TERMINAL_STATUSES,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SandboxConfig,
    SandboxPool,
)
from tests.support.canary import Canary
from tests.support.polling import polled
from tests.support.processes import HostProcess, host_processes, read_process, slot_zygotes

__all__ = ["ALLOWED_ENV", "HostSnapshot", "PoolFactory", "WatchedPool"]

SLOT_UID_BASE = 62000
"""Our pools' slots run as host uids from here up, ``POOL_UID_STRIDE`` apart per pool; not the
engine's default 60000, which other pools on the same host use (the Ray tests' executors, a
benchmark): the process checks go by uid, so they must see our slots' processes only."""
POOL_UID_STRIDE = 100
SETTLE_S = 1.0
"""Invariant P: one second after the answer, nothing of the job still runs."""
EVERY_SLOT_HOLD_S = 0.25
"""How long each of ``run_on_every_slot``'s jobs keeps its slot, so that they overlap."""
SPARE_MAX_PROCESSES = 2
"""Between jobs a slot's zygote may keep one spare job sandbox ready (its init and program
process)."""
SYSV_IPC_KINDS = ("shm", "msg", "sem")
OVERFLOW_UID = 65534
"""What the host shows for a uid that a job's user namespace does not map."""
CONTROL_CODE = 'print("hello")'

ALLOWED_ENV = frozenset(
    {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "MALLOC_ARENA_MAX",
        "PWD",
    }
) | {name for runtime in RUNTIMES.values() for name in runtime.env}
"""The whole environment a sandboxed program may see: the sandbox's own, and what runtimes add
to it (their thread counts and matplotlib's backend and directory: nothing secret)."""


def _sysv_ipc_objects() -> dict[str, frozenset[tuple[str, int, int]]]:
    """Kind -> (key and id, owner uid, creator uid) of every SysV IPC object on the host."""
    objects = {}
    for kind in SYSV_IPC_KINDS:
        path = Path("/proc/sysvipc", kind)
        header, *lines = path.read_text().splitlines() if path.exists() else [""]
        uid, cuid = header.split().index("uid"), header.split().index("cuid")
        objects[kind] = frozenset(
            (" ".join(f[:2]), int(f[uid]), int(f[cuid])) for f in map(str.split, lines)
        )
    return objects


def _host_dirs() -> tuple[str, ...]:
    return ("/tmp", "/var/tmp", "/dev/shm", str(Path.home()))


@dataclass(frozen=True)
class HostSnapshot:
    """What invariant F and the zombie count compare against."""

    entries: dict[str, frozenset[str]]
    ipc: dict[str, frozenset[tuple[str, int, int]]]
    zombies: int


class WatchedPool:
    """A started pool, and the host-side checks of the corpus' invariants (the module's
    docstring says which)."""

    def __init__(self, pool: SandboxPool, limits: Limits, canary: Canary) -> None:
        self.pool = pool
        self.limits = limits
        self.canary = canary
        base = pool.config.slot_uid_base
        self.uids = frozenset(range(base, base + pool.size))
        isolation = pool.isolation
        # Slots run as their own host uids only when we are root and bubblewrap is used.
        self.tracks_processes = (
            os.geteuid() == 0 and isolation is not None and isolation.mode == "bubblewrap"
        )
        self._record_ids: set[uuid.UUID] = set()
        self._ids_lock = threading.Lock()
        # Every runtime's zygote in every slot, so that the set of zygotes stays the same (the
        # default runtime's start with the pool, the others at their first job).
        for runtime in RUNTIMES:
            self.run_on_every_slot(CONTROL_CODE, runtime=runtime)
        self.zygotes = self._find_zygotes() if self.tracks_processes else {}
        assert len(self.zygotes) == (pool.size if self.tracks_processes else 0), self.zygotes
        self.run_on_every_slot(CONTROL_CODE)  # every slot in its steady state (spare, last init)

    # --- running programs -------------------------------------------------------------

    def limits_with(self, **changes: float) -> Limits:
        """The pool's default limits with ``changes``."""
        return Limits.model_validate({**self.limits.model_dump(), **changes})

    def request(self, code: str, **fields: Any) -> ExecutionRequest:
        return ExecutionRequest.model_validate({"code": code, "limits": self.limits, **fields})

    def run(self, code: str, **fields: Any) -> ExecutionRecord:
        """Run one program (``stdin``, ``files``, ``limits`` as in ExecutionRequest)."""
        return self.submit(self.request(code, **fields))

    def submit(self, request: ExecutionRequest) -> ExecutionRecord:
        record = self.pool.run(request)
        self.check_record(record, request.limits)
        return record

    def timed(self, request: ExecutionRequest) -> tuple[ExecutionRecord, float]:
        """The record and the seconds until the answer."""
        t0 = time.monotonic()
        record = self.submit(request)
        return record, time.monotonic() - t0

    def run_all(self, requests: list[ExecutionRequest]) -> list[ExecutionRecord]:
        """Run the requests at once, one thread each (more than the slots: they queue)."""
        with ThreadPoolExecutor(max_workers=len(requests)) as executor:
            return list(executor.map(self.submit, requests))

    def run_on_every_slot(self, code: str, **fields: Any) -> list[ExecutionRecord]:
        """Run ``code`` once in each slot: all at once, each holding its slot a moment.

        ``code`` must run to its end (the hold is appended to it).
        """
        hold = f"\nimport time as _hold\n_hold.sleep({EVERY_SLOT_HOLD_S})\n"
        return self.run_all([self.request(code + hold, **fields)] * self.pool.size)

    # --- invariants D and S, on every record ------------------------------------------------

    def check_record(self, record: ExecutionRecord, limits: Limits) -> None:
        with self._ids_lock:
            assert record.id not in self._record_ids, "two answers carry the same record"
            self._record_ids.add(record.id)
        assert record.status in TERMINAL_STATUSES, record.status
        assert record.status != ExecutionStatus.INTERNAL_ERROR, (
            f"a program made the service fail: {record.stderr[-2000:]!r}"
        )
        for name, text in (("stdout", record.stdout), ("stderr", record.stderr)):
            assert "\x00" not in text, f"{name} holds a NUL"
            encoded = text.encode("utf-8")  # raises on lone surrogates
            assert len(encoded) <= limits.max_output_bytes, (
                f"{name} is {len(encoded)} bytes of UTF-8, over the cap"
            )
        assert self.canary.token not in record.model_dump_json(), "the canary secret leaked"

    # --- invariants P, H and F, after a case ----------------------------------------------

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Check P, H and F after the block, against the host as it was before it."""
        before = self.snapshot()
        yield
        self.check(before)

    def snapshot(self) -> HostSnapshot:
        entries = {d: frozenset(os.listdir(d)) for d in _host_dirs() if os.path.isdir(d)}
        return HostSnapshot(entries, _sysv_ipc_objects(), len(self._zombies()))

    def check(self, before: HostSnapshot) -> None:
        lingering = self._settled_processes()
        # H; also uses up the spares seen now (one per runtime's zygote)
        controls = [
            record
            for runtime in RUNTIMES
            for record in self.run_on_every_slot(CONTROL_CODE, runtime=runtime)
        ]
        for record in controls:
            assert (record.status, record.stdout) == (ExecutionStatus.OK, "hello\n"), record
        if self.tracks_processes:
            assert self._find_zygotes(wait_s=0) == self.zygotes, "a slot's zygote was replaced"
            now = {p.key for p in self._slot_processes()}
            survivors = [p for p in lingering if p.key in now]
            assert not survivors, "job processes outlived their job:\n" + "\n".join(
                map(str, survivors)
            )
        after = self.snapshot()
        for directory, names in after.entries.items():
            new = names - before.entries.get(directory, frozenset())
            left = [name for name in sorted(new) if self._from_a_job(Path(directory, name))]
            assert not left, f"left in the host's {directory}: {left}"
        for kind, objects in after.ipc.items():
            created = objects - before.ipc[kind]
            leaked = [o for o in sorted(created) if {o[1], o[2]} & (self.uids | {OVERFLOW_UID})]
            assert not leaked, f"SysV IPC {kind} objects left on the host: {leaked}"
        assert after.zombies <= before.zombies, "zombies accumulate:\n" + "\n".join(
            map(str, self._zombies())
        )

    def _from_a_job(self, path: Path) -> bool:
        """Whether a new host file may come from a job or the engine.

        The host's /tmp is shared with everything else on the machine, so not everything
        new there is ours: a job can create files only as its slot's uid (or the overflow
        uid), and the engine's own would carry its name.
        """
        try:
            owner = path.lstat().st_uid
        except FileNotFoundError:
            return False
        return owner in self.uids | {OVERFLOW_UID} or path.name.startswith("exec-agent")

    def _slot_processes(self) -> list[HostProcess]:
        """Running processes of our slots' uids, other than the zygotes."""
        zygotes = {key for keys in self.zygotes.values() for key in keys}
        return [
            p
            for p in host_processes()
            if p.uid in self.uids and p.key not in zygotes and not p.zombie
        ]

    def _settled_processes(self) -> list[HostProcess]:
        """Wait (at most ``SETTLE_S``) until each slot runs nothing but a spare sandbox.

        A spare is one job namespace of at most ``SPARE_MAX_PROCESSES`` processes that never
        ran another program (the zygote's command line); it is returned, so that ``check``
        can tell whether it was used up by the next job, as a spare must be.
        """
        if not self.tracks_processes:
            return []

        def now() -> tuple[list[HostProcess], list[HostProcess]]:
            processes = self._slot_processes()
            return processes, self._strays(processes)

        processes, strays = polled(now, SETTLE_S, until=lambda found: not found[1], interval_s=0.05)
        assert not strays, f"{SETTLE_S} s after the answer, still running:\n" + "\n".join(
            map(str, strays)
        )
        return processes

    def _strays(self, processes: list[HostProcess]) -> list[HostProcess]:
        strays: list[HostProcess] = []
        for uid, keys in self.zygotes.items():
            zygotes = [read_process(pid) for pid, _ in keys]
            mine = [p for p in processes if p.uid == uid]
            namespaces = {p.pid_namespace for p in mine}
            spare_like = (
                all(zygote is not None for zygote in zygotes)
                and len(namespaces) <= len(zygotes)  # a spare per runtime's zygote
                and not namespaces & {z.pid_namespace for z in zygotes if z is not None}
                and len(mine) <= SPARE_MAX_PROCESSES * len(zygotes)
                and all(p.cmdline in {z.cmdline for z in zygotes if z} for p in mine)
            )
            if not spare_like:
                strays += mine
        return strays

    def _find_zygotes(self, wait_s: float = 5.0) -> dict[int, frozenset[tuple[int, float]]]:
        """Slot uid -> its zygotes' (pid, start), one per runtime: the zygote script, started
        by bwrap (or sh)."""

        def now() -> dict[int, frozenset[tuple[int, float]]]:
            found: dict[int, set[tuple[int, float]]] = {}
            for p in slot_zygotes(host_processes(), self.uids):
                found.setdefault(p.uid, set()).add(p.key)
            return {uid: frozenset(keys) for uid, keys in found.items()}

        def complete(found: dict[int, frozenset[tuple[int, float]]]) -> bool:
            return len(found) == len(self.uids) and all(
                len(keys) == len(RUNTIMES) for keys in found.values()
            )

        return polled(now, wait_s, until=complete, interval_s=0.05)

    def _zombies(self) -> list[HostProcess]:
        """Zombies of our slots, and of this process (e.g. a slot's bubblewrap)."""
        me = os.getpid()
        return [p for p in host_processes() if p.zombie and (p.uid in self.uids or p.ppid == me)]

    def close(self) -> None:
        self.pool.close()


class PoolFactory:
    """Starts watched pools, each with slot uids of its own; closes them at the end."""

    def __init__(self, canary: Canary, limits: Limits) -> None:
        self.canary = canary
        self.limits = limits
        self._next_base = SLOT_UID_BASE
        self._pools: list[WatchedPool] = []

    def config(self, **overrides: Any) -> SandboxConfig:
        """A sandbox configuration with slot uids no other pool of the session uses."""
        base, self._next_base = self._next_base, self._next_base + POOL_UID_STRIDE
        return SandboxConfig.model_validate({"slot_uid_base": base, **overrides})

    def start(self, config: SandboxConfig, slots: int) -> SandboxPool:
        """Start a pool as the service does, with its secrets in the environment."""
        pool = SandboxPool(config, slots=slots)
        with self.canary.planted():
            pool.start()
        return pool

    def __call__(self, slots: int, **overrides: Any) -> WatchedPool:
        pool = self.start(self.config(**overrides), slots)
        try:
            watched = WatchedPool(pool, self.limits, self.canary)
        except BaseException:
            pool.close()
            raise
        self._pools.append(watched)
        return watched

    def close_all(self) -> None:
        for watched in self._pools:
            watched.close()
