"""Per-slot job cgroups: memory, process count and CPU of the whole job, not per process.

Each slot owns one job cgroup, reused across its (sequential) jobs: the host moves the
job's supervisor in before the job starts, so every process of the job is charged to
it. Works on cgroup v2 (unified) and v1 (memory, pids, cpuacct hierarchies). Without a
writable hierarchy the engine falls back to rlimits and reports the gap.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CgroupUsage",
    "JobCgroup",
    "detect_cgroup_version",
    "open_job_cgroup",
    "remove_dead_pools_groups",
    "remove_group",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
SETTLED_BYTES = 16 * 1024 * 1024
SETTLE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CgroupUsage:
    peak_memory_bytes: int
    cpu_time_s: float
    oom_kills: int


def detect_cgroup_version() -> int | None:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return 2
    if all((CGROUP_ROOT / c).is_dir() for c in V1_CONTROLLERS):
        return 1
    return None


def _own_cgroup_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@functools.cache
def _key_line(key: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(key)} (\d+)$", re.MULTILINE)


def _key_value(text: str, key: str) -> int:
    """``key``'s value in a flat-keyed file (``memory.stat``, ``cpu.stat``...), 0 if absent."""
    found = _key_line(key).search(text)
    return int(found.group(1)) if found else 0


class _Files:
    """Descriptors of a cgroup's control files, opened once: jobs touch them every run.

    Paths are strings, built once by the cgroup: building and hashing ``Path`` objects cost
    more than the reads themselves, several times per job.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return fd

    def write(self, path: str, value: str) -> None:
        os.pwrite(self._fd(path), value.encode(), 0)

    def read(self, path: str) -> str:
        return os.pread(self._fd(path), 65536, 0).decode()

    def read_int(self, path: str) -> int:
        return int(self.read(path).split()[0])

    def read_key(self, path: str, key: str) -> int:
        return _key_value(self.read(path), key)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class JobCgroup:
    """One slot's job cgroup. Subclasses know a cgroup version's file names."""

    version: int

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.files = _Files()
        self._limits: tuple[int, int] | None = None

    def prepare(self, memory_bytes: int, max_processes: int) -> int:
        """Set the next job's limits (when they changed), reset its counters.

        Returns the memory charged before the job starts (the zygote and cached pages).
        """
        self.settle()
        if self._limits != (memory_bytes, max_processes):
            self._set_limits(memory_bytes, max_processes)
            self._limits = (memory_bytes, max_processes)
        return self._reset_counters()

    def limit(self, memory_bytes: int, max_processes: int) -> None:
        """Set the caps now, as they are (a session's: its memory is its own to keep)."""
        self._set_limits(memory_bytes, max_processes)
        self._limits = (memory_bytes, max_processes)

    def restart_counters(self) -> int:
        """Start the peak memory and CPU counters anew; the memory charged now."""
        return self._reset_counters()

    def settle(self) -> None:
        """Wait for the kernel to release what the last job held (e.g. its SysV shared
        memory, freed when its IPC namespace is torn down after it exited), so that
        one job's leftovers never eat into the next one's memory.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while self._held_bytes() > SETTLED_BYTES and time.monotonic() < deadline:
            time.sleep(0.001)

    def _held_bytes(self) -> int:
        """Anonymous and shared memory charged now (page cache excluded)."""
        raise NotImplementedError

    def _set_limits(self, memory_bytes: int, max_processes: int) -> None:
        raise NotImplementedError

    def _reset_counters(self) -> int:
        raise NotImplementedError

    def usage(self) -> CgroupUsage:
        raise NotImplementedError

    def cpu_time_s(self) -> float:
        raise NotImplementedError

    def oom_kills(self) -> int:
        """How many processes the memory cap has killed so far (a counter)."""
        return self.usage().oom_kills

    def add(self, pid: int) -> None:
        for d in self.dirs:
            self.files.write(str(d / "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        # Opened afresh each time: cgroup v1 caches a pid list per open file (and each read
        # keeps it a second longer), so a kept descriptor would list the dead forever.
        return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]

    def kill_all(
        self, timeout_s: float = 5.0, spare: frozenset[int] | set[int] = frozenset()
    ) -> bool:
        """SIGKILL every process in the cgroup but ``spare`` until none is left."""
        deadline = time.monotonic() + timeout_s
        while pids := [pid for pid in self.pids() if pid not in spare]:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def remove(self) -> None:
        self.kill_all()
        self.files.close()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


class _V1(JobCgroup):
    version = 1

    def __init__(self, dirs: list[Path]) -> None:
        super().__init__(dirs)
        by_controller = {d.parts[len(CGROUP_ROOT.parts)]: d for d in dirs}
        self.memory, self.pids_dir, self.cpuacct = (by_controller[c] for c in V1_CONTROLLERS)
        self._stat = str(self.memory / "memory.stat")
        self._usage = str(self.memory / "memory.usage_in_bytes")
        self._max_usage = str(self.memory / "memory.max_usage_in_bytes")
        self._oom_control = str(self.memory / "memory.oom_control")
        self._cpu_usage = str(self.cpuacct / "cpuacct.usage")

    def _set_limits(self, memory_bytes: int, max_processes: int) -> None:
        # memsw must stay >= limit: order the writes by direction.
        current = self.files.read_int(str(self.memory / "memory.limit_in_bytes"))
        names = ["memory.limit_in_bytes"]
        if (self.memory / "memory.memsw.limit_in_bytes").exists():
            names.append("memory.memsw.limit_in_bytes")
        for name in reversed(names) if memory_bytes > current else names:
            self.files.write(str(self.memory / name), str(memory_bytes))
        self.files.write(str(self.pids_dir / "pids.max"), str(max_processes))

    def _held_bytes(self) -> int:
        stat = self.files.read(self._stat)
        return _key_value(stat, "rss") + _key_value(stat, "shmem")

    def _reset_counters(self) -> int:
        self.files.write(self._max_usage, "0")
        self.files.write(self._cpu_usage, "0")
        return self.files.read_int(self._usage)

    def cpu_time_s(self) -> float:
        return self.files.read_int(self._cpu_usage) / 1e9

    def oom_kills(self) -> int:
        return self.files.read_key(self._oom_control, "oom_kill")

    def usage(self) -> CgroupUsage:
        return CgroupUsage(
            peak_memory_bytes=self.files.read_int(self._max_usage),
            cpu_time_s=self.cpu_time_s(),
            oom_kills=self.oom_kills(),
        )


class _V2(JobCgroup):
    version = 2

    def __init__(self, dirs: list[Path]) -> None:
        super().__init__(dirs)
        self._cpu_base_usec = 0
        d = dirs[0]
        self._stat = str(d / "memory.stat")
        self._current = str(d / "memory.current")
        self._peak = str(d / "memory.peak")
        self._events = str(d / "memory.events")
        self._cpu_stat = str(d / "cpu.stat")

    def _set_limits(self, memory_bytes: int, max_processes: int) -> None:
        d = self.dirs[0]
        self.files.write(str(d / "memory.max"), str(memory_bytes))
        with contextlib.suppress(OSError):
            self.files.write(str(d / "memory.swap.max"), "0")
        self.files.write(str(d / "pids.max"), str(max_processes))

    def _held_bytes(self) -> int:
        stat = self.files.read(self._stat)
        return _key_value(stat, "anon") + _key_value(stat, "shmem")

    def _reset_counters(self) -> int:
        with contextlib.suppress(OSError):
            # Resettable on Linux >= 6.12, as seen through the descriptor that wrote.
            self.files.write(self._peak, "0")
        self._cpu_base_usec = self.files.read_key(self._cpu_stat, "usage_usec")
        return self.files.read_int(self._current)

    def cpu_time_s(self) -> float:
        usec = self.files.read_key(self._cpu_stat, "usage_usec")
        return (usec - self._cpu_base_usec) / 1e6

    def usage(self) -> CgroupUsage:
        return CgroupUsage(
            peak_memory_bytes=self.files.read_int(self._peak) if os.path.exists(self._peak) else 0,
            cpu_time_s=self.cpu_time_s(),
            oom_kills=self.files.read_key(self._events, "oom_kill"),
        )

    def kill_all(
        self, timeout_s: float = 5.0, spare: frozenset[int] | set[int] = frozenset()
    ) -> bool:
        kill = self.dirs[0] / "cgroup.kill"
        if kill.exists() and not spare:
            _write(kill, "1")
        return super().kill_all(timeout_s, spare)


def _v2_parent(own: str) -> Path:
    """A v2 cgroup under which we may create children with memory and pids enabled.

    The "no internal processes" rule forbids enabling controllers for children of a
    cgroup that has processes, so our own processes move to a leaf first.
    """
    parent = CGROUP_ROOT / own.lstrip("/")
    wanted = {"memory", "pids", "cpu"}
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    if wanted <= enabled:
        return parent
    try:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))
    except OSError:
        leaf = parent / "exec-agent-service"
        leaf.mkdir(exist_ok=True)
        for pid in (parent / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                _write(leaf / "cgroup.procs", pid)
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(wanted)))
    return parent


def open_job_cgroup(name: str, parent: str | None = None) -> JobCgroup:
    """Create the job cgroup ``name`` under ``parent`` (default: our own cgroup).

    Raises ``OSError`` when no writable hierarchy exists.
    """
    version = detect_cgroup_version()
    own = _own_cgroup_paths()
    if version == 2:
        base = _v2_parent(parent or own.get("", "/"))
        job = base / name
        job.mkdir(parents=True, exist_ok=True)
        return _V2([job])
    if version == 1:
        dirs = []
        for controller in V1_CONTROLLERS:
            rel = (parent or own.get(controller, "/")).lstrip("/")
            d = CGROUP_ROOT / controller / rel / name
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
        with contextlib.suppress(OSError):
            _write(dirs[0] / "memory.swappiness", "0")
        return _V1(dirs)
    raise OSError("no cgroup hierarchy with memory, pids and cpu accounting")


def _group_bases(parent: str | None) -> list[Path]:
    """The directories that hold pools' groups (``parent``, default our own cgroup), one per
    hierarchy."""
    version = detect_cgroup_version()
    own = _own_cgroup_paths()
    if version == 2:
        return [CGROUP_ROOT / (parent or own.get("", "/")).lstrip("/")]
    if version == 1:
        return [CGROUP_ROOT / c / (parent or own.get(c, "/")).lstrip("/") for c in V1_CONTROLLERS]
    return []


def remove_group(name: str, parent: str | None = None) -> None:
    """Remove the (empty) cgroup directory ``name`` that held a pool's slot cgroups."""
    for base in _group_bases(parent):
        with contextlib.suppress(OSError):
            (base / name).rmdir()


POOL_GROUP = re.compile(r"exec-agent-(\d+)-[0-9a-f]{8}")
"""The name of a pool's group: its process id and a random part (``SandboxPool``)."""


def remove_dead_pools_groups(parent: str | None = None) -> list[str]:
    """Remove the groups of pools whose process is gone, and their slot groups.

    A replica killed outright never closes its pool, so nothing else would. Only empty
    cgroups can be removed (the kernel refuses a cgroup with processes), so a pool still
    running is never touched; one whose process id was reused is left alone. The names
    removed.
    """
    removed: set[str] = set()
    for base in _group_bases(parent):
        try:
            groups = [g for g in base.iterdir() if POOL_GROUP.fullmatch(g.name) and g.is_dir()]
        except OSError:
            continue
        for group in groups:
            match = POOL_GROUP.fullmatch(group.name)
            if match is None or _process_exists(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                for slot in (d for d in group.iterdir() if d.is_dir()):
                    slot.rmdir()
                group.rmdir()
                removed.add(group.name)
    return sorted(removed)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
