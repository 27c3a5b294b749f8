"""The fork server that runs inside a slot's sandbox. Standard library only.

Started once per slot (inside bubblewrap, as the slot's unprivileged uid, with a clean
environment and no secrets), it serves one job at a time over its control socket
(SOCK_SEQPACKET, messages in ``marshal`` format). Per job:

    zygote ──clone(new user, mount, pid, ipc namespaces)──> init (pid 1 of the job):
              handshake with the host (which moves it into the job's cgroup), fresh
              /proc, private size-capped tmpfs for /work, /tmp and /dev/shm, files
        └──fork──> program: own session, rlimits, no capabilities, no_new_privs,
                   seccomp, then the user's code as ``__main__``

When init exits the kernel kills everything left in the job's PID namespace; its
mounts and IPC objects vanish with its namespaces. Nothing carries over to the next
job, which starts again from the untouched zygote. The host reads the program's
stdout and stderr pipes directly; nothing here relays output.

A judged job (with ``test_code``) proves that its test returned by writing the host's nonce on a
pipe of its own. Judged ``isolated`` (the default), the program process forks once it has its job:
the test runs in a process of its own that the program cannot read or write, and reaches the
program's names through a socket (see "the isolated judge" below, and :func:`_judge`). Judged
``in_process``, the test runs after the code in the same ``__main__``: see :func:`_arm_proof`,
which says what that proof withstands and what it does not.

Why this shape: a fresh interpreter costs ~10 ms here, a fork of a small Python process
~0.5 ms. Imports are kept few because fork time grows with the zygote's memory.
"""

from __future__ import annotations

import _json
import _signal  # type: ignore[import-not-found]  # signal.py would import enum
import _socket
import _thread
import array
import atexit
import binascii
import builtins
import ctypes
import marshal
import os
import resource
import sys

# The harness's own code keeps the builtins it started with: a program that patches
# ``builtins.isinstance`` (say) changes its own code, not the harness's. (Functions take their
# builtins from their module's globals when they are defined, so this comes before them.)
globals()["__builtins__"] = dict(vars(builtins))

SANDBOX_UID = 1000
SCRATCH = "/scratch"  # bubblewrap layout: an empty mount point, hidden again per job
MAX_MESSAGE_BYTES = 65536
MAX_FDS = 8
INT_SIZE = array.array("i").itemsize

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_PTYS = 8
"""Pseudo-terminals one job may hold at once (its own devpts instance's ``max``)."""
AS_HEADROOM_BYTES = 256 * 1024 * 1024
"""With a memory cgroup as the real cap, RLIMIT_AS only stops absurd single allocations."""
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
ARTIFACTS_DIR = "out"
MAIN_FILE = "main.py"
TEST_FILE = "<test_code>"
PASSED_EVENT = "exec_agent.test_passed"
"""The audit event the harness raises once ``test_code`` returned (see ``_arm_proof``)."""
REFUSED_EVENTS = frozenset(
    {
        "sys.settrace",  # a trace function can jump over a test's statements (f_lineno)
        "sys.monitoring.register_callback",  # the same, from Python 3.12 on
        "gc.get_objects",  # the next three lead from any object to the proof's closure
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",  # the next two reach any thread's frames, the hook's among them
        "sys._current_exceptions",
    }
)
"""Audit events a judged program may not raise, besides every ``ctypes.*`` one (raw memory)."""
PROOF_FD_FLOOR = 256
"""The proof descriptor lands at a random number above this (and above what a job inherits)."""
MAX_FD = 1 << 20

_TYPE_CHECKING = False  # typing is too heavy to import here; mypy sets this (always_true)
if _TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType
    from typing import Any, NoReturn, TypeVar

    Message = dict[str, Any]
    _T = TypeVar("_T")

_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


class SetupError(Exception):
    """A step of building the job's sandbox failed (the service's fault, not the job's)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None),
        f"mount {target}",
    )  # fmt: skip


class Zygote:
    """What is fixed for the zygote's lifetime, from the host's init message."""

    def __init__(self, init: Message) -> None:
        self.namespaces = bool(init["namespaces"])
        self.new_net = bool(init.get("new_net"))
        self.workdir = str(init.get("workdir", "/work"))
        """``/work`` in bubblewrap's root; ``/tmp/work`` on the host's root (direct mode)."""
        self.seccomp = _SeccompProgram(init["seccomp_bpf"]) if init.get("seccomp_bpf") else None
        self.cgroup_memory = bool(init.get("cgroup_memory"))
        self.cap_last_cap = int(init.get("cap_last_cap", 40))
        self.outer_uid = os.getuid()
        self.outer_gid = os.getgid()


# --- messages -----------------------------------------------------------------


def _recv(sock: _socket.socket) -> tuple[Message, list[int]]:
    try:
        msg, ancdata, _flags, _addr = sock.recvmsg(
            MAX_MESSAGE_BYTES, _socket.CMSG_SPACE(MAX_FDS * INT_SIZE)
        )
    except ConnectionResetError:
        raise EOFError from None  # the host closed with a reply of ours unread
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % INT_SIZE])
    if not msg:
        for fd in fds:
            os.close(fd)
        raise EOFError
    return marshal.loads(msg), list(fds)


def _report(sock: _socket.socket, message: Message) -> None:
    """Send a flat message to the host as JSON: the host never unmarshals sandbox data."""
    try:
        sock.send(_to_json(message).encode())
    except OSError:
        pass  # the host went away: nobody is left to tell


def _to_json(message: Message) -> str:
    """JSON for flat dicts of str, int, float, bool and None (``json`` is too heavy here)."""
    items = []
    for key, value in message.items():
        if isinstance(value, str):
            encoded = _json.encode_basestring_ascii(value)
        elif value is None or isinstance(value, bool):
            encoded = {None: "null", True: "true", False: "false"}[value]
        else:
            encoded = repr(float(value)) if isinstance(value, float) else str(int(value))
        items.append(f"{_json.encode_basestring_ascii(key)}: {encoded}")
    return "{" + ", ".join(items) + "}"


# --- the zygote loop ----------------------------------------------------------


def serve(control_fd: int) -> Job | None:
    """Build spare job sandboxes on request until the host closes the control socket.

    Returns only in a spare's program process, once the host handed it a job.
    """
    control = _socket.socket(fileno=control_fd)
    init, _ = _recv(control)
    zygote = Zygote(init)
    preload_error = _preload(init.get("runtime"), zygote.workdir)
    control.send(probe(zygote, preload_error).encode())  # "ready", with what works here
    _warm_up()
    _add_site_builtins()  # for the jobs: the harness keeps the builtins it started with
    import gc
    import traceback  # noqa: F401 - every failing job's report needs it: loaded once, here

    _libc.malloc_trim(0)  # give back the free heap: every fork would copy its page table
    gc.freeze()  # forked jobs then neither scan nor copy the zygote's objects
    # The kernel reaps finished jobs' inits at once: no zombie waits for our next command.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    while True:
        try:
            request, fds = _recv(control)
        except EOFError:
            return None
        for fd in fds:
            os.close(fd)
        if request.get("type") == "spare":
            session = bool(request.get("session"))
            job = _build_spare(zygote, control, int(request["disk_bytes"]), session)
            if job is not None:
                return job


def _warm_up() -> None:
    """Do once, here, what every job would otherwise do first: CPython builds the AST's
    classes at the first ``compile`` and looks codecs up at first use, and a job doing
    that itself pays for it (and for copying the pages it writes) each time."""
    import io

    compile("def f(x):\n    return [x for _ in ()]\n", "<warm-up>", "exec", dont_inherit=True)
    for name in ("mount", "umount2", "prctl", "capset", "syscall", "unshare"):
        getattr(_libc, name)  # ctypes makes (and caches) each function object on first use
    io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace").write("é")
    "é".encode().decode("utf-8", errors="replace")


def _preload(runtime: Message | None, workdir: str) -> str | None:
    """Import the runtime's heavy modules here, once, so that a job's ``import pandas`` costs
    next to nothing (each job is a fork: nothing it changes in them reaches another job).

    Returns what went wrong, or None. The zygote must still have one thread afterwards: a
    fork copies only the calling thread, and a pool whose threads vanished would hang.
    """
    if not runtime or not runtime.get("path"):
        return None
    try:
        os.environ.update(runtime["env"])  # BLAS pools of one thread, matplotlib's Agg
        sys.path.append(runtime["path"])
        _seed_matplotlib_config(os.path.dirname(runtime["path"]))
        for name in runtime["preload"]:
            __import__(name)
        _warm_preloaded()
        if "matplotlib.pyplot" in sys.modules:
            _save_figures_at_show_and_exit(workdir)
        threads = len(os.listdir("/proc/self/task"))
    except Exception as exc:  # noqa: BLE001 - reported to the host, which refuses the runtime
        return f"preloading failed: {type(exc).__name__}: {exc}"
    if threads != 1:
        return f"{threads} threads after preloading: the zygote could not fork safely"
    return None


def _seed_matplotlib_config(runtime_root: str) -> None:
    """Copy the font list built with the runtime into matplotlib's config directory (the
    zygote's /tmp), so that it is read, not rebuilt from every font at each start."""
    built, config = f"{runtime_root}/mplconfig", os.environ.get("MPLCONFIGDIR")
    if not config or not os.path.isdir(built):
        return
    try:
        _copy_files(built, config)
    except OSError:
        # Not ours to write (without bubblewrap /tmp is the host's, shared by every slot): a
        # directory of our own. A job's /tmp is its own either way, where matplotlib makes it.
        import tempfile

        config = tempfile.mkdtemp(prefix="matplotlib-")
        os.environ["MPLCONFIGDIR"] = config
        _copy_files(built, config)


def _copy_files(source: str, target: str) -> None:
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        fd = os.open(f"{target}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _read_all(os.open(f"{source}/{name}", os.O_RDONLY)))
        finally:
            os.close(fd)


def _warm_preloaded() -> None:
    """Do once what a job's first DataFrame or figure would do (lazy imports, font and text
    caches), so that jobs start from it."""
    modules = sys.modules
    if "pandas" in modules:
        frame = modules["pandas"].DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
        repr(frame.describe())
        repr(frame.sum())
    if "matplotlib.pyplot" in modules:
        import io

        plt = modules["matplotlib.pyplot"]
        figure = plt.figure()
        plt.plot([0, 1, 2], [0, 1, 4], label="warm-up")
        plt.title("warm-up")
        plt.legend()
        figure.savefig(io.BytesIO(), format="png")
        plt.close("all")


_FIGURE_SAVER: list[Callable[[], None]] = []
"""Saves the open figures (a session calls it after each call), once pyplot is preloaded."""
_FIGURES_SAVED = [0]
"""Figures saved so far under ``out/`` (a session starts each call from 0)."""


def _save_figures_at_show_and_exit(workdir: str) -> None:
    """Every figure still open at ``plt.show()`` or at the program's end is saved as
    ``out/figure-N.png`` (N from 1), then closed (API.md, "Artifacts").

    Everything is bound here: a job's program clears this module's globals.
    """
    plt = sys.modules["matplotlib.pyplot"]
    saved = _FIGURES_SAVED

    def save_open_figures(
        _plt: Any = plt, _makedirs: Any = os.makedirs, _sys: Any = sys, _print: Any = print
    ) -> None:
        for number in _plt.get_fignums():
            saved[0] += 1
            try:
                _makedirs(f"{workdir}/out", exist_ok=True)
                _plt.figure(number).savefig(f"{workdir}/out/figure-{saved[0]}.png")
            except Exception as exc:  # noqa: BLE001 - the program's figure, its stderr
                _print(f"exec-agent: figure {saved[0]} not saved: {exc!r}", file=_sys.stderr)
        _plt.close("all")

    def show(*_args: Any, _save: Any = save_open_figures, **_kwargs: Any) -> None:
        _save()

    plt.show = show  # type: ignore[attr-defined]
    atexit.register(save_open_figures)  # run by the job's finish, as at interpreter exit
    _FIGURE_SAVER.append(save_open_figures)


def _clone_into_namespaces(zygote: Zygote, new_net: bool) -> int:
    """Like fork, but the child is pid 1 of new user, mount, pid and IPC namespaces (and a
    network namespace of its own with ``new_net``).

    A raw clone saves a whole process per job. The child skips Python's after-fork
    hooks, which is safe here: the zygote is single-threaded and holds no locks, and
    the child only runs init code before forking the program with a real ``os.fork``.
    """
    if not zygote.namespaces or SYS_CLONE is None:
        return os.fork()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | _signal.SIGCHLD
    if new_net:
        flags |= CLONE_NEWNET
    pid: int = _libc.syscall(SYS_CLONE, ctypes.c_ulong(flags), None, None, None, None)
    if pid < 0:
        raise SetupError(f"clone: {os.strerror(ctypes.get_errno())}")
    return pid


def _build_spare(
    zygote: Zygote, control: _socket.socket, disk_bytes: int, session: bool = False
) -> Job | None:
    """Start a job sandbox that waits for its program; hand its socket to the host.

    The spare is built while the slot runs the previous job, so a job's latency
    excludes the namespaces, mounts, forks and lock-down. Nothing about a job is known
    yet: the spare is the same for every job, and is used once. A ``session``'s spare becomes
    a live interpreter that runs call after call (:func:`_serve_session`); it lives beside
    other sessions of the same zygote, so it always gets a network namespace of its own.
    """
    host_end, job_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    # Set before init says hello: credentials are attached when a message is sent.
    host_end.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    try:
        pid = _clone_into_namespaces(zygote, zygote.new_net or session)
    except SetupError as exc:
        _report(control, {"type": "spare", "error": str(exc)})
        host_end.close()
        job_end.close()
        return None
    if pid == 0:
        control.close()
        host_end.close()
        return _init(zygote, job_end, disk_bytes, session)
    job_end.close()
    message = _to_json({"type": "spare"}).encode()
    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [host_end.fileno()]))]
    try:
        control.sendmsg([message], rights)
    except OSError:
        pass  # the host is gone; EOF on the control socket ends the loop
    host_end.close()
    return None


# --- init: pid 1 of the job ---------------------------------------------------


def _init(zygote: Zygote, job_sock: _socket.socket, disk_bytes: int, session: bool) -> Job:
    """Pid 1 of the job: fork the program, reap, report. The program process builds the
    job's mounts itself: every page a Python process touches after a fork costs a copy,
    so init does as little as it can. If the zygote dies, bubblewrap's init tears the
    slot's PID namespace down, and this one with it.
    """
    try:
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)  # the zygote ignores it; we reap
        job_sock.send(b"hello")  # the host learns our pid from SCM_CREDENTIALS
        status_r, status_w = os.pipe()
        pid = os.fork()
    except Exception as exc:  # noqa: BLE001 - anything here is the service's failure
        _report(job_sock, {"internal": f"init: {exc}"})
        os._exit(0)
    if pid == 0:
        os.close(status_r)
        return Job(zygote, job_sock, status_w, disk_bytes, session)
    os.close(status_w)
    # Not dumpable: the program (same uid) can neither write init's /proc files (its
    # oom_score_adj, say) nor read its memory; done after the fork, which would pass it on.
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    report = _reap_until(pid)
    report.update(_read_status(status_r))
    _report(job_sock, report)
    os._exit(0)


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to an existing file with bare syscalls: a job's setup opens no Python
    file objects (each one's allocations are pages the fork would have to copy)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    """Read ``fd`` to its end and close it, with bare syscalls (as ``_write_file``)."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _first_to_go_on_oom() -> None:
    """Make the program, not the zygote beside it in the cgroup, the OOM killer's choice."""
    try:
        _write_file("/proc/self/oom_score_adj", b"1000")
    except OSError:
        pass  # a higher score needs no privilege; failing here only weakens a preference


def _map_ids(zygote: Zygote) -> None:
    _write_file("/proc/self/uid_map", f"{SANDBOX_UID} {zygote.outer_uid} 1".encode())
    _write_file("/proc/self/setgroups", b"deny")
    _write_file("/proc/self/gid_map", f"{SANDBOX_UID} {zygote.outer_gid} 1".encode())


def _build_filesystem(disk_bytes: int, workdir: str) -> bool:
    """The job's private mounts: a fresh /proc where the kernel allows it (the return
    value), and one size-capped tmpfs for the working directory, /tmp and /dev/shm (a
    single cap on the job's disk use)."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    try:
        # Refused when the /proc we see has mounts over parts of it (bubblewrap's own
        # --proc does): the job then sees the slot's processes, and the report says so.
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        private_proc = True
    except SetupError:
        private_proc = False
    inodes = max(1024, disk_bytes // 4096)
    # No uid=/gid=: the job owns what it mounts, and mountinfo would show the host's uids.
    opts = f"size={disk_bytes},nr_inodes={inodes},mode=0755"
    if workdir == "/work":
        # bubblewrap's root has /scratch, /work, /tmp and /dev/shm as empty mount points.
        _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        _bind_subdir(SCRATCH, "work", workdir, 0o755)
        _bind_subdir(SCRATCH, "tmp", "/tmp", 0o1777)
        _bind_subdir(SCRATCH, "shm", "/dev/shm", 0o1777)
        _check(_libc.umount2(SCRATCH.encode(), MNT_DETACH), "umount scratch")
        _private_ptys()
        return private_proc
    # The host's root (no bubblewrap): the tmpfs covers /tmp, the workdir lives inside it.
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts.replace("mode=0755", "mode=1777"))
    os.mkdir(workdir, 0o755)
    if os.path.isdir("/dev/shm"):
        _bind_subdir("/tmp", ".shm", "/dev/shm", 0o1777)
    return private_proc


def _private_ptys() -> None:
    """A devpts of the job's own, capped at ``MAX_PTYS``: its ptys count against that cap, not
    against the slot's (bubblewrap's instance, shared by the slot's jobs), and vanish with it;
    the kernel keeps the host's last ``kernel.pty.reserve`` ptys from every such instance.
    Where the kernel refuses, no ptys at all rather than shared ones."""
    options = f"newinstance,ptmxmode=0666,mode=0620,max={MAX_PTYS}"
    try:
        _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, options)
    except SetupError:
        _mount("tmpfs", "/dev/pts", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4096")


def _bind_subdir(scratch: str, name: str, target: str, mode: int) -> None:
    path = f"{scratch}/{name}"
    os.mkdir(path)
    os.chmod(path, mode)
    _mount(path, target, None, MS_BIND | MS_NOSUID | MS_NODEV, None)


def _write_files(workdir: str, files: dict[str, str | bytes], replace: bool = False) -> None:
    """Write ``files`` under ``workdir`` (``replace``: over files of the same name, as a
    session's later call does)."""
    for rel, content in files.items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if replace and os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        data = content.encode("utf-8") if isinstance(content, str) else content
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _reap_until(program: int) -> Message:
    """Reap every child (orphans re-parent to init) until the program itself exits.

    CPU time adds up the program and every orphan reaped here, so it covers the
    program's whole tree (processes still running when init exits are killed).
    """
    cpu_s = 0.0
    while True:
        try:
            pid, wstatus, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return {"internal": "program vanished"}
        cpu_s += usage.ru_utime + usage.ru_stime
        if pid == program:
            return {"wstatus": wstatus, "cpu_time_s": cpu_s, "maxrss_bytes": usage.ru_maxrss * 1024}


def _read_status(status_r: int) -> Message:
    """What the program's harness said: ``I...`` setup failed (before ``S``), or ``S`` the
    program started, then ``M`` if it died of an uncaught MemoryError.

    Everything after ``S`` may come from the program itself: at worst it mislabels its own
    failure as ``memory_limit``. Descendants may still hold the pipe, so read once without
    waiting for EOF.
    """
    os.set_blocking(status_r, False)
    try:
        data = os.read(status_r, 4096)
    except BlockingIOError:
        data = b""
    if data.startswith(b"I"):  # written by the harness, before the program could
        return {"internal": "program setup: " + data[1:].decode(errors="replace")}
    return {"memory_error": data.startswith(b"SM")}


# --- the program ----------------------------------------------------------------


class Job:
    """The program's process: locks itself down, waits for a job, then runs its code."""

    def __init__(
        self,
        zygote: Zygote,
        job_sock: _socket.socket,
        status_w: int,
        disk_bytes: int,
        session: bool = False,
    ) -> None:
        self.zygote = zygote
        self.session = session
        self.job_sock = job_sock
        self.status_w = status_w
        self.disk_bytes = disk_bytes
        self.limits: Message = {}
        self.code = ""
        self.test_code: str | None = None
        self.judge: str | None = None
        self._proof: tuple[bytes, int] | None = None
        self._isolated_fds: tuple[int, int] | None = None
        """An isolated judge's proof descriptor and its payload's: only its process reads them."""

    def run_as_main(self, namespace: dict[str, Any]) -> NoReturn:
        """Lock down, receive the job, make ``namespace`` a fresh ``__main__``, run it.

        ``namespace`` is this module's globals, so every frame between the program
        and the outermost one shows only the program's globals. Never returns.

        A job judged ``in_process`` then runs ``test_code`` in the same namespace, with the
        builtins as they were before the program ran, and raises the event that releases the
        proof (``_arm_proof``). Everything used after the program started is a local taken
        before: the program can rebind any global or builtin name. A job judged ``isolated``
        splits in two processes first (``_split_for_judge``).
        """
        if self.session:
            _serve_session(self)
        _os, _sys, _exec, _status = os, sys, exec, _exit_status  # globals go with the reset
        _exiting, _anything, _dict = SystemExit, BaseException, dict  # builtins can be rebound
        _arm, _run_test = _arm_proof, _run_test_then_pass
        _audit, _passed = sys.audit, PASSED_EVENT
        syntax_error = test = judge = None
        try:
            self._lock_down()
            self._ready()  # to the host: a spare, waiting for its job
            self._receive()
            if self._isolated_fds is not None:
                judge = _split_for_judge(self, self._isolated_fds)  # returns in the program
            self._set_rlimits()
            sources = {MAIN_FILE: self.code}
            try:
                code = compile(self.code, MAIN_FILE, "exec", dont_inherit=True)
                if self.test_code is not None:
                    sources[TEST_FILE] = self.test_code
                    test = compile(self.test_code, TEST_FILE, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                syntax_error = exc
            if judge is not None:
                judge.wait_for_go()
                namespace = _new_main_module()  # this module's globals serve the judge
            finish = _reset_interpreter(namespace, sources)
            if test is not None:
                test_builtins = tuple(vars(namespace["__builtins__"]).items())
                _arm(test, self.take_proof())
        except Exception as exc:  # noqa: BLE001 - the service's failure, not the program's
            _os.write(self.status_w, f"I{exc}".encode())
            _os._exit(0)
        # From here on the program may write to the status pipe too: init trusts an ``I`` only
        # before this ``S``, so the program cannot pass its own failure off as the service's.
        # (An isolated judge wrote it already.)
        if judge is None:
            _os.write(self.status_w, b"S")
        if syntax_error is not None:
            _sys.excepthook(type(syntax_error), syntax_error, None)
            finish(1)
        try:
            _exec(code, namespace)
            if judge is not None:
                judge.serve(namespace, self.code, finish)  # never returns
            if test is not None:
                namespace["__builtins__"] = _dict(test_builtins)
                _run_test(test, namespace, _exec, _audit, _passed)
        except _exiting as exc:
            finish(_status(exc))
        except _anything:  # everything: reported as the interpreter would
            _sys.excepthook(*_sys.exc_info())
            finish(1)
        finish(0)

    def take_proof(self) -> tuple[bytes, int]:
        """The nonce and the proof descriptor, forgotten here (``self`` stays reachable)."""
        proof, self._proof = self._proof, None
        if proof is None:
            raise SetupError("a judged job came without its proof descriptor")
        return proof

    def _lock_down(self) -> None:
        """Everything that does not depend on the job: done while the spare waits.

        A session's spare stops short of the last steps (:meth:`_finish_lock_down`): the host
        moves it into the session's own cgroup first, which its cgroup namespace must then
        have as its root. It runs nothing but this harness meanwhile.
        """
        _first_to_go_on_oom()
        if self.zygote.namespaces:
            _map_ids(self.zygote)
            _build_filesystem(self.disk_bytes, self.zygote.workdir)
        os.setsid()  # own session and process group, no controlling terminal
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        os.chdir(self.zygote.workdir if os.path.isdir(self.zygote.workdir) else "/tmp")
        os.umask(0o022)
        if not self.session:
            self._finish_lock_down()

    def _finish_lock_down(self) -> None:
        if self.zygote.namespaces:
            # Its cgroup as the root of its view: /proc/self/cgroup no longer names the slot's.
            _libc.unshare(CLONE_NEWCGROUP)  # best effort: the cgroup holds it either way
        if self.zygote.seccomp:
            _load_seccomp(self.zygote.seccomp)
        _drop_capabilities(self.zygote.cap_last_cap)

    def _ready(self) -> None:
        """Say "ready" to the host, handing it the working directory (with an empty ``out/``),
        which it keeps open to read the job's artifacts once the job ended."""
        try:
            os.mkdir(ARTIFACTS_DIR, 0o755)
        except FileExistsError:  # a working directory shared by jobs (no namespaces)
            pass
        workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [workdir]))]
            self.job_sock.sendmsg([b"ready"], rights)
        finally:
            os.close(workdir)

    def _receive(self) -> None:
        """Take the job from the host, put its streams on 0-2, its files in /work.

        Descriptors: payload, stdin, stdout, stderr; judged, the proof pipe's write end; judged
        ``isolated``, also the judge's payload (test and nonce), which this process never reads.
        """
        try:
            header, fds = _recv(self.job_sock)
        except EOFError:
            os._exit(0)  # the host dropped this spare
        self.judge = header.get("judge")
        expected = {None: 4, JUDGE_IN_PROCESS: 5, JUDGE_ISOLATED: 6}.get(self.judge)
        if len(fds) != expected:
            raise SetupError(f"expected {expected} descriptors, got {len(fds)}")
        self.job_sock.send(b"started")  # from here on, what happens is the job's
        payload_fd, stdin_fd, stdout_fd, stderr_fd = fds[:4]
        payload = marshal.loads(_read_all(payload_fd))
        self.limits, self.code = header["limits"], payload["code"]
        self.test_code = payload.get("test_code")
        _write_files(self.zygote.workdir, payload["files"])
        for target, fd in enumerate((stdin_fd, stdout_fd, stderr_fd, self.status_w)):
            os.dup2(fd, target, inheritable=target < 3)
        self.status_w = 3
        # The job socket too: the program cannot talk to the host. A judged job keeps one
        # more descriptor, the proof's, moved out of the way first; an isolated one two.
        if self.judge == JUDGE_IN_PROCESS:
            proof_fd = _hide_descriptor(fds[4])
            self._proof = (payload["nonce"], proof_fd)
            os.closerange(4, proof_fd)
            os.closerange(proof_fd + 1, MAX_FD)
        elif self.judge == JUDGE_ISOLATED:
            low, high = sorted(fds[4:6])
            if low < 4:
                raise SetupError("the judge's descriptors came below 4")
            self._isolated_fds = (fds[4], fds[5])
            os.closerange(4, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, MAX_FD)
        else:
            os.closerange(4, MAX_FD)
        os.set_inheritable(3, False)

    def _set_rlimits(self) -> None:
        lim = self.limits
        memory = int(lim["memory_bytes"])
        # On top of what is mapped already: a runtime's preloaded modules map hundreds of MiB
        # (shared with the zygote), which the job must not be charged for.
        mapped = int(_read_all(os.open("/proc/self/statm", os.O_RDONLY)).split()[0]) * PAGE_BYTES
        headroom = AS_HEADROOM_BYTES if self.zygote.cgroup_memory else 0
        address_space = mapped + memory + headroom
        cpu = max(1, int(-(-float(lim["cpu_time_s"]) // 1)))
        for kind, soft, hard in (
            (resource.RLIMIT_AS, address_space, address_space),
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_FSIZE, int(lim["max_file_bytes"]), int(lim["max_file_bytes"])),
            (resource.RLIMIT_NOFILE, int(lim["max_open_files"]), int(lim["max_open_files"])),
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_NPROC, int(lim["max_processes"]), int(lim["max_processes"])),
            (resource.RLIMIT_MSGQUEUE, 0, 0),
            (resource.RLIMIT_MEMLOCK, 0, 0),
        ):
            resource.setrlimit(kind, (soft, hard))


def _hide_descriptor(fd: int) -> int:
    """Move ``fd`` to a random number above ``PROOF_FD_FLOOR``, close-on-exec.

    Not a secret (``/proc/self/fd`` lists it), but no program stumbles on it, and nothing it
    executes inherits it. The soft ``RLIMIT_NOFILE`` is raised to make room, and lowered again
    by ``_set_rlimits``: a descriptor above the limit stays open.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = MAX_FD if hard == resource.RLIM_INFINITY else min(hard, MAX_FD)
    floor = min(PROOF_FD_FLOOR, top // 2)  # a job's own descriptors are all below 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    target = floor + int.from_bytes(os.urandom(4), "little") % (top - floor)
    os.dup2(fd, target, inheritable=False)
    return target


# Built once in the zygote: ctypes makes a new type for every array shape on first use,
# and creating types in each job would cost every job.
_CAP_HEADER = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
_NO_CAPABILITIES = (_CapData * 2)()


def _drop_capabilities(cap_last_cap: int) -> None:
    for cap in range(cap_last_cap + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM once gone: fine
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _check(_libc.capset(ctypes.byref(_CAP_HEADER), _NO_CAPABILITIES), "capset")


class _SeccompProgram:
    """The host's compiled filter as a ``sock_fprog``, built once, loaded in each job."""

    def __init__(self, bpf: bytes) -> None:
        self.buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self.prog = _SockFprog(len(bpf) // 8, ctypes.cast(self.buffer, ctypes.c_void_p))


def _load_seccomp(program: _SeccompProgram) -> None:
    prog = ctypes.byref(program.prog)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0), "seccomp")


def _exit_status(exc: SystemExit, _sys: Any = sys) -> int:
    """The status ``python`` exits with for ``SystemExit(exc.code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=_sys.stderr)
    return 1


def _finisher(
    _exit: Callable[[int], NoReturn] = os._exit,
    _sys: Any = sys,
    _atexit: Any = atexit,
    _exit_status: Any = _exit_status,
) -> Callable[[int], NoReturn]:
    """What the interpreter does at exit, minus tearing down modules (the slow part)."""

    def finish(status: int) -> NoReturn:
        try:
            threading = _sys.modules.get("threading")
            if threading is not None:
                threading._shutdown()  # join non-daemon threads, as at normal exit
            _atexit._run_exitfuncs()
        except SystemExit as exc:
            status = _exit_status(exc)
        except BaseException:  # noqa: BLE001
            _sys.excepthook(*_sys.exc_info())
        for stream in (_sys.stdout, _sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream must not hide the status
                pass
        _exit(status)

    return finish


def _refuse_introspection(
    event: str,
    args: tuple[Any, ...],
    _refused: frozenset[str] = REFUSED_EVENTS,
    _error: type[Exception] = PermissionError,
) -> None:
    """Audit hook of a judged job: refuse what would reach the proof or skip the test.

    It raises, so its frame shows in the program's traceback: it holds nothing secret.
    """
    if event in _refused or event.startswith("ctypes."):
        raise _error(f"{event} is not available while the program is judged")


def _run_test_then_pass(
    test: CodeType,
    namespace: dict[str, Any],
    _exec: Callable[..., Any],
    _audit: Callable[..., Any],
    _passed: str,
) -> None:
    """Run the test, then raise the event that releases the proof (an ``in_process`` judge).

    The proof's hook knows this function's code and the lines of its two calls: an event
    raised from anywhere else (a C-level callable run by the harness, say) releases nothing.
    """
    _exec(test, namespace)
    _audit(_passed)


def _call_lines() -> tuple[int, int]:
    """Where ``_run_test_then_pass``'s frame stands during its exec and during its audit call,
    read from a dry run (lines, not offsets: CPython's specialising calls move ``f_lasti``)."""
    seen: list[int] = []

    def record(*_args: Any) -> None:
        seen.append(sys._getframe(1).f_lineno)

    _run_test_then_pass(None, {}, record, record, "")  # type: ignore[arg-type]
    return seen[0], seen[1]


RUN_TEST_EXEC_LINE, RUN_TEST_PASS_LINE = _call_lines()


def _arm_proof(
    test: CodeType,
    proof: tuple[bytes, int],
    _getframe: Any = sys._getframe,
    _getpid: Callable[[], int] = os.getpid,
    _write: Callable[[int, bytes], int] = os.write,
    _add_hook: Any = sys.addaudithook,
    _refuse: Callable[[str, tuple[Any, ...]], None] = _refuse_introspection,
    _passed: str = PASSED_EVENT,
    _os_error: type[OSError] = OSError,
    _run_test: CodeType = _run_test_then_pass.__code__,
    _exec_line: int = RUN_TEST_EXEC_LINE,
    _pass_line: int = RUN_TEST_PASS_LINE,
) -> None:
    """Let ``_run_test_then_pass``, called by the caller's frame (the harness), and it alone,
    release the proof once ``test`` has returned (the ``in_process`` judge).

    The proof (the host's nonce, written on the proof descriptor) is released by an audit hook
    when ``PASSED_EVENT`` is raised by the frame of ``_run_test_then_pass`` that the harness
    called, on the line of its audit call, after that same frame, on the line of its exec
    call, started ``test``; in the process that armed it (not a fork of it); at most once.
    A frame is identified by its code and line, not by being the nearest one: a C-level
    callable (``functools.partial(sys.audit, ...)`` as an excepthook, say) adds no frame.
    The nonce lives only in the hook's closure; audit hooks cannot be listed or removed, and
    the tracer and profiler do not run inside them. ``_refuse_introspection`` refuses the
    ``gc`` walks, ``sys.settrace``, ``sys._current_frames`` and ``ctypes``.

    What it does not withstand, as nothing running in the same interpreter can: a program that
    reads the process's raw memory (``/proc/self/mem``, in the process or a fork of it), or
    one that gets its own Python code run *inside* the hook (a signal handler firing during it
    sees the hook's frame, and so the nonce). And what test_code sees is what the program
    built: an object whose ``__eq__`` is always true passes an ``==`` test, the test's code is
    readable from the program's functions (``sys._getframe(1)``). The ``isolated`` judge
    stands against all of these (``_judge``).

    Nothing in the hook raises: its frame must not reach the program through a traceback.
    """
    nonce, fd = proof
    harness, pid = _getframe(1), _getpid()
    started: Any = None

    def release_proof(event: str, args: tuple[Any, ...]) -> None:
        nonlocal nonce, started
        if event == "exec":
            caller = _getframe(0).f_back
            if (
                args
                and args[0] is test
                and caller.f_code is _run_test
                and caller.f_lineno == _exec_line
                and caller.f_back is harness
            ):
                started = caller
        elif event == _passed and started is not None:
            caller = _getframe(0).f_back
            if caller is started and caller.f_lineno == _pass_line and _getpid() == pid:
                try:
                    _write(fd, nonce)
                except _os_error:
                    pass  # the program closed or replaced the descriptor: no proof, then
            nonce, started = b"", None

    _add_hook(release_proof)
    _add_hook(_refuse)


def _stdio_on_0_to_2() -> None:
    """``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` anew on descriptors 0-2, unbuffered."""
    import io

    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        open(1, "wb", buffering=0, closefd=False), encoding="utf-8", write_through=True
    )
    sys.stderr = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False), encoding="utf-8",
        errors="backslashreplace", write_through=True,
    )  # fmt: skip
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr  # type: ignore[misc]


def _reset_interpreter(
    namespace: dict[str, Any], sources: dict[str, str], program_path: bool = True
) -> Callable[[int], NoReturn]:
    """Make this interpreter look like a fresh ``python main.py``: stdio, argv, globals.

    ``sources`` maps file names to source text, for tracebacks (``main.py``, maybe the test).
    ``program_path``: whether the working directory goes on ``sys.path`` (not in an isolated
    judge, which must import nothing the program could have written).
    """
    _stdio_on_0_to_2()
    sys.argv = ["main.py"]
    if program_path:
        sys.path.insert(0, os.getcwd())  # as `python main.py` does: the job's files import
    sys.excepthook = _make_excepthook(sources)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    finish = _finisher()
    keep = builtins  # the module's globals are gone after the next line
    namespace.clear()
    namespace.update(__name__="__main__", __doc__=None, __builtins__=keep)
    return finish


def _add_site_builtins() -> None:
    """``exit``, ``quit`` and friends, which ``site`` would add (the zygote runs with -S)."""
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()


def _drop_harness_frames(report: Any, harness_file: str) -> None:
    """Leave the harness's frames (this file's) out of a traceback and its chained ones.

    Self-contained: it runs after the program replaced this module's globals.
    """
    import traceback

    pending, seen = [report], 0
    while pending and seen < 16:
        current, seen = pending.pop(), seen + 1
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if frame.filename != harness_file]
        )
        pending += [c for c in (current.__cause__, current.__context__) if c is not None]


def _make_excepthook(
    sources: dict[str, str],
    status_fd: int | None = 3,
    _os: Any = os,
    _file: str = __file__,
    _sys: Any = sys,
    _drop: Callable[[Any, str], None] = _drop_harness_frames,
) -> Callable[[type[BaseException], BaseException, Any], None]:
    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        """Tell init about an uncaught MemoryError (or ENOMEM), then print as Python would.

        A program can write the same byte itself: it can only mislabel its own failure
        as ``memory_limit``, never make a failure look like success.
        """
        import linecache
        import traceback

        exc: BaseException | None = value
        depth, memory = 0, False
        while exc is not None and depth < 16:
            if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == 12):
                memory = True
            exc, depth = exc.__cause__ or exc.__context__, depth + 1
        if memory and status_fd is not None:
            try:
                _os.write(status_fd, b"M")
            except OSError:
                pass
        for name, source in sources.items():
            linecache.cache.setdefault(name, (len(source), None, source.splitlines(True), name))
        report = traceback.TracebackException(kind, value, tb)
        _drop(report, _file)
        _sys.stderr.write("".join(report.format()))

    return excepthook


# --- sessions -------------------------------------------------------------------
#
# A session's program process does not run one program and exit: it takes the session's caps,
# then runs call after call in one ``__main__`` until the host closes its socket or a call ends
# the interpreter. Per call the host sends a header and five descriptors: the payload (code,
# files), stdin, stdout, stderr and the result's pipe. Between calls SIGINT is ignored; while a
# call runs it raises KeyboardInterrupt (the host's interrupt at the call's time limit).
#
# The harness keeps this module's globals (the program gets a fresh ``__main__``): no call in
# a session is judged, so there is nothing here the program must not reach. What this process
# reports about a call is its own word: it can mislabel only its own calls, and the host bounds
# and checks all of it; the session's death and its cause come from init and the kernel.

SESSION_CALL_FDS = 5
FD_RESERVE = 8
"""Descriptors kept below the hard limit for the harness (a call's five, with room)."""
RESULT_MARK = b"R"
"""Starts the result pipe's bytes when the call's last expression had a value (not None)."""


def _serve_session(job: Job) -> NoReturn:
    """Lock down, take the session's caps, then serve calls (:func:`_session_call`)."""
    try:
        job._lock_down()
        job._ready()
        try:
            header, fds = _recv(job.job_sock)
        except EOFError:
            os._exit(0)  # the host dropped this spare
        for fd in fds:
            os.close(fd)
        job._finish_lock_down()  # in the session's cgroup by now
        job.limits = header["limits"]
        job._set_rlimits()
        _, most_fds = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(16, most_fds - FD_RESERVE), most_fds))
        job.job_sock.send(b"started")
        namespace = _new_main_module()
        finish = _reset_interpreter(namespace, {})
        sources: dict[str, str] = {}
        hook = sys.excepthook = _make_excepthook(sources, None)
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        os.write(job.status_w, b"S")  # init: what follows is the session's, not the service's
        os.close(job.status_w)
    except Exception as exc:  # noqa: BLE001 - the service's failure, not the program's
        os.write(job.status_w, f"I{exc}".encode())
        os._exit(0)
    calls = 0
    while True:
        try:
            header, fds = _receive_call(job.job_sock, most_fds)
        except EOFError:
            finish(0)  # the host ended the session
        calls += 1
        if len(fds) != SESSION_CALL_FDS:
            # Cut short: the session's own code holds every descriptor it may open, the
            # reserve too (it raised its own limit). No call can reach it any more.
            for fd in fds:
                os.close(fd)
            _report(job.job_sock, {"type": "done", "outcome": "no_descriptors"})
            os._exit(1)
        report = _session_call(job.zygote.workdir, namespace, sources, hook, fds, calls)
        _report(job.job_sock, {"type": "done", **report})
        if report["outcome"] == "exit":
            finish(int(report["status"]))


def _receive_call(sock: _socket.socket, most_fds: int) -> tuple[Message, list[int]]:
    """The next call, received with the descriptor limit raised to its hard value: the
    reserve below it is there for the call's five descriptors, whatever the session's code
    holds; the limit goes back down before that code runs again."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (most_fds, most_fds))
    try:
        return _recv(sock)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(16, most_fds - FD_RESERVE), most_fds))


def _session_call(
    workdir: str,
    namespace: dict[str, Any],
    sources: dict[str, str],
    hook: Callable[[type[BaseException], BaseException, Any], None],
    fds: list[int],
    number: int,
) -> Message:
    """One call: its streams on 0-2, its files in, ``out/`` emptied, its code run as a
    notebook cell (the value of a final expression written to the result's pipe)."""
    payload_fd, stdin_fd, stdout_fd, stderr_fd, result_fd = fds
    try:
        payload = marshal.loads(_read_all(payload_fd))
        for target, fd in enumerate((stdin_fd, stdout_fd, stderr_fd)):
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
        _stdio_on_0_to_2()
        _empty_directory(f"{workdir}/{ARTIFACTS_DIR}")
        _write_files(workdir, payload["files"], replace=True)
    except Exception as exc:  # noqa: BLE001 - a file the session's own code got in the way of
        os.close(result_fd)
        sys.stderr.write(f"exec-agent: the call could not start: {exc}\n")
        return {"outcome": "error"}
    name = f"<call {number}>"
    sources[name] = payload["code"]
    _FIGURES_SAVED[0] = 0
    outcome = _run_cell(payload["code"], name, namespace, hook, result_fd)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001, S110 - a stream the call closed or replaced
            pass
    return outcome


def _run_cell(
    code: str,
    name: str,
    namespace: dict[str, Any],
    hook: Callable[[type[BaseException], BaseException, Any], None],
    result_fd: int,
) -> Message:
    """Run ``code`` in ``namespace``, interruptible by SIGINT; what happened, as a report."""
    value: Any = None
    try:
        try:
            body, last = _compile_cell(code, name)
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            exec(body, namespace)  # noqa: S102 - running the session's code is the point
            if last is not None:
                value = eval(last, namespace)  # noqa: S307 - its final expression
                if value is not None:
                    _write_result(result_fd, repr(value))
            for save in _FIGURE_SAVER:
                save()
        finally:
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
            os.close(result_fd)
    except SystemExit as exc:
        return {"outcome": "exit", "status": _exit_status(exc)}
    except BaseException as exc:  # noqa: BLE001 - reported as the interpreter would
        try:
            hook(type(exc), exc, exc.__traceback__)
        except BaseException:  # noqa: BLE001, S110 - a traceback that cannot print
            pass
        return {
            "outcome": "interrupted" if isinstance(exc, KeyboardInterrupt) else "error",
            "memory_error": _caused_by_memory(exc),
        }
    return {"outcome": "ok"}


def _compile_cell(code: str, name: str) -> tuple[CodeType, CodeType | None]:
    """``code`` compiled as a notebook cell: its statements, and its final expression apart
    (None when it ends in a statement), whose value is the call's result."""
    import _ast

    tree: Any = compile(code, name, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if tree.body and isinstance(tree.body[-1], _ast.Expr):
        expression = _ast.Expression(tree.body.pop().value)
        last = compile(expression, name, "eval", dont_inherit=True)
    return compile(tree, name, "exec", dont_inherit=True), last


def _write_result(fd: int, text: str) -> None:
    data = RESULT_MARK + text.encode("utf-8", "backslashreplace")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _caused_by_memory(exc: BaseException | None) -> bool:
    depth = 0
    while exc is not None and depth < 16:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == 12):
            return True
        exc, depth = exc.__cause__ or exc.__context__, depth + 1
    return False


def _empty_directory(path: str) -> None:
    """Make ``path`` an empty directory, whatever the session's code left there (a symbolic
    link is removed, never followed)."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        os.unlink(path)
    if not os.path.exists(path):
        os.mkdir(path, 0o755)
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _empty_directory(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


# --- the isolated judge -------------------------------------------------------
#
# A job judged ``isolated`` forks once it has its files and streams: the parent becomes the
# judge (the process init reaps, so its exit status is the run's), the child the program.
#
#     judge (test_code, nonce, proof descriptor; not dumpable) <──socket──> program
#
# The judge makes itself non-dumpable before the program runs a line, so the program (same
# uid, no capabilities) cannot open its /proc files, read or write its memory or take its
# descriptors; seccomp refuses ptrace and process_vm_*. The test, the nonce and the proof pipe
# never exist in the program's process. The test's use of the program's names and objects
# crosses the socket as JSON (parsed by ``_json``'s C scanner, never unpickled): plain values
# as copies, anything else as an opaque handle (``_Remote``) whose operations run in the
# program and which equals nothing but itself. Every message the judge reads must come from
# the program's own pid (SCM_CREDENTIALS), not from a process it forked. The judge writes the
# nonce only after ``test_code`` returned, the program acknowledged the end of the test and
# then exited 0.

JUDGE_ISOLATED = "isolated"
JUDGE_IN_PROCESS = "in_process"
MAX_RPC_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_RPC_DEPTH = 100
"""Containers deeper than this cross as handles (a list that contains itself, say)."""
MAX_REMOTE_TRACEBACK_CHARS = 8192
INLINE_INT_LIMIT = 1 << 63
"""Larger ints cross as hex strings: ``int(str)`` refuses more than 4,300 digits."""
_UCRED_SIZE = 12
_NOTHING = object()


class _ProtocolError(Exception):
    """The other side sent something the protocol does not allow."""


class _ProgramGone(Exception):
    """The program's process stopped answering (it exited, or closed the socket)."""


def _json_float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


_CONTAINER_TAGS: dict[type, str] = {list: "l", tuple: "t", set: "s", frozenset: "f"}
_CONTAINER_TYPES: dict[str, Callable[[list[Any]], Any]] = {
    "l": list, "t": tuple, "s": set, "f": frozenset,
}  # fmt: skip
_PLAIN_BASES: tuple[type, ...] = (
    int,
    float,
    complex,
    str,
    bytes,
    tuple,
    list,
    dict,
    set,
    frozenset,
)


_JSON_ENCODE = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True  # type: ignore[arg-type]
)  # fmt: skip
"""``json``'s C encoder, for containers of JSON scalars alone (no circular check needed)."""
_LOADED_SCALARS = frozenset({str, int, float, bool, type(None)})


def _json_scalars_only(values: Any) -> bool:
    """Whether every item is exactly a str, int, float, bool or None (checked in C)."""
    return all(map(_LOADED_SCALARS.__contains__, map(type, values)))


def _plain_equivalent(value: Any) -> Any:
    """A subclass of a plain type as that type (a namedtuple as a tuple, an IntEnum as an int),
    a numpy scalar or array as the Python value or nested lists (``tolist``); else _NOTHING."""
    for base in _PLAIN_BASES:
        if isinstance(value, base):
            return base(value)
    if type(value).__module__ == "numpy" and callable(getattr(value, "tolist", None)):
        return value.tolist()
    return _NOTHING


class _JsonContext:
    """What ``_json``'s C scanner reads from ``json.JSONDecoder`` (``json`` imports ``re``)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__  # fmt: skip


class _Peer:
    """One end of the judge's socket: the objects it lent the other side, and the proxies of
    the objects the other side lent it. Calls nest (a call may call back) and are answered
    in order, each with its request's number."""

    def __init__(self, sock: _socket.socket, program_pid: int | None) -> None:
        self.sock = sock
        self.program_pid = program_pid
        """The judge's end: the only pid its messages may come from. The program's: None."""
        self.lent: list[Any] = []
        self.lent_ids: dict[int, int] = {}
        self.proxies: dict[int, _Remote] = {}
        self.next_request = 0
        self.thread = _thread_ident()
        self._b64 = binascii
        self._scan = _json.make_scanner(_JsonContext())  # type: ignore[arg-type]

    # --- values ---

    def dump(self, value: Any, depth: int = 0) -> str:
        kind = type(value)
        if kind is str:
            return _json.encode_basestring_ascii(value)
        if value is None or kind is bool:
            return "null" if value is None else ("true" if value else "false")
        if kind is int:
            if -INLINE_INT_LIMIT < value < INLINE_INT_LIMIT:
                return str(value)
            return f'["I","{value:x}"]'
        if kind is float:
            return _json_float(value)
        if kind is complex:
            return f'["c",{_json_float(value.real)},{_json_float(value.imag)}]'
        if kind is bytes:
            text = self._b64.b2a_base64(value, newline=False).decode()
            return f'["b","{text}"]'
        if depth < MAX_RPC_DEPTH:
            tag = _CONTAINER_TAGS.get(kind)
            if tag is not None:
                if _json_scalars_only(value):  # the common case, in C
                    with _suppress(ValueError):  # an int of more digits than int() takes
                        return f'["{tag}",' + "".join(_JSON_ENCODE(list(value), 0)) + "]"
                return f'["{tag}",[' + ",".join(self.dump(v, depth + 1) for v in value) + "]]"
            if kind is dict:
                pairs = (
                    "[" + self.dump(k, depth + 1) + "," + self.dump(v, depth + 1) + "]"
                    for k, v in value.items()
                )
                return '["d",[' + ",".join(pairs) + "]]"
        if kind is _Remote and value._peer is self:
            return f'["Y",{value._id}]'
        plain = _NOTHING if depth >= MAX_RPC_DEPTH else _plain_equivalent(value)
        if plain is not _NOTHING and type(plain) is not kind:
            return self.dump(plain, depth)
        return f'["R",{self.lend(value)}]'

    def lend(self, value: Any) -> int:
        """A handle the other side may use for ``value`` (the same one for the same object)."""
        if self.program_pid is not None and not callable(value):
            raise TypeError(
                f"a {type(value).__name__} cannot be passed to the program: only plain values, "
                "the program's own objects and functions cross"
            )
        found = self.lent_ids.get(id(value))
        if found is not None:
            return found
        self.lent.append(value)
        self.lent_ids[id(value)] = len(self.lent) - 1
        return len(self.lent) - 1

    def load(self, node: Any, depth: int = 0) -> Any:
        kind = type(node)
        if kind in (str, int, float, bool) or node is None:
            return node
        if kind is not list or not node or type(node[0]) is not str or depth > MAX_RPC_DEPTH:
            raise _ProtocolError("not a value")
        tag, body = node[0], node[1:]
        try:
            if tag in _CONTAINER_TYPES and len(body) == 1 and type(body[0]) is list:
                items: list[Any] = body[0]
                if not _json_scalars_only(items):
                    items = [self.load(v, depth + 1) for v in items]
                return items if tag == "l" else _CONTAINER_TYPES[tag](items)
            if tag == "d" and len(body) == 1 and type(body[0]) is list:
                mapping = {}
                for pair in body[0]:
                    if type(pair) is not list or len(pair) != 2:
                        raise _ProtocolError("not a pair")
                    mapping[self.load(pair[0], depth + 1)] = self.load(pair[1], depth + 1)
                return mapping
            if tag == "b" and len(body) == 1 and type(body[0]) is str:
                return self._b64.a2b_base64(body[0].encode("ascii"), strict_mode=True)
            if tag == "c" and len(body) == 2 and all(type(v) in (int, float) for v in body):
                return complex(body[0], body[1])
            if tag == "I" and len(body) == 1 and type(body[0]) is str:
                return int(body[0], 16)
            if tag in ("R", "Y") and len(body) == 1 and type(body[0]) is int:
                return self.proxy(body[0]) if tag == "R" else self.lent[body[0]]
        except (ValueError, TypeError, IndexError, UnicodeError) as exc:
            raise _ProtocolError(f"bad {tag!r} value") from exc
        raise _ProtocolError(f"unknown value {tag!r}")

    def proxy(self, handle: int) -> _Remote:
        if handle < 0:
            raise _ProtocolError("bad handle")
        remote = self.proxies.get(handle)
        if remote is None:
            remote = self.proxies[handle] = _Remote(self, handle)
        return remote

    # --- messages ---

    def send(self, text: str) -> None:
        data = text.encode()
        try:
            self.sock.sendall(len(data).to_bytes(4, "big") + data)
        except OSError as exc:
            raise _ProgramGone(f"the program's process is gone ({exc})") from None

    def receive(self) -> list[Any]:
        size = int.from_bytes(self._read(4), "big")
        if size > MAX_RPC_MESSAGE_BYTES:
            raise _ProtocolError("message too large")
        text = self._read(size).decode()
        try:
            message, end = self._scan(text, 0)
        except (ValueError, RecursionError, StopIteration) as exc:
            raise _ProtocolError("not JSON") from exc
        if end != len(text) or type(message) is not list or not message:
            raise _ProtocolError("not a message")
        return message

    def _read(self, size: int) -> bytes:
        chunks, missing = [], size
        while missing:
            if self.program_pid is None:
                chunk = self.sock.recv(min(missing, 1 << 20))
            else:
                chunk = self._read_from_program(min(missing, 1 << 20))
            if not chunk:
                raise _ProgramGone("the program's process closed its end")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def _read_from_program(self, size: int) -> bytes:
        """Bytes sent by the program's process itself, not by anything it started."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(size, _socket.CMSG_SPACE(_UCRED_SIZE))
        if not data:
            return data
        for level, kind, cred in ancdata:
            if (
                level == _socket.SOL_SOCKET
                and kind == _socket.SCM_CREDENTIALS
                and int.from_bytes(cred[:4], sys.byteorder, signed=True) == self.program_pid
            ):
                return data
        raise _ProtocolError("a message from another process than the program's")

    def request(self, operation: str, *arguments: Any) -> Any:
        """Ask the other side to do ``operation``; serve its own requests meanwhile."""
        if _thread_ident() != self.thread:
            raise RuntimeError("the judge's functions can only be called from its call's thread")
        number, self.next_request = self.next_request, self.next_request + 1
        encoded = ",".join(self.dump(argument) for argument in arguments)
        self.send(f'["q",{number},"{operation}"' + ("," + encoded if encoded else "") + "]")
        while True:
            message = self.receive()
            if message[0] == "q":
                self.serve_one(message)
            elif message[0] == "a" and len(message) == 4 and message[1] == number:
                if message[2] == "ok":
                    return self.load(message[3])
                if message[2] == "err":
                    raise self.error_from(message[3])
                raise _ProtocolError("bad answer")
            else:
                raise _ProtocolError(f"unexpected {str(message[0])[:20]!r}")

    def serve_one(self, message: list[Any]) -> None:
        if len(message) < 3 or type(message[1]) is not int or type(message[2]) is not str:
            raise _ProtocolError("bad request")
        number, operation = message[1], message[2]
        try:
            arguments = [self.load(node) for node in message[3:]]
            result = self.perform(operation, arguments)
            answer = f'["a",{number},"ok",{self.dump(result)}]'
        except _ProgramGone:
            raise
        except BaseException as exc:  # noqa: BLE001 - the caller's failure, sent to the caller
            answer = f'["a",{number},"err",{self.dump_error(exc)}]'
        self.send(answer)

    def perform(self, operation: str, arguments: list[Any]) -> Any:
        """What the other side asked: the program serves anything on what it lent; the judge
        only calls the functions it lent."""
        if operation == "call" and len(arguments) == 3:
            function, args, kwargs = arguments
            return function(*args, **kwargs)
        if self.program_pid is not None:
            raise PermissionError(f"the judge does not serve {operation!r}")
        return _serve_operation(operation, arguments)

    # --- errors ---

    def dump_error(self, exc: BaseException) -> str:
        base = next(
            (c for c in type(exc).__mro__ if getattr(builtins, c.__name__, None) is c),
            Exception,
        )
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001 - its __str__ is the program's
            message = "<unprintable>"
        try:
            args = self.dump(tuple(exc.args))
        except Exception:  # noqa: BLE001
            args = "null"
        trace = _remote_traceback(exc) if self.program_pid is None else ""
        fields = [type(exc).__name__, base.__name__, message, trace]
        return "[" + ",".join(_json.encode_basestring_ascii(str(f)) for f in fields) + f",{args}]"

    def error_from(self, node: Any) -> BaseException:
        if type(node) is not list or len(node) != 5 or not all(type(v) is str for v in node[:4]):
            raise _ProtocolError("bad error")
        name, base_name, message, trace, args = node
        base = getattr(builtins, base_name, None)
        if not (isinstance(base, type) and issubclass(base, BaseException)):
            base = Exception
        kind = base if name == base_name else _exception_class(name[:100], base)
        try:
            arguments = self.load(args)
            exc = kind(*arguments) if type(arguments) is tuple else kind(message)
        except Exception:  # noqa: BLE001 - a constructor that wants other arguments
            exc = kind(message)
        if trace:
            exc.add_note("In the program:\n" + trace[-MAX_REMOTE_TRACEBACK_CHARS:].rstrip())
        return exc


_EXCEPTION_CLASSES: dict[tuple[str, type], type[BaseException]] = {}


def _exception_class(name: str, base: type[BaseException]) -> type[BaseException]:
    """A class named as the program's exception, under the builtin one it derives from, so a
    test can catch it by that (``except ValueError``)."""
    if not name.isidentifier():
        name = "ProgramError"
    found = _EXCEPTION_CLASSES.get((name, base))
    if found is None:
        found = _EXCEPTION_CLASSES[(name, base)] = type(name, (base,), {"__module__": "program"})
    return found


def _remote_traceback(exc: BaseException) -> str:
    import linecache
    import traceback

    for name, source in _PROGRAM_SOURCES.items():
        linecache.cache.setdefault(name, (len(source), None, source.splitlines(True), name))
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__
    ]
    return "".join(traceback.format_list(frames))[-MAX_REMOTE_TRACEBACK_CHARS:]


def _serve_operation(operation: str, arguments: list[Any]) -> Any:
    """One operation of the judge on an object of the program (run in the program)."""
    target: Any = arguments[0] if arguments else None
    rest = arguments[1:]
    if operation == "global" and len(arguments) == 1:
        return _PROGRAM_NAMESPACE[0][target]
    if operation == "getattr" and len(rest) == 1:
        return getattr(target, rest[0])
    if operation == "setattr" and len(rest) == 2:
        return setattr(target, rest[0], rest[1])
    if operation == "delattr" and len(rest) == 1:
        return delattr(target, rest[0])
    if operation == "getitem" and len(rest) == 1:
        return target[rest[0]]
    if operation == "setitem" and len(rest) == 2:
        target[rest[0]] = rest[1]
        return None
    if operation == "delitem" and len(rest) == 1:
        del target[rest[0]]
        return None
    if operation == "contains" and len(rest) == 1:
        return rest[0] in target
    unary: dict[str, Callable[[Any], Any]] = {
        "len": len, "iter": iter, "next": next, "repr": repr, "str": str, "bool": bool,
    }  # fmt: skip
    if operation in unary and not rest:
        return unary[operation](target)
    raise _ProtocolError(f"unknown operation {operation!r}")


_PROGRAM_NAMESPACE: list[dict[str, Any]] = []
"""The program's ``__main__`` namespace, once it ran (in the program's process)."""
_PROGRAM_SOURCES: dict[str, str] = {}
"""The program's source by file name, for the tracebacks sent to the judge."""


def _thread_ident() -> int:
    return _thread.get_ident()


class _Remote:
    """An object of the other process. Its operations run there; it equals only itself."""

    __slots__ = ("__weakref__", "_id", "_peer")

    def __init__(self, peer: _Peer, handle: int) -> None:
        object.__setattr__(self, "_peer", peer)
        object.__setattr__(self, "_id", handle)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._peer.request("call", self, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return self._peer.request("getattr", self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._peer.request("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self._peer.request("delattr", self, name)

    def __getitem__(self, key: Any) -> Any:
        return self._peer.request("getitem", self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._peer.request("setitem", self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._peer.request("delitem", self, key)

    def __contains__(self, item: Any) -> bool:
        return _expect(bool, self._peer.request("contains", self, item))

    def __len__(self) -> int:
        return _expect(int, self._peer.request("len", self))

    def __bool__(self) -> bool:
        return _expect(bool, self._peer.request("bool", self))

    def __iter__(self) -> Any:
        iterator = self._peer.request("iter", self)
        return iterator if type(iterator) is _Remote else iter(iterator)

    def __next__(self) -> Any:
        return self._peer.request("next", self)

    def __repr__(self) -> str:
        return _expect(str, self._peer.request("repr", self))

    def __str__(self) -> str:
        return _expect(str, self._peer.request("str", self))

    __hash__ = object.__hash__  # identity: a handle equals nothing but itself


def _expect(kind: type[_T], value: Any) -> _T:
    if type(value) is not kind:
        raise TypeError(f"the program answered a {type(value).__name__}, not a {kind.__name__}")
    return value


class _ProgramNames(dict):  # type: ignore[type-arg]
    """The test's builtins: the real ones, then the program's global names, fetched when the
    test first reads them (a name the program defines hides a builtin of the same name, as it
    would in the program's own module)."""

    def __init__(self, peer: _Peer, names: list[str]) -> None:
        super().__init__((k, v) for k, v in vars(builtins).items() if k not in names)
        self.peer = peer
        self.names = frozenset(names)

    def __missing__(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(name)
        value = self[name] = self.peer.request("global", name)
        return value


def _new_main_module() -> dict[str, Any]:
    """A fresh ``__main__`` module's namespace, for a program whose harness keeps its own."""
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    return main.__dict__


class _ProgramSide:
    """The program's end: waits for the judge's go, then answers its requests."""

    def __init__(self, sock: _socket.socket) -> None:
        self.peer = _Peer(sock, None)

    def wait_for_go(self) -> None:
        if self.peer.receive() != ["go"]:
            raise SetupError("the judge did not say go")

    def serve(
        self, namespace: dict[str, Any], code: str, finish: Callable[[int], NoReturn]
    ) -> NoReturn:
        """Answer the judge until it says the test is over, then end as the program would."""
        _PROGRAM_NAMESPACE.append(namespace)
        _PROGRAM_SOURCES[MAIN_FILE] = code
        names = [name for name in namespace if not (name[:2] == name[-2:] == "__")]
        peer = self.peer
        try:
            peer.send('["ready",' + peer.dump(names) + "]")
            while True:
                message = peer.receive()
                if message == ["done"]:
                    peer.send('["bye"]')
                    break
                if message[0] != "q":
                    raise _ProtocolError("not a request")
                peer.serve_one(message)
        except (_ProgramGone, _ProtocolError, OSError):
            finish(1)  # the judge is gone: nobody is left to serve
        finish(0)


def _split_for_judge(job: Job, fds: tuple[int, int]) -> _ProgramSide:
    """Fork the judge off; return (in the program's process) the program's end of the socket.

    The judge's process never returns from here: it runs ``test_code`` and exits.
    """
    proof_fd, payload_fd = fds
    judge_end, program_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    judge_end.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    pid = os.fork()
    if pid == 0:
        judge_end.close()
        os.close(proof_fd)
        os.close(payload_fd)
        return _ProgramSide(program_end)
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")  # before anything else
    program_end.close()
    _judge(job, pid, judge_end, proof_fd, payload_fd)


def _judge(
    job: Job, program: int, sock: _socket.socket, proof_fd: int, payload_fd: int
) -> NoReturn:
    """The judge's process: run the test against the program's names, prove it passed."""
    try:
        payload = marshal.loads(_read_all(payload_fd))
        test_code, nonce = str(payload["test_code"]), bytes(payload["nonce"])
        job._set_rlimits()
        os.write(job.status_w, b"S")
    except Exception as exc:  # noqa: BLE001 - the service's failure
        os.write(job.status_w, f"I{exc}".encode())
        os.kill(program, _signal.SIGKILL)
        os._exit(0)

    def fail(status: int) -> NoReturn:
        with _suppress(OSError):
            os.kill(program, _signal.SIGKILL)
        finish(status)

    try:
        test = compile(test_code, TEST_FILE, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        finish = _reset_interpreter({}, {TEST_FILE: test_code}, program_path=False)
        sys.excepthook(type(exc), exc, None)
        fail(1)  # before the program ran a line
    peer = _Peer(sock, program)
    with _suppress(_ProgramGone):  # a program gone already shows when it is waited for
        peer.send('["go"]')  # the program sets itself up while the judge does the same
    finish = _reset_interpreter({}, {TEST_FILE: test_code}, program_path=False)
    try:
        ready = peer.receive()
        if len(ready) != 2 or ready[0] != "ready":
            raise _ProtocolError("the program did not say ready")
        names = peer.load(ready[1])
        if type(names) is not list or not all(type(n) is str for n in names):
            raise _ProtocolError("bad names")
    except _ProgramGone:
        _mirror(os.waitpid(program, 0)[1], finish)  # the program ended before the test
    except _ProtocolError as exc:
        sys.stderr.write(f"judge: {exc}\n")
        fail(1)
    namespace = {"__name__": "__main__", "__doc__": None,
                 "__builtins__": _ProgramNames(peer, names)}  # fmt: skip
    try:
        exec(test, namespace)  # noqa: S102 - the caller's own test
        peer.send('["done"]')
        if peer.receive() != ["bye"]:
            raise _ProtocolError("the program did not end the test as asked")
    except SystemExit as exc:
        fail(_exit_status(exc))
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        sys.excepthook(*sys.exc_info())
        fail(1)
    status = os.waitpid(program, 0)[1]
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        with _suppress(OSError):
            os.write(proof_fd, nonce)
    _mirror(status, finish)


def _mirror(status: int, finish: Callable[[int], NoReturn]) -> NoReturn:
    """End as the program ended: with its exit code, or by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with _suppress(OSError, ValueError):
            _signal.signal(sig, _signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    finish(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 1)


class _suppress:
    """``contextlib.suppress``, which would be one more import in every job."""

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


# --- self-test at start-up ----------------------------------------------------


def probe(zygote: Zygote, preload_error: str | None = None) -> str:
    """Build one job's sandbox without running code; say (as JSON) which layers work here,
    and whether the runtime's modules loaded (``preload_error``).

    Each layer is tried on its own, so one that fails does not hide the others.
    """
    r, w = os.pipe()
    result: Message = {"namespaces": False, "filesystem": False, "capabilities_dropped": False,
                       "seccomp": False, "no_new_privs": False, "uid": os.getuid(), "error": None,
                       "private_proc": False, "read_only_root": False,
                       "preload_error": preload_error}  # fmt: skip
    try:
        pid = _clone_into_namespaces(zygote, zygote.new_net)
    except SetupError as exc:
        result["error"] = str(exc)
        return _to_json(result)
    if pid == 0:
        os.close(r)
        errors = []
        steps: list[tuple[str, Callable[[], None]]] = [
            ("namespaces", lambda: _map_ids(zygote) if zygote.namespaces else _fail("off")),
            ("filesystem", lambda: _probe_filesystem(zygote, result)),
            ("capabilities_dropped", lambda: _drop_capabilities(zygote.cap_last_cap)),
            ("no_new_privs", lambda: _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "nnp")),
            ("seccomp", lambda: _load_seccomp(zygote.seccomp) if zygote.seccomp else _fail("off")),
        ]
        for layer, step in steps:
            try:
                step()
                result[layer] = True
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                errors.append(f"{layer}: {exc}")
        result["capabilities_dropped"] = result["capabilities_dropped"] and _no_capabilities()
        result["seccomp"] = result["seccomp"] and _libc.unshare(CLONE_NEWUSER) != 0
        result["uid"] = os.getuid()
        result["error"] = "; ".join(errors) or None
        os.write(w, _to_json(result).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode() if chunks else _to_json({**result, "error": "probe died"})


def _fail(why: str) -> None:
    raise SetupError(why)


def _probe_filesystem(zygote: Zygote, result: Message) -> None:
    if not zygote.namespaces:
        _fail("needs the job's namespaces")
    result["private_proc"] = _build_filesystem(1 << 20, zygote.workdir)
    if zygote.workdir == "/work":  # bubblewrap's root; the host's is not ours to write to
        result["read_only_root"] = not any(_writable(path) for path in READ_ONLY_PATHS)


READ_ONLY_PATHS = ("/", "/etc", "/dev", "/usr", "/opt", "/scratch")
"""Where a job must not be able to create anything (tried by the start-up probe)."""


def _writable(directory: str) -> bool:
    """Whether a file can be created in ``directory`` (it is removed again)."""
    path = f"{directory.rstrip('/')}/.exec-agent-probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path)
    return True


def _no_capabilities() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16) == 0
    return False


if __name__ == "__main__":
    # The program's code runs inside this module's globals, which become its own
    # ``__main__`` namespace: nothing of the zygote is reachable by walking frames.
    _job = serve(int(sys.argv[1]))
    if _job is None:
        sys.exit(0)
    _job.run_as_main(globals())
