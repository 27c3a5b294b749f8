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

A judged job (with ``test_code``) runs the test after the code in the same ``__main__`` and
proves that the test returned by writing the host's nonce on a pipe of its own: see
:func:`_arm_proof`, which says what that proof withstands and what it does not.

Why this shape: a fresh interpreter costs ~10 ms here, a fork of a small Python process
~0.5 ms. Imports are kept few because fork time grows with the zygote's memory.
"""

from __future__ import annotations

import _json
import _signal  # type: ignore[import-not-found]  # signal.py would import enum
import _socket
import array
import atexit
import builtins
import ctypes
import marshal
import os
import resource
import sys

SANDBOX_UID = 1000
SCRATCH = "/scratch"  # bubblewrap layout: an empty mount point, hidden again per job
MAX_MESSAGE_BYTES = 65536
MAX_FDS = 8
INT_SIZE = array.array("i").itemsize

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
AS_HEADROOM_BYTES = 256 * 1024 * 1024
"""With a memory cgroup as the real cap, RLIMIT_AS only stops absurd single allocations."""
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
    from typing import Any, NoReturn

    Message = dict[str, Any]

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
    control.send(probe(zygote).encode())  # "ready", with what works here
    _warm_up()
    import gc

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
            job = _build_spare(zygote, control, int(request["disk_bytes"]))
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


def _clone_into_namespaces(zygote: Zygote) -> int:
    """Like fork, but the child is pid 1 of new user, mount, pid and IPC namespaces.

    A raw clone saves a whole process per job. The child skips Python's after-fork
    hooks, which is safe here: the zygote is single-threaded and holds no locks, and
    the child only runs init code before forking the program with a real ``os.fork``.
    """
    if not zygote.namespaces or SYS_CLONE is None:
        return os.fork()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | _signal.SIGCHLD
    if zygote.new_net:
        flags |= CLONE_NEWNET
    pid: int = _libc.syscall(SYS_CLONE, ctypes.c_ulong(flags), None, None, None, None)
    if pid < 0:
        raise SetupError(f"clone: {os.strerror(ctypes.get_errno())}")
    return pid


def _build_spare(zygote: Zygote, control: _socket.socket, disk_bytes: int) -> Job | None:
    """Start a job sandbox that waits for its program; hand its socket to the host.

    The spare is built while the slot runs the previous job, so a job's latency
    excludes the namespaces, mounts, forks and lock-down. Nothing about a job is known
    yet: the spare is the same for every job, and is used once.
    """
    host_end, job_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    # Set before init says hello: credentials are attached when a message is sent.
    host_end.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    try:
        pid = _clone_into_namespaces(zygote)
    except SetupError as exc:
        _report(control, {"type": "spare", "error": str(exc)})
        host_end.close()
        job_end.close()
        return None
    if pid == 0:
        control.close()
        host_end.close()
        return _init(zygote, job_end, disk_bytes)
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


def _init(zygote: Zygote, job_sock: _socket.socket, disk_bytes: int) -> Job:
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
        return Job(zygote, job_sock, status_w, disk_bytes)
    os.close(status_w)
    report = _reap_until(pid)
    report.update(_read_status(status_r))
    _report(job_sock, report)
    os._exit(0)


def _first_to_go_on_oom() -> None:
    """Make the program, not the zygote beside it in the cgroup, the OOM killer's choice."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # a higher score needs no privilege; failing here only weakens a preference


def _map_ids(zygote: Zygote) -> None:
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{SANDBOX_UID} {zygote.outer_uid} 1")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{SANDBOX_UID} {zygote.outer_gid} 1")


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
    opts = f"size={disk_bytes},nr_inodes={inodes},mode=0755,uid={SANDBOX_UID},gid={SANDBOX_UID}"
    if workdir == "/work":
        # bubblewrap's root has /scratch, /work, /tmp and /dev/shm as empty mount points.
        _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        _bind_subdir(SCRATCH, "work", workdir, 0o755)
        _bind_subdir(SCRATCH, "tmp", "/tmp", 0o1777)
        _bind_subdir(SCRATCH, "shm", "/dev/shm", 0o1777)
        _check(_libc.umount2(SCRATCH.encode(), MNT_DETACH), "umount scratch")
        return private_proc
    # The host's root (no bubblewrap): the tmpfs covers /tmp, the workdir lives inside it.
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts.replace("mode=0755", "mode=1777"))
    os.mkdir(workdir, 0o755)
    if os.path.isdir("/dev/shm"):
        _bind_subdir("/tmp", ".shm", "/dev/shm", 0o1777)
    return private_proc


def _bind_subdir(scratch: str, name: str, target: str, mode: int) -> None:
    path = f"{scratch}/{name}"
    os.mkdir(path)
    os.chmod(path, mode)
    _mount(path, target, None, MS_BIND | MS_NOSUID | MS_NODEV, None)


def _write_files(workdir: str, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with open(os.open(path, flags, 0o644), "w", encoding="utf-8") as f:
            f.write(content)


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
        self, zygote: Zygote, job_sock: _socket.socket, status_w: int, disk_bytes: int
    ) -> None:
        self.zygote = zygote
        self.job_sock = job_sock
        self.status_w = status_w
        self.disk_bytes = disk_bytes
        self.limits: Message = {}
        self.code = ""
        self.test_code: str | None = None
        self._proof: tuple[bytes, int] | None = None

    def run_as_main(self, namespace: dict[str, Any]) -> NoReturn:
        """Lock down, receive the job, make ``namespace`` a fresh ``__main__``, run it.

        ``namespace`` is this module's globals, so every frame between the program
        and the outermost one shows only the program's globals. Never returns.

        A judged job then runs ``test_code`` in the same namespace, with the builtins as
        they were before the program ran, and raises the event that releases the proof
        (``_arm_proof``). Everything used after the program started is a local taken
        before: the program can rebind any global or builtin name.
        """
        _os, _sys, _exec, _status = os, sys, exec, _exit_status  # globals go with the reset
        _exiting, _anything, _dict = SystemExit, BaseException, dict  # builtins can be rebound
        _arm, _audit, _passed = _arm_proof, sys.audit, PASSED_EVENT
        syntax_error = test = None
        try:
            self._lock_down()
            self.job_sock.send(b"ready")  # to the host: a spare, waiting for its job
            self._receive()
            sources = {MAIN_FILE: self.code}
            try:
                code = compile(self.code, MAIN_FILE, "exec", dont_inherit=True)
                if self.test_code is not None:
                    sources[TEST_FILE] = self.test_code
                    test = compile(self.test_code, TEST_FILE, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                syntax_error = exc
            finish = _reset_interpreter(namespace, sources)
            if test is not None:
                test_builtins = tuple(vars(namespace["__builtins__"]).items())
                _arm(test, self.take_proof())
        except Exception as exc:  # noqa: BLE001 - the service's failure, not the program's
            _os.write(self.status_w, f"I{exc}".encode())
            _os._exit(0)
        # From here on the program may write to the status pipe too: init trusts an ``I`` only
        # before this ``S``, so the program cannot pass its own failure off as the service's.
        _os.write(self.status_w, b"S")
        if syntax_error is not None:
            _sys.excepthook(type(syntax_error), syntax_error, None)
            finish(1)
        try:
            _exec(code, namespace)
            if test is not None:
                namespace["__builtins__"] = _dict(test_builtins)
                _exec(test, namespace)
                _audit(_passed)
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
        """Everything that does not depend on the job: done while the spare waits."""
        _first_to_go_on_oom()
        if self.zygote.namespaces:
            _map_ids(self.zygote)
            _build_filesystem(self.disk_bytes, self.zygote.workdir)
        os.setsid()  # own session and process group, no controlling terminal
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if self.zygote.seccomp:
            _load_seccomp(self.zygote.seccomp)
        os.chdir(self.zygote.workdir if os.path.isdir(self.zygote.workdir) else "/tmp")
        os.umask(0o022)
        _drop_capabilities(self.zygote.cap_last_cap)

    def _receive(self) -> None:
        """Take the job from the host, put its streams on 0-2, its files in /work."""
        try:
            header, fds = _recv(self.job_sock)
        except EOFError:
            os._exit(0)  # the host dropped this spare
        if len(fds) not in (4, 5):
            raise SetupError(f"expected 4 or 5 descriptors, got {len(fds)}")
        self.job_sock.send(b"started")  # from here on, what happens is the job's
        payload_fd, stdin_fd, stdout_fd, stderr_fd = fds[:4]
        with open(payload_fd, "rb") as f:
            payload = marshal.loads(f.read())
        self.limits, self.code = header["limits"], payload["code"]
        self.test_code = payload.get("test_code")
        _write_files(self.zygote.workdir, payload["files"])
        for target, fd in enumerate((stdin_fd, stdout_fd, stderr_fd, self.status_w)):
            os.dup2(fd, target, inheritable=target < 3)
        self.status_w = 3
        # The job socket too: the program cannot talk to the host. A judged job keeps one
        # more descriptor, the proof's, moved out of the way first.
        if len(fds) == 5:
            proof_fd = _hide_descriptor(fds[4])
            self._proof = (payload["nonce"], proof_fd)
            os.closerange(4, proof_fd)
            os.closerange(proof_fd + 1, MAX_FD)
        else:
            os.closerange(4, MAX_FD)
        os.set_inheritable(3, False)
        self._set_rlimits()

    def _set_rlimits(self) -> None:
        lim = self.limits
        memory = int(lim["memory_bytes"])
        address_space = memory + AS_HEADROOM_BYTES if self.zygote.cgroup_memory else memory
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
) -> None:
    """Let the caller's frame, and it alone, release the proof once ``test`` has returned.

    The proof (the host's nonce, written on the proof descriptor) is released by an audit hook
    when the caller (the harness) raises ``PASSED_EVENT`` after it started ``test`` itself:
    the hook checks that both events come straight from the harness frame, in the process
    that armed it (not a fork of it), and writes at most once. The nonce lives only in the
    hook's closure; audit hooks cannot be listed or removed, and the tracer and profiler do
    not run inside them. So the program cannot end early, exit 0, fork, trace, spoof the
    event or run the test in a frame of its own and pass; and walking frames from its code,
    or ``gc``, does not find the nonce (``_refuse_introspection`` refuses the ``gc`` walks,
    ``sys.settrace`` and ``ctypes``).

    What it does not withstand, as nothing running in the same interpreter can: a program
    that reads the process's raw memory (``/proc/self/mem``, bytecode crafted through
    ``marshal``), or one that gets its own Python code run *inside* the hook (a signal
    handler or a finalizer firing during it sees the hook's frame, and so the nonce; the
    tests pin such a thief, a score of lines written against this harness, as a known gap).
    And what test_code sees is what the program built: an object whose ``__eq__`` is always
    true passes an ``==`` test, a global it defines shadows a builtin the test uses.

    Nothing in the hook raises: its frame must not reach the program through a traceback.
    """
    nonce, fd = proof
    harness, pid, started = _getframe(1), _getpid(), False

    def release_proof(event: str, args: tuple[Any, ...]) -> None:
        nonlocal nonce, started
        if event == "exec":
            if args and args[0] is test and _getframe(0).f_back is harness:
                started = True
        elif event == _passed and started and _getframe(0).f_back is harness:
            if _getpid() == pid:
                try:
                    _write(fd, nonce)
                except _os_error:
                    pass  # the program closed or replaced the descriptor: no proof, then
            nonce, started = b"", False

    _add_hook(release_proof)
    _add_hook(_refuse)


def _reset_interpreter(
    namespace: dict[str, Any], sources: dict[str, str]
) -> Callable[[int], NoReturn]:
    """Make this interpreter look like a fresh ``python main.py``: stdio, argv, globals.

    ``sources`` maps file names to source text, for tracebacks (``main.py``, maybe the test).
    """
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
    sys.argv = ["main.py"]
    sys.path.insert(0, os.getcwd())  # as `python main.py` does: the job's files import
    sys.excepthook = _make_excepthook(sources)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _add_site_builtins()
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


def _make_excepthook(
    sources: dict[str, str], _os: Any = os, _file: str = __file__
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
        if memory:
            try:
                _os.write(3, b"M")
            except OSError:
                pass
        while tb is not None and tb.tb_frame.f_code.co_filename == _file:
            tb = tb.tb_next
        for name, source in sources.items():
            linecache.cache.setdefault(name, (len(source), None, source.splitlines(True), name))
        traceback.print_exception(kind, value, tb)

    return excepthook


# --- self-test at start-up ----------------------------------------------------


def probe(zygote: Zygote) -> str:
    """Build one job's sandbox without running code; say (as JSON) which layers work here.

    Each layer is tried on its own, so one that fails does not hide the others.
    """
    r, w = os.pipe()
    result: Message = {"namespaces": False, "filesystem": False, "capabilities_dropped": False,
                       "seccomp": False, "no_new_privs": False, "uid": os.getuid(), "error": None,
                       "private_proc": False}  # fmt: skip
    try:
        pid = _clone_into_namespaces(zygote)
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
