"""The command line that starts one slot's zygote inside its sandbox.

As root: bubblewrap builds the slot's PID, network, IPC and UTS namespaces and a
read-only root (and /dev) holding only the interpreter and system libraries; a shell mounts a
full /proc (so each job can mount its own), then ``setpriv`` drops to the slot's
unprivileged uid with no capabilities and no_new_privs before Python starts.
Not root: bubblewrap in a user namespace, same layout. Without bubblewrap: the zygote
runs directly (degraded; each job still gets its own namespaces where the kernel
allows them).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ZYGOTE_SOURCE", "LaunchPlan", "UnusableInterpreter", "launch_mode", "plan_launch"]

ZYGOTE_SOURCE = Path(__file__).with_name("zygote.py")
ZYGOTE_IN_SANDBOX = "/opt/exec-agent/zygote.py"
BWRAP_WORKDIR = "/work"
DIRECT_WORKDIR = "/tmp/work"
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": BWRAP_WORKDIR,
    "PWD": BWRAP_WORKDIR,
    "TMPDIR": "/tmp",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MALLOC_ARENA_MAX": "2",
}
"""The whole environment of sandboxed programs: an allowlist, nothing inherited."""
DIRECT_ENV = {**SANDBOX_ENV, "HOME": DIRECT_WORKDIR, "PWD": DIRECT_WORKDIR}
LAUNCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
"""bubblewrap starts with this and gives the sandbox ``SANDBOX_ENV``: no secret passes."""
ROOT_LINKS_OR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime")
ZYGOTE_TMP_BYTES = 4 * 1024 * 1024
"""The zygote's own /tmp (jobs get theirs): room for matplotlib's font list (~100 KiB)."""
RUNTIME_STAMP = "pins.sha256"
RUNTIME_IN_SANDBOX = "/opt/exec-agent/runtime"


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    mode: str
    """"bubblewrap" (root), "bubblewrap-userns" (not root) or "direct" (no bubblewrap)."""
    host_uid: int
    workdir: str
    """The jobs' working directory (and HOME)."""
    env: dict[str, str]
    """The environment the launched process starts with (bubblewrap then sets its own)."""
    runtime_root: str | None = None
    """Where the zygote sees its runtime's directory (None: the standard library alone)."""


def _python_prefixes(python: str) -> list[str]:
    """Directories outside /usr that the interpreter needs (e.g. a pyenv install)."""
    real = os.path.realpath(python)
    prefix = str(Path(real).parent.parent)
    return [] if prefix.startswith("/usr/") or prefix == "/usr" else [prefix]


def _parents_755(path: str) -> list[str]:
    """bubblewrap creates missing parents 0700; make them traversable."""
    args: list[str] = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[: i + 1])]
    return args


def _bwrap_layout(python: str, runtime_root: str | None) -> list[str]:
    args = [
        "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--hostname", "sandbox",
        "--die-with-parent", "--new-session", "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for name in SANDBOX_ENV:
        args += ["--setenv", name, SANDBOX_ENV[name]]
    for name in ROOT_LINKS_OR_DIRS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for prefix in _python_prefixes(python):
        args += [*_parents_755(prefix), "--ro-bind", prefix, prefix]
    if runtime_root is not None:
        # Read-only, like the interpreter; at a path of its own, which no job mount covers.
        args += [*_parents_755(RUNTIME_IN_SANDBOX), "--ro-bind", runtime_root, RUNTIME_IN_SANDBOX]
    args += [
        "--dev", "/dev",
        "--perms", "01777", "--dir", "/dev/shm",
        "--perms", "0755", "--dir", "/work",
        "--perms", "0755", "--dir", "/scratch",
        "--size", str(ZYGOTE_TMP_BYTES), "--perms", "01777", "--tmpfs", "/tmp",
        *_parents_755(ZYGOTE_IN_SANDBOX),
        "--ro-bind", str(ZYGOTE_SOURCE), ZYGOTE_IN_SANDBOX,
        "--chdir", BWRAP_WORKDIR,  # bubblewrap sets PWD to it
    ]  # fmt: skip
    return args


# Last, once every mount point exists: the root and /dev are bubblewrap's own tmpfs, which in
# a user namespace belong to the sandbox's uid. Read-only, nothing a job writes there (a 48 MiB
# file under /dev, an /etc/ld.so.preload) outlives it or reaches the next job.
READ_ONLY_LAYOUT = ["--remount-ro", "/dev", "--remount-ro", "/"]


def _zygote_argv(python: str, control_fd: int, script: str) -> list[str]:
    """Run ``script`` as ``__main__`` through ``-c``: CPython keeps a script's syntax tree until
    the script returns, which the zygote never does, and every job's fork would copy it (and
    every job's exit unmap it). Compiled here, the tree is freed before the zygote runs."""
    bootstrap = (
        f"__file__ = {script!r}; exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))"
    )
    return [python, "-I", "-S", "-B", "-c", bootstrap, str(control_fd)]


def _reachable_by_others(path: str) -> bool:
    """Whether an unrelated uid can reach ``path`` (every parent searchable, file readable)."""
    real = Path(os.path.realpath(path))
    for parent in real.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & stat.S_IROTH)


class UnusableInterpreter(Exception):
    """The slot's uid could not run the interpreter without bubblewrap's mounts."""


def plan_launch(
    python: str,
    control_fd: int,
    slot_uid: int,
    bwrap: str = "bwrap",
    *,
    runtime_root: str | None = None,
) -> LaunchPlan:
    """How to start a slot's zygote on this host with the strongest isolation available.

    ``runtime_root``: the runtime's directory (its packages under ``site-packages``), mounted
    read-only; None for the standard library alone.
    """
    bwrap_path = shutil.which(bwrap)
    is_root = os.geteuid() == 0
    setpriv = shutil.which("setpriv")
    if bwrap_path and is_root and setpriv:
        drop = [
            setpriv, f"--reuid={slot_uid}", f"--regid={slot_uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]  # fmt: skip
        inner = " ".join(
            shlex.quote(a) for a in [*drop, *_zygote_argv(python, control_fd, ZYGOTE_IN_SANDBOX)]
        )
        script = f"mount -t proc -o nosuid,nodev,noexec proc /proc && exec {inner}"
        argv = [
            bwrap_path,
            *_bwrap_layout(python, runtime_root),
            "--perms", "0555", "--dir", "/proc",
            *READ_ONLY_LAYOUT,
            "--", "/bin/sh", "-c", script,
        ]  # fmt: skip
        return LaunchPlan(
            argv,
            "bubblewrap",
            slot_uid,
            BWRAP_WORKDIR,
            LAUNCH_ENV,
            runtime_root and RUNTIME_IN_SANDBOX,
        )
    if bwrap_path:
        uid = os.geteuid()
        argv = [
            bwrap_path, "--unshare-user", "--uid", str(uid), "--gid", str(os.getegid()),
            "--cap-drop", "ALL", *_bwrap_layout(python, runtime_root), "--proc", "/proc",
            *READ_ONLY_LAYOUT,
            "--", *_zygote_argv(python, control_fd, ZYGOTE_IN_SANDBOX),
        ]  # fmt: skip
        return LaunchPlan(
            argv,
            "bubblewrap-userns",
            uid,
            BWRAP_WORKDIR,
            LAUNCH_ENV,
            runtime_root and RUNTIME_IN_SANDBOX,
        )
    argv = _zygote_argv(python, control_fd, str(ZYGOTE_SOURCE))
    if is_root and setpriv:
        needed_paths = [python, str(ZYGOTE_SOURCE)]
        if runtime_root is not None:
            needed_paths.append(f"{runtime_root}/{RUNTIME_STAMP}")
        for needed in needed_paths:
            if not _reachable_by_others(needed):
                raise UnusableInterpreter(
                    f"without bubblewrap the slot's uid {slot_uid} must reach {needed}, "
                    "but a parent directory or the file is closed to other users"
                )
        argv = [
            setpriv, f"--reuid={slot_uid}", f"--regid={slot_uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", *argv,
        ]  # fmt: skip
        return LaunchPlan(argv, "direct", slot_uid, DIRECT_WORKDIR, DIRECT_ENV, runtime_root)
    return LaunchPlan(argv, "direct", os.geteuid(), DIRECT_WORKDIR, DIRECT_ENV, runtime_root)


def launch_mode(bwrap: str = "bwrap") -> str:
    """The mode ``plan_launch`` will choose on this host (see ``LaunchPlan.mode``)."""
    if shutil.which(bwrap) is None:
        return "direct"
    return "bubblewrap" if os.geteuid() == 0 and shutil.which("setpriv") else "bubblewrap-userns"
