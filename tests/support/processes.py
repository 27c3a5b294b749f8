"""Snapshots of the host's processes, as this (possibly namespaced) /proc shows them."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import psutil

__all__ = [
    "ZYGOTE_SCRIPT",
    "HostProcess",
    "alive",
    "descendants",
    "host_processes",
    "read_process",
    "slot_zygotes",
]

ZYGOTE_SCRIPT = "/opt/exec-agent/zygote.py"
"""The slots' fork server, as its command line names it inside the sandbox."""


@dataclass(frozen=True)
class HostProcess:
    pid: int
    ppid: int
    uid: int
    state: str  # psutil.STATUS_*
    name: str
    cmdline: str
    started: float
    """With the pid, names one process even if the pid is reused."""
    pid_namespace: str

    @property
    def zombie(self) -> bool:
        """Exited, not yet reaped: gone for every check but the zombie count."""
        return self.state == psutil.STATUS_ZOMBIE

    @property
    def key(self) -> tuple[int, float]:
        return self.pid, self.started

    def __str__(self) -> str:
        return f"pid {self.pid} (uid {self.uid}, {self.state}, ppid {self.ppid}): {self.cmdline[:200]!r}"


def read_process(pid: int) -> HostProcess | None:
    """Process ``pid`` now, or None if it is gone (or a kernel thread)."""
    fields = ["ppid", "uids", "status", "name", "cmdline", "create_time"]
    try:
        info = psutil.Process(pid).as_dict(fields)  # a zombie's cmdline: None
        namespace = os.readlink(f"/proc/{pid}/ns/pid")  # not one of psutil's
    except (psutil.NoSuchProcess, OSError):  # gone meanwhile, or a kernel thread's namespace link
        return None
    return HostProcess(
        pid=pid,
        ppid=info["ppid"],
        uid=info["uids"].real,
        state=info["status"],
        name=info["name"],
        cmdline=" ".join(info["cmdline"] or ()).strip(),
        started=info["create_time"],
        pid_namespace=namespace,
    )


def host_processes() -> list[HostProcess]:
    """Every process this (possibly namespaced) /proc shows."""
    found = map(read_process, psutil.pids())
    return [process for process in found if process is not None]


def descendants(root: int, processes: list[HostProcess] | None = None) -> list[HostProcess]:
    """Every process below ``root`` (not ``root`` itself), by parent links."""
    processes = host_processes() if processes is None else processes
    children: dict[int, list[HostProcess]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    found: list[HostProcess] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def alive(keys: Collection[tuple[int, float]], *, zombies: bool = False) -> list[HostProcess]:
    """The processes of ``keys`` (pid, start) still there; a zombie counts as gone unless
    ``zombies``."""
    return [p for p in host_processes() if p.key in keys and (zombies or not p.zombie)]


def slot_zygotes(processes: list[HostProcess], uids: Collection[int]) -> list[HostProcess]:
    """The slots' fork servers among ``processes``: the zygote script, run as one of ``uids``
    and started by bubblewrap (or its shell). Its spares are forks of it, with its command line,
    below it: not among these."""
    names = {p.pid: p.name for p in processes}
    return [
        p
        for p in processes
        if p.uid in uids and ZYGOTE_SCRIPT in p.cmdline and names.get(p.ppid) in ("bwrap", "sh")
    ]
