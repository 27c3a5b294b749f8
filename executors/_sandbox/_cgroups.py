"""Per-slot job cgroups: memory, process count and CPU of the whole job, not per process.

Each slot owns one job cgroup, reused across its (sequential) jobs: the host moves the
job's supervisor in before the job starts, so every process of the job is charged to
it. Works on cgroup v2 (unified) and v1 (memory, pids, cpuacct hierarchies). Without a
writable hierarchy the engine falls back to rlimits and reports the gap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupUsage", "JobCgroup", "detect_cgroup_version", "open_job_cgroup"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpuacct")


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


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _read_key(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class JobCgroup:
    """One slot's job cgroup. Subclasses know a cgroup version's file names."""

    version: int

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def prepare(self, memory_bytes: int, max_processes: int) -> None:
        """Set the next job's limits and reset its counters."""
        raise NotImplementedError

    def usage(self) -> CgroupUsage:
        raise NotImplementedError

    def cpu_time_s(self) -> float:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; False if it stayed busy."""
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def remove(self) -> None:
        self.kill_all()
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

    def _dir(self, controller: str) -> Path:
        return next(d for d in self.dirs if d.parts[len(CGROUP_ROOT.parts)] == controller)

    def prepare(self, memory_bytes: int, max_processes: int) -> None:
        memory = self._dir("memory")
        memsw = memory / "memory.memsw.limit_in_bytes"
        # memsw must stay >= limit: order the writes by direction.
        current = _read_int(memory / "memory.limit_in_bytes")
        order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        if memory_bytes > current:
            order.reverse()
        for name in order:
            if name.startswith("memory.memsw") and not memsw.exists():
                continue
            _write(memory / name, str(memory_bytes))
        _write(memory / "memory.max_usage_in_bytes", "0")
        _write(self._dir("pids") / "pids.max", str(max_processes))
        _write(self._dir("cpuacct") / "cpuacct.usage", "0")

    def cpu_time_s(self) -> float:
        return _read_int(self._dir("cpuacct") / "cpuacct.usage") / 1e9

    def usage(self) -> CgroupUsage:
        memory = self._dir("memory")
        return CgroupUsage(
            peak_memory_bytes=_read_int(memory / "memory.max_usage_in_bytes"),
            cpu_time_s=self.cpu_time_s(),
            oom_kills=_read_key(memory / "memory.oom_control", "oom_kill"),
        )


class _V2(JobCgroup):
    version = 2

    def prepare(self, memory_bytes: int, max_processes: int) -> None:
        d = self.dirs[0]
        _write(d / "memory.max", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(d / "memory.swap.max", "0")
        with contextlib.suppress(OSError):
            _write(d / "memory.peak", "0")  # resettable on Linux >= 6.12
        _write(d / "pids.max", str(max_processes))
        self._cpu_base_usec = _read_key(d / "cpu.stat", "usage_usec")

    def cpu_time_s(self) -> float:
        return (_read_key(self.dirs[0] / "cpu.stat", "usage_usec") - self._cpu_base_usec) / 1e6

    def usage(self) -> CgroupUsage:
        d = self.dirs[0]
        peak = d / "memory.peak"
        return CgroupUsage(
            peak_memory_bytes=_read_int(peak) if peak.exists() else 0,
            cpu_time_s=self.cpu_time_s(),
            oom_kills=_read_key(d / "memory.events", "oom_kill"),
        )

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        kill = self.dirs[0] / "cgroup.kill"
        if kill.exists():
            _write(kill, "1")
        return super().kill_all(timeout_s)


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
