"""The seccomp filter of sandboxed programs, compiled once with libseccomp.

The filter allows by default and refuses the system calls that widen the kernel's
attack surface or reach outside the sandbox; the namespaces, the read-only root and
the cgroup are the primary boundary, this is the second line. Compiled on the host to
classic BPF; the zygote loads the bytes in each program with ``prctl``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["DENIED_SYSCALLS", "SeccompUnavailable", "compile_filter"]

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
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
    "io_uring_register", "fanotify_init",
    # the host machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "vhangup", "iopl", "ioperm", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "uselib", "ustat", "sysfs", "nfsservctl",
    "personality",
)  # fmt: skip


class SeccompUnavailable(Exception):
    """libseccomp is missing or refused the filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _Filter:
    def __init__(self) -> None:
        path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            self.lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise SeccompUnavailable(f"libseccomp not found: {exc}") from exc
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
        ]  # fmt: skip
        self.lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.ctx = self.lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self.lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)

    def deny(self, name: str, code: int, *conditions: tuple[int, int, int, int]) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a system call on this architecture
        array = (_ArgCmp * max(1, len(conditions)))(*(_ArgCmp(*c) for c in conditions))
        result = self.lib.seccomp_rule_add_array(
            self.ctx, _errno_action(code), number, len(conditions), array
        )
        if result < 0:
            raise SeccompUnavailable(f"rule for {name}: {os.strerror(-result)}")

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


def compile_filter() -> bytes:
    """The filter as classic BPF (``struct sock_filter`` array) for this architecture."""
    f = _Filter()
    for name in DENIED_SYSCALLS:
        f.deny(name, errno.EPERM)
    # Only Unix and IP sockets: no netlink, packet, vsock, bluetooth, alg, ...
    # The ``>= 11`` rule also catches values with high bits set.
    f.deny("socket", errno.EAFNOSUPPORT, (0, SCMP_CMP_GE, AF_INET6 + 1, 0))
    for family in (0, *range(AF_INET + 1, AF_INET6)):
        f.deny("socket", errno.EAFNOSUPPORT, (0, SCMP_CMP_EQ, family, 0))
    f.deny("socketpair", errno.EAFNOSUPPORT, (0, SCMP_CMP_GE, AF_UNIX + 1, 0))
    # The kernel compares ioctl numbers as 32 bits: mask, or high bits would bypass.
    for request in (TIOCSTI, TIOCLINUX):
        f.deny("ioctl", errno.EPERM, (1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
    for flag in CLONE_NAMESPACE_FLAGS:
        f.deny("clone", errno.EPERM, (0, SCMP_CMP_MASKED_EQ, flag, flag))
    # clone3 takes its flags in memory, out of the filter's sight: make libc fall back.
    f.deny("clone3", errno.ENOSYS)
    return f.export()
