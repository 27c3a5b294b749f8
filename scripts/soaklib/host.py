"""What the service is and leaves on the host, read from /proc and /sys: its process tree and
memory by role, the sandbox processes beyond each slot's zygote and spare, the sandbox pools'
cgroups, and the temporary files the sandboxes left."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERFLOW_UID = 65534
ZYGOTE_SCRIPT = "zygote.py"
SPARE_MAX_PROCESSES = 2
"""Between jobs a slot keeps one spare job sandbox ready: its init and its program process."""
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - looked at for leftovers, never written
CGROUP_ROOT = Path("/sys/fs/cgroup")
POOL_GROUP = re.compile(r"exec-agent-(\d+)-[0-9a-f]{8}")
"""A sandbox pool's cgroup (executors/_pool.py): ``exec-agent-<replica pid>-<random>``."""


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    cmdline: str
    start_ticks: int
    pid_namespace: str
    rss_bytes: int
    anon_bytes: int

    @property
    def key(self) -> tuple[int, int]:
        """The pid with its start time: one process, even if the pid is reused later."""
        return self.pid, self.start_ticks

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "cmdline": self.cmdline[:160]}


def _read_proc(pid: int) -> Proc | None:
    base = Path("/proc", str(pid))
    try:
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        namespace = os.readlink(base / "ns" / "pid")
    except OSError:  # gone meanwhile, or a kernel thread
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    values: dict[str, str] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        values[name] = rest.strip()

    def kib(name: str) -> int:
        return int(values.get(name, "0 kB").split()[0]) * 1024

    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        uid=int(values["Uid"].split()[1]),
        state=fields[0],
        cmdline=cmdline.strip(),
        start_ticks=int(fields[19]),
        pid_namespace=namespace,
        rss_bytes=kib("VmRSS"),
        anon_bytes=kib("RssAnon"),
    )


def all_processes() -> list[Proc]:
    found = (_read_proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None and p.state != "Z"]


def process_tree(root: int, processes: list[Proc] | None = None) -> list[Proc]:
    """``root`` and every process below it, by parent links."""
    processes = all_processes() if processes is None else processes
    children: dict[int, list[Proc]] = {}
    top: list[Proc] = []
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
        if process.pid == root:
            top.append(process)
    found: list[Proc] = []
    todo = top
    while todo:
        process = todo.pop()
        found.append(process)
        todo.extend(children.get(process.pid, []))
    return found


def is_sandbox(process: Proc, slot_uids: range) -> bool:
    """A slot's process: its uid (or the overflow uid a job's user namespace shows for unmapped
    ones), or the zygote's command line (bubblewrap and its shell, as root)."""
    return (
        process.uid in slot_uids or process.uid == OVERFLOW_UID or ZYGOTE_SCRIPT in process.cmdline
    )


def memory(tree: list[Proc], slot_uids: range) -> dict[str, Any]:
    """The tree's RSS (and private, anonymous part), split by role.

    ``idle_ray_workers`` are Ray's pooled workers (``ray::IDLE``): Ray starts and ends them by
    itself, so the growth that counts leaves them out.
    """
    groups: dict[str, list[Proc]] = {
        "sandboxes": [],
        "ray_workers": [],
        "idle_ray_workers": [],
        "other": [],
    }
    for process in tree:
        if is_sandbox(process, slot_uids):
            groups["sandboxes"].append(process)
        elif process.cmdline.startswith("ray::IDLE"):
            groups["idle_ray_workers"].append(process)
        elif process.cmdline.startswith("ray::"):
            groups["ray_workers"].append(process)
        else:
            groups["other"].append(process)
    total = sum(p.rss_bytes for p in tree)
    idle = sum(p.rss_bytes for p in groups["idle_ray_workers"])
    workers: Counter[str] = Counter()
    for process in groups["ray_workers"]:
        workers[process.cmdline.split()[0]] += process.rss_bytes
    return {
        "processes": len(tree),
        "rss_bytes": total,
        "anon_bytes": sum(p.anon_bytes for p in tree),
        "counted_rss_bytes": total - idle,
        "by_role": {
            role: {"processes": len(members), "rss_bytes": sum(p.rss_bytes for p in members)}
            for role, members in groups.items()
        },
        "ray_workers_rss_bytes": dict(sorted(workers.items())),
    }


def sandbox_strays(tree: list[Proc], slot_uids: range) -> list[Proc]:
    """Sandbox processes that are neither a slot's zygote nor its waiting spare.

    A zygote is the script's process (a slot's uid) whose parent is not a slot's process
    (bubblewrap's init, or without bubblewrap the replica); a spare is at most
    ``SPARE_MAX_PROCESSES`` forks of its zygote, with its command line, in one PID namespace of
    their own. Anything else of a slot's uid (or the overflow uid) is a stray.
    """
    by_pid = {p.pid: p for p in tree}
    jobs = [p for p in tree if p.uid in slot_uids or p.uid == OVERFLOW_UID]
    zygotes = [
        p
        for p in jobs
        if ZYGOTE_SCRIPT in p.cmdline and p.ppid in by_pid and by_pid[p.ppid].uid not in slot_uids
    ]
    strays: list[Proc] = []
    explained = {z.pid for z in zygotes}
    for zygote in zygotes:
        below = [p for p in process_tree(zygote.pid, tree) if p.pid != zygote.pid]
        namespaces = {p.pid_namespace for p in below}
        spare_like = (
            len(below) <= SPARE_MAX_PROCESSES
            and len(namespaces) <= 1
            and zygote.pid_namespace not in namespaces
            and all(p.cmdline == zygote.cmdline for p in below)
        )
        explained |= {p.pid for p in below}
        if not spare_like:
            strays += below
    strays += [p for p in jobs if p.pid not in explained]
    return strays


def wait_for_strays(root: int, slot_uids: range, timeout_s: float) -> list[Proc]:
    """The sandbox strays once they are gone, or those still there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        strays = sandbox_strays(process_tree(root), slot_uids)
        if not strays or time.monotonic() > deadline:
            return strays
        time.sleep(0.25)


def cgroup_bases(pid: int) -> list[Path]:
    """The cgroup directories ``pid`` is in, one per hierarchy (v1) or the one (v2)."""
    bases = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",") if controllers else [""]
            for name in names:
                if name.startswith("name="):
                    continue
                base = (
                    CGROUP_ROOT / name / path.lstrip("/")
                    if name
                    else CGROUP_ROOT / path.lstrip("/")
                )
                if base.is_dir():
                    bases.append(base)
    return bases


def pool_cgroups(bases: list[Path], pids: set[int]) -> list[str]:
    """The sandbox pools' cgroups under ``bases`` made by one of ``pids``."""
    found = []
    for base in bases:
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                match = POOL_GROUP.fullmatch(entry.name)
                if match and int(match.group(1)) in pids and entry.is_dir():
                    found.append(str(entry))
    return sorted(found)


def tmp_entries() -> dict[str, set[str]]:
    entries: dict[str, set[str]] = {}
    for directory in TMP_DIRS:
        with contextlib.suppress(OSError):
            entries[directory] = set(os.listdir(directory))
    return entries


def left_files(before: dict[str, set[str]], slot_uids: range) -> list[str]:
    """New entries of the host's temporary directories that a sandbox (its uid) or the engine
    (its name) made; other processes of the host create theirs meanwhile, which do not count."""
    left = []
    for directory, names in tmp_entries().items():
        for name in sorted(names - before.get(directory, set())):
            path = Path(directory, name)
            try:
                owner = path.lstat().st_uid
            except OSError:
                continue
            if owner in slot_uids or owner == OVERFLOW_UID or name.startswith("exec-agent"):
                left.append(str(path))
    return left
