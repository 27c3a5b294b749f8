"""The seccomp filter of sandboxed programs: an allowlist, compiled once with libseccomp.

Why an allowlist: a denylist lets every system call nobody thought of reach the kernel,
including the ones added to it after the list was written. Here a program reaches only
the calls in ``ALLOWED_SYSCALLS`` (what CPython and its standard library, numpy/OpenBLAS,
``/bin/sh`` and the usual command-line tools use, and what the zygote itself still does
after loading the filter); everything else is refused. The namespaces, the read-only
root and the cgroup are the primary boundary; this is the second line.

The answers:

* The default, for every call not decided here and every call the kernel gains later,
  is ``ENOSYS``: what a kernel without that call answers, so libc and CPython take their
  fallbacks (glibc falls back from ``clone3`` to ``clone``, from ``faccessat2`` to
  ``faccessat``; CPython from ``copy_file_range`` to ``read``/``write``). ``EPERM`` would
  be taken for a refusal by the call's own rules, and some fallbacks test for ``ENOSYS``
  only. Never a kill: programs probe for calls, and a probe must not crash them.
* ``DENIED_SYSCALLS`` answer ``EPERM``: the calls a sandbox forbids (mounts, namespaces,
  ptrace, keyrings, BPF, modules...), named so that a program is told "not permitted" and
  not "not implemented".
* ``UNSUPPORTED_SYSCALLS`` answer ``ENOSYS`` like the default; they are listed only to
  record that they were decided: calls that kernels are routinely built without (NUMA
  policies, ``modify_ldt``, Linux AIO, ``memfd_secret``) or too new for programs to
  depend on (``listmount``, ``statmount``, ``open_tree_attr``), and the removed ones.
* A few allowed calls are allowed for some arguments only (``socket``, ``socketpair``,
  ``ioctl``, ``clone``, ``prlimit64``); the other arguments are refused with the errno the
  call itself would give for them (``EAFNOSUPPORT``, ``EPERM``).

Compiled on the host to classic BPF (one ``struct sock_filter`` array); the zygote loads
the bytes in each program with ``prctl``. Names are resolved for the architecture
(x86_64, aarch64); a name the architecture lacks is skipped. A call from another ABI
(i386 or x32 on an x86_64 host) kills the process: the interpreter never makes one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import os
from collections.abc import Iterator

__all__ = [
    "ALLOWED_SYSCALLS",
    "DENIED_SYSCALLS",
    "UNSUPPORTED_SYSCALLS",
    "SeccompUnavailable",
    "compile_filter",
]

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_OPTIMIZE = 8
BINARY_TREE = 2  # SCMP_FLTATR_CTL_OPTIMIZE: find a call in log(n) jumps, not n
SCMP_ARCH_NATIVE = 0
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
TIOCSTI, TIOCLINUX, TIOCSETD = 0x5412, 0x541C, 0x5423
DENIED_IOCTLS = (
    TIOCSTI,  # pushes input into a terminal, to be read by whoever reads it
    TIOCLINUX,  # the virtual console's selection and keyboard
    TIOCSETD,  # line disciplines (n_hdlc, n_gsm) with a history of local privilege escalations
)
CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
U32_LIMIT = 1 << 32
U64_MASK = (1 << 64) - 1
SIGN_EXTENDED_FLOOR = 0xFFFFFFFF_80000000
"""A negative C ``int`` as the 64-bit register the kernel sees: where ioctl requests with
the top bit set land when a caller declares them ``int`` (their low 32 bits are >= 2**31,
so never one of ``DENIED_IOCTLS``)."""

ALLOWED_SYSCALLS = (
    # processes, threads and their exit
    "clone", "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "set_tid_address", "set_robust_list", "rseq", "arch_prctl", "prctl", "gettid",
    "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "membarrier",
    "sched_yield", "getcpu", "restart_syscall",
    # signals and timers
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "pause",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "signalfd", "signalfd4",
    "alarm", "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
    "timerfd_gettime",
    # time
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "times",
    # identity, sessions, limits and scheduling: without capabilities, only one's own
    "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "getgroups", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setgroups", "setfsuid", "setfsgid", "capget", "capset", "setsid", "getsid", "setpgid",
    "getpgid", "getpgrp", "uname", "sysinfo", "getrlimit", "setrlimit", "prlimit64",
    "getrusage", "getpriority", "setpriority", "ioprio_get", "ioprio_set",
    "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
    "sched_getscheduler", "sched_setscheduler", "sched_getattr", "sched_setattr",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    # memory (RLIMIT_MEMLOCK is 0: mlock fails as it would for any unprivileged user)
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync", "mincore", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "memfd_create", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "map_shadow_stack", "mseal",
    # descriptors, files and directories
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
    "dup", "dup2", "dup3", "fcntl", "flock", "lseek", "pipe", "pipe2", "ioctl",
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access",
    "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat",
    "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat", "mknod",
    "mknodat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
    "fchownat", "umask", "utime", "utimes", "futimesat", "utimensat", "truncate",
    "ftruncate", "fallocate", "fadvise64", "readahead", "fsync", "fdatasync", "sync",
    "syncfs", "sync_file_range", "sendfile", "copy_file_range", "splice", "tee", "vmsplice",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "getxattrat", "listxattrat", "setxattrat", "removexattrat", "file_getattr",
    "file_setattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    # waiting on descriptors
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    # sockets (the families are checked below; the job has no route out anyway)
    "socket", "socketpair", "bind", "listen", "connect", "accept", "accept4", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    # System V IPC: the job has its own IPC namespace, gone with it
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl",
    # randomness
    "getrandom",
)  # fmt: skip

DENIED_SYSCALLS = (
    # debugging other processes and reading their memory
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "mount_setattr",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "open_by_handle_at", "name_to_handle_at",
    # kernel keyring
    "add_key", "request_key", "keyctl",
    # large kernel surfaces with a history of privilege escalations
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "fanotify_init", "fanotify_mark",
    # the host machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "vhangup", "iopl", "ioperm", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "uselib", "ustat", "sysfs", "nfsservctl",
    "personality", "sethostname", "setdomainname",
)  # fmt: skip

UNSUPPORTED_SYSCALLS = (
    # NUMA memory policies: kernels without CONFIG_NUMA answer ENOSYS, and libnuma and
    # OpenBLAS (which calls mbind on its buffers and ignores the result) take that path.
    "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node", "migrate_pages",
    "move_pages",
    # x86 descriptor tables and 32-bit TLS: 64-bit programs do not use them, and
    # CONFIG_MODIFY_LDT_SYSCALL=n kernels answer ENOSYS already.
    "modify_ldt", "set_thread_area", "get_thread_area",
    # secret memory: off by default (secretmem.enable) before Linux 6.5, so optional.
    "memfd_secret",
    # the new mount API's readers and open_tree_attr: newer than anything programs rely on
    "listmount", "statmount", "open_tree_attr",
    # clone3 takes its flags in memory, out of the filter's sight: glibc falls back to clone
    "clone3",
    # Linux AIO (CONFIG_AIO=n answers ENOSYS; glibc's POSIX AIO uses threads instead)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # POSIX message queues: RLIMIT_MSGQUEUE is 0 in a job, so they could hold nothing
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # acting on other processes' memory, reading their robust-futex lists
    "process_madvise", "process_mrelease", "get_robust_list",
    # sandboxing inside the sandbox: nothing to gain, and seccomp's notifier is kernel surface
    "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    # page-cache statistics of files: a side channel, used by no program of ours
    "cachestat",
    # a process' own LSM attributes: /proc/self/attr has them, and no program asks
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    # made only by the trampolines of the host's uprobes, which the kernel lets through
    # seccomp unfiltered; from anywhere else the kernel kills the caller
    "uretprobe", "uprobe",
    # deprecated or never implemented: remap_file_pages is emulated, the rest answer ENOSYS
    "remap_file_pages", "epoll_ctl_old", "epoll_wait_old", "_sysctl", "create_module",
    "get_kernel_syms", "query_module", "getpmsg", "putpmsg", "afs_syscall", "tuxcall",
    "security", "vserver",
)  # fmt: skip

ARGUMENT_CHECKED = frozenset({"socket", "socketpair", "ioctl", "clone", "prlimit64"})
"""Allowed calls with rules on their arguments (see ``compile_filter``)."""


class SeccompUnavailable(Exception):
    """libseccomp is missing or refused the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


Condition = tuple[int, int, int, int]
"""(argument index, SCMP_CMP_* operator, datum a, datum b): one ``scmp_arg_cmp``."""


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _aligned_blocks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    """[start, stop) as (mask, value) pairs, each matching one aligned power-of-two block.

    A value ``v`` is in the range exactly when ``v & mask == value`` for one of the pairs:
    how the complement of a few values becomes masked-equality rules, which never overlap.
    """
    while start < stop:
        size = start & -start if start else 1 << 64
        while size > stop - start:
            size //= 2
        yield U64_MASK & ~(size - 1), start
        start += size


class _Filter:
    def __init__(self, arch: str | None) -> None:
        path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            self.lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise SeccompUnavailable(f"libseccomp not found: {exc}") from exc
        lib = self.lib
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
        ]  # fmt: skip
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.arch = lib.seccomp_arch_native()
        if arch is not None:
            self.arch = lib.seccomp_arch_resolve_name(arch.encode())
            if self.arch == 0:
                raise SeccompUnavailable(f"libseccomp does not know the architecture {arch}")
        self.ctx = lib.seccomp_init(_errno_action(errno.ENOSYS))
        if not self.ctx:
            raise SeccompUnavailable("seccomp_init failed")
        if self.arch != lib.seccomp_arch_native():
            # Only a filter for another machine (the tests' aarch64 on x86_64). libseccomp
            # takes rules by the native number and translates them by name.
            self._check(lib.seccomp_arch_add(self.ctx, self.arch), "arch")
            self._check(lib.seccomp_arch_remove(self.ctx, SCMP_ARCH_NATIVE), "arch")
        self._check(
            lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
            "bad-architecture action",
        )
        lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_CTL_OPTIMIZE, BINARY_TREE)  # libseccomp>=2.5

    def _check(self, result: int, what: str) -> None:
        if result < 0:
            self.lib.seccomp_release(self.ctx)
            raise SeccompUnavailable(f"{what}: {os.strerror(-result)}")

    def add(self, name: str, action: int, *conditions: Condition) -> None:
        if self.lib.seccomp_syscall_resolve_name_arch(self.arch, name.encode()) < 0:
            return  # not a system call on this architecture (or newer than libseccomp)
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        array = (_ArgCmp * max(1, len(conditions)))(*(_ArgCmp(*c) for c in conditions))
        result = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(conditions), array)
        self._check(result, f"rule for {name}")

    def export(self) -> bytes:
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            result = self.lib.seccomp_export_bpf(self.ctx, fd)
            if result < 0:
                raise SeccompUnavailable(f"export: {os.strerror(-result)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
            self.lib.seccomp_release(self.ctx)


def compile_filter(arch: str | None = None) -> bytes:
    """The filter as classic BPF (``struct sock_filter`` array).

    For this machine's architecture, or ``arch`` (a libseccomp name: "x86_64", "aarch64").
    The argument rules of each call split its arguments into sets that do not overlap,
    so no rule depends on the order libseccomp checks them in.
    """
    f = _Filter(arch)
    allow = SCMP_ACT_ALLOW
    for name in ALLOWED_SYSCALLS:
        if name not in ARGUMENT_CHECKED:
            f.add(name, allow)
    for name in DENIED_SYSCALLS:
        f.add(name, _errno_action(errno.EPERM))
    # Only Unix and IP sockets: no netlink, packet, vsock, bluetooth, alg, ... The
    # comparisons are of 64 bits: a family with high bits set is ``>= 11``, refused.
    no_family = _errno_action(errno.EAFNOSUPPORT)
    for family in (AF_UNIX, AF_INET, AF_INET6):
        f.add("socket", allow, (0, SCMP_CMP_EQ, family, 0))
    f.add("socket", no_family, (0, SCMP_CMP_GE, AF_INET6 + 1, 0))
    for family in (0, *range(AF_INET + 1, AF_INET6)):
        f.add("socket", no_family, (0, SCMP_CMP_EQ, family, 0))
    f.add("socketpair", allow, (0, SCMP_CMP_EQ, AF_UNIX, 0))
    f.add("socketpair", no_family, (0, SCMP_CMP_EQ, 0, 0))
    f.add("socketpair", no_family, (0, SCMP_CMP_GE, AF_UNIX + 1, 0))
    # The kernel takes an ioctl's request as 32 bits: a denied request is refused whatever
    # the high bits. Allowed: every other 32-bit request, and the sign-extended ones.
    # Anything else (high bits that are neither) gets the default.
    for request in DENIED_IOCTLS:
        f.add("ioctl", _errno_action(errno.EPERM), (1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
    bounds = [-1, *sorted(DENIED_IOCTLS), U32_LIMIT]
    gaps = [(low + 1, high) for low, high in itertools.pairwise(bounds)]
    for start, stop in [*gaps, (SIGN_EXTENDED_FLOOR, 1 << 64)]:
        for mask, value in _aligned_blocks(start, stop):
            f.add("ioctl", allow, (1, SCMP_CMP_MASKED_EQ, mask, value))
    # clone: threads and processes, not namespaces (the kernel, too, reads 32 bits).
    namespaces = 0
    for flag in CLONE_NAMESPACE_FLAGS:
        namespaces |= flag
        f.add("clone", _errno_action(errno.EPERM), (0, SCMP_CMP_MASKED_EQ, flag, flag))
    f.add("clone", allow, (0, SCMP_CMP_MASKED_EQ, namespaces, 0))
    # prlimit64: a process sets only its own limits (pid 0, as setrlimit does), never its
    # init's or another job process' (same uid, so the kernel would let it); reading is free.
    f.add("prlimit64", allow, (0, SCMP_CMP_EQ, 0, 0))
    f.add("prlimit64", allow, (0, SCMP_CMP_NE, 0, 0), (2, SCMP_CMP_EQ, 0, 0))
    f.add("prlimit64", _errno_action(errno.EPERM), (0, SCMP_CMP_NE, 0, 0), (2, SCMP_CMP_NE, 0, 0))
    return f.export()
