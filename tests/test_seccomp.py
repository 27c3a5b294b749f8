"""The seccomp allowlist: every system call decided, the filter as decided, programs unharmed.

First the decisions (every call libseccomp knows for x86_64 and aarch64, and the newer ones
pinned here, is allowed, denied or unsupported, so a call nobody decided about fails); then
the compiled BPF itself, run by a small classic-BPF interpreter over every call number and
the argument rules; last, real jobs in the session's sandbox: the calls of the security
review are refused, and ordinary programs (threads, fork, subprocess, asyncio, sockets, pty,
mmap, signals...) still work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import operator
import os
import platform
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from executors._sandbox._seccomp import (
    ALLOWED_SYSCALLS,
    ARGUMENT_CHECKED,
    CLONE_NAMESPACE_FLAGS,
    DENIED_IOCTLS,
    DENIED_SYSCALLS,
    UNSUPPORTED_SYSCALLS,
    compile_filter,
)
from tests.support.statuses import OK
from tests.support.watched_pool import WatchedPool

ARCHES = ("x86_64", "aarch64")
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
"""``seccomp_data.arch`` of each (AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64)."""
HIGHEST_SYSCALL_NR = 1023
"""Every number below is enumerated: x86_64 and aarch64 use less than 512 today."""
MACHINE_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine()
)

NEWER_SYSCALLS: dict[str, dict[str, int]] = {
    "statmount": {"x86_64": 457, "aarch64": 457},
    "listmount": {"x86_64": 458, "aarch64": 458},
    "lsm_get_self_attr": {"x86_64": 459, "aarch64": 459},
    "lsm_set_self_attr": {"x86_64": 460, "aarch64": 460},
    "lsm_list_modules": {"x86_64": 461, "aarch64": 461},
    "mseal": {"x86_64": 462, "aarch64": 462},
    "setxattrat": {"x86_64": 463, "aarch64": 463},
    "getxattrat": {"x86_64": 464, "aarch64": 464},
    "listxattrat": {"x86_64": 465, "aarch64": 465},
    "removexattrat": {"x86_64": 466, "aarch64": 466},
    "open_tree_attr": {"x86_64": 467, "aarch64": 467},
    "file_getattr": {"x86_64": 468, "aarch64": 468},
    "file_setattr": {"x86_64": 469, "aarch64": 469},
    "uretprobe": {"x86_64": 335},
    "uprobe": {"x86_64": 336},
}
"""Calls of Linux up to 6.18 that the machine's libseccomp (2.5.4) may not know: pinned, so
that they too must be decided, with their numbers (the kernel's tables) for the jobs below."""

FINDINGS: dict[str, dict[str, int]] = {
    "modify_ldt": {"x86_64": 154},
    "set_mempolicy": {"x86_64": 238, "aarch64": 237},
    "memfd_secret": {"x86_64": 447, "aarch64": 447},
    "statmount": NEWER_SYSCALLS["statmount"],
    "listmount": NEWER_SYSCALLS["listmount"],
    "open_tree_attr": NEWER_SYSCALLS["open_tree_attr"],
}
"""The calls the security review found reaching the kernel (issue 10, item 5)."""

ZYGOTE_SYSCALLS = (
    "prctl", "capset", "chdir", "umask", "setrlimit", "prlimit64", "dup2", "dup3", "close",
    "close_range", "recvmsg", "sendmsg", "sendto", "recvfrom", "socketpair", "clone",
    "pipe2", "read", "write", "pread64", "openat", "mkdir", "fchmod", "lseek", "fstat",
    "wait4", "kill", "getpid", "getppid", "setsid", "rt_sigaction", "rt_sigprocmask",
    "sigaltstack", "mmap", "munmap", "mprotect", "brk", "madvise", "mremap", "getrandom",
    "exit_group",
)  # fmt: skip
"""What the zygote (and a judged job's second process) still do once the filter is in."""

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
X32_SYSCALL_BIT = 0x40000000


def errno_action(code: int) -> int:
    return 0x00050000 | code


ALLOW = SCMP_ACT_ALLOW
ENOSYS = errno_action(errno.ENOSYS)
EPERM = errno_action(errno.EPERM)
EAFNOSUPPORT = errno_action(errno.EAFNOSUPPORT)

# --- libseccomp's names ----------------------------------------------------------------------


class _Libseccomp:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
        self.lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        self.lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
        self.lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
        self.lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        self.free = ctypes.CDLL(None).free
        self.free.argtypes = [ctypes.c_void_p]

    def names(self, arch: str) -> dict[int, str]:
        """Number -> name of every call libseccomp knows for ``arch``."""
        token = self.lib.seccomp_arch_resolve_name(arch.encode())
        assert token == AUDIT_ARCH[arch]
        found = {}
        for number in range(HIGHEST_SYSCALL_NR + 1):
            pointer = self.lib.seccomp_syscall_resolve_num_arch(token, number)
            if pointer:
                found[number] = ctypes.string_at(pointer).decode()
                self.free(pointer)  # libseccomp returns a strdup'ed name
        return found


@pytest.fixture(scope="module")
def libseccomp() -> _Libseccomp:
    return _Libseccomp()


@pytest.fixture(scope="module")
def known(libseccomp: _Libseccomp) -> dict[str, dict[int, str]]:
    return {arch: libseccomp.names(arch) for arch in ARCHES}


DECIDED = {
    **dict.fromkeys(UNSUPPORTED_SYSCALLS, "unsupported"),
    **dict.fromkeys(DENIED_SYSCALLS, "denied"),
    **dict.fromkeys(ALLOWED_SYSCALLS, "allowed"),
}


def test_each_call_is_decided_once() -> None:
    everything = [*ALLOWED_SYSCALLS, *DENIED_SYSCALLS, *UNSUPPORTED_SYSCALLS]
    twice = sorted({name for name in everything if everything.count(name) > 1})
    assert not twice, f"decided more than once: {twice}"
    assert set(ALLOWED_SYSCALLS) >= ARGUMENT_CHECKED


@pytest.mark.parametrize("arch", ARCHES)
def test_every_call_libseccomp_knows_is_decided(
    arch: str, known: dict[str, dict[int, str]]
) -> None:
    """Fails when libseccomp (upgraded with the kernel's new calls) knows an undecided one."""
    assert len(known[arch]) > 250, "libseccomp resolved too few names: the enumeration broke"
    undecided = sorted(name for name in known[arch].values() if name not in DECIDED)
    assert not undecided, (
        f"system calls of {arch} nobody decided about: {undecided}; add each to "
        "ALLOWED_SYSCALLS, DENIED_SYSCALLS or UNSUPPORTED_SYSCALLS in _seccomp.py"
    )


def test_every_newer_call_pinned_here_is_decided() -> None:
    undecided = sorted(set(NEWER_SYSCALLS) - set(DECIDED))
    assert not undecided, f"undecided: {undecided}"


def test_every_decided_name_is_a_system_call(known: dict[str, dict[int, str]]) -> None:
    """A misspelt name would be skipped silently as "not on this architecture"."""
    names = {name for arch in ARCHES for name in known[arch].values()} | set(NEWER_SYSCALLS)
    assert not sorted(set(DECIDED) - names)


def test_the_findings_are_not_allowed() -> None:
    for name in FINDINGS:
        assert DECIDED[name] != "allowed", name


def test_what_the_zygote_does_after_the_filter_is_allowed() -> None:
    assert not sorted(set(ZYGOTE_SYSCALLS) - set(ALLOWED_SYSCALLS))


# --- the compiled filter, run -----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    nr: int
    args: tuple[int, ...] = ()
    arch: int = 0


def run_bpf(program: bytes, call: Call, arch: str) -> int:
    """The action ``program`` returns for ``call``: a classic-BPF interpreter for seccomp.

    ``struct seccomp_data`` as the kernel lays it out (little-endian on both arches).
    Refuses an instruction it does not know, rather than guess.
    """
    args = (*call.args, *(0,) * (6 - len(call.args)))
    data = struct.pack(
        "<iIQ6Q", call.nr, call.arch or AUDIT_ARCH[arch], 0, *(v & (2**64 - 1) for v in args)
    )
    instructions: list[tuple[int, int, int, int]] = [
        struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)
    ]
    a: int = 0
    x: int = 0
    pc = 0
    memory = [0] * 16
    for _ in range(len(instructions)):  # jumps go forward only: each instruction runs once
        code, jt, jf, k = instructions[pc]
        pc += 1
        kind = code & 0x07
        operand = x if code & 0x08 else k
        if code == 0x20:  # ld [k]
            (a,) = struct.unpack_from("<I", data, k)
        elif code == 0x00:  # ld #k
            a = k
        elif code == 0x60:  # ld M[k]
            a = memory[k]
        elif code == 0x01:  # ldx #k
            x = k
        elif code == 0x02:  # st M[k]
            memory[k] = a
        elif code == 0x03:  # stx M[k]
            memory[k] = x
        elif kind == 0x04 and code & 0xF0 in (0x00, 0x10, 0x40, 0x50, 0x60, 0x70, 0xA0):
            # Looked up lazily: ``a << k`` for every k would build gigabyte-sized integers.
            operations: dict[int, Callable[[int, int], int]] = {
                0x00: operator.add, 0x10: operator.sub, 0x40: operator.or_, 0x50: operator.and_,
                0x60: lambda v, n: v << (n & 31), 0x70: operator.rshift, 0xA0: operator.xor,
            }  # fmt: skip
            a = operations[code & 0xF0](a, operand) & 0xFFFFFFFF
        elif code == 0x05:  # ja
            pc += k
        elif kind == 0x05 and code & 0xF0 in (0x10, 0x20, 0x30, 0x40):
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                     0x40: bool(a & operand)}[code & 0xF0]  # fmt: skip
            pc += jt if taken else jf
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x16:  # ret a
            return a
        elif code == 0x07:  # tax
            x = a
        elif code == 0x87:  # txa
            a = x
        else:
            raise AssertionError(f"unknown BPF instruction {code:#06x} at {pc - 1}")
    raise AssertionError("the program ran off its end")


@pytest.fixture(scope="module")
def filters() -> dict[str, bytes]:
    return {arch: compile_filter(arch) for arch in ARCHES}


def expected_for_zero_arguments(name: str | None) -> int:
    if name in ("socket", "socketpair"):
        return EAFNOSUPPORT  # family 0, AF_UNSPEC
    decision = DECIDED.get(name or "")
    return {"allowed": ALLOW, "denied": EPERM}.get(decision or "", ENOSYS)


def test_the_filter_fits_the_kernel_and_is_deterministic(filters: dict[str, bytes]) -> None:
    for arch, program in filters.items():
        assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes per instruction
        assert len(program) // 8 <= 4096, arch  # BPF_MAXINSNS
        assert compile_filter(arch) == program
    if MACHINE_ARCH is not None:
        assert compile_filter() == filters[MACHINE_ARCH]


@pytest.mark.parametrize("arch", ARCHES)
def test_the_filter_allows_exactly_the_allowed_calls(
    arch: str, filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    """Every number up to 1023: allowed, EPERM for the denied, ENOSYS for all the rest."""
    numbers = {**{n[arch]: name for name, n in NEWER_SYSCALLS.items() if arch in n}}
    numbers.update(known[arch])
    wrong = {}
    for nr in range(HIGHEST_SYSCALL_NR + 1):
        name = numbers.get(nr)
        action = run_bpf(filters[arch], Call(nr), arch)
        expected = expected_for_zero_arguments(name)
        if name in NEWER_SYSCALLS and nr not in known[arch]:
            expected = ENOSYS  # libseccomp cannot name it, so cannot allow or deny it
        if action != expected:
            wrong[f"{nr} {name}"] = f"{action:#x}, expected {expected:#x}"
    assert not wrong, wrong
    allowed = sum(run_bpf(filters[arch], Call(nr), arch) == ALLOW for nr in known[arch])
    assert allowed > 200  # the enumeration ran over the filter's allowed calls


@pytest.mark.parametrize("arch", ARCHES)
def test_a_call_of_another_abi_kills_the_process(arch: str, filters: dict[str, bytes]) -> None:
    other = AUDIT_ARCH["aarch64" if arch == "x86_64" else "x86_64"]
    assert run_bpf(filters[arch], Call(0, arch=other), arch) == SCMP_ACT_KILL_PROCESS
    if arch == "x86_64":  # x32 calls carry the same arch, and a high bit in the number
        assert run_bpf(filters[arch], Call(X32_SYSCALL_BIT), arch) == SCMP_ACT_KILL_PROCESS


def nr_of(name: str, known: dict[str, dict[int, str]], arch: str) -> int:
    return next(nr for nr, n in known[arch].items() if n == name)


@pytest.mark.parametrize("arch", ARCHES)
def test_only_unix_and_ip_sockets(
    arch: str, filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    socket_nr, pair_nr = nr_of("socket", known, arch), nr_of("socketpair", known, arch)
    families = [*range(64), 2**31, 2**32 + 1, 2**32 + 2, 2**63 + 10, 2**64 - 1]
    for family in families:
        action = run_bpf(filters[arch], Call(socket_nr, (family, 1, 0)), arch)
        assert action == (ALLOW if family in (1, 2, 10) else EAFNOSUPPORT), family
        action = run_bpf(filters[arch], Call(pair_nr, (family, 1, 0)), arch)
        assert action == (ALLOW if family == 1 else EAFNOSUPPORT), family


@pytest.mark.parametrize("arch", ARCHES)
def test_ioctl_requests(
    arch: str, filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    ioctl = nr_of("ioctl", known, arch)

    def action(request: int) -> int:
        return run_bpf(filters[arch], Call(ioctl, (0, request, 0)), arch)

    for request in DENIED_IOCTLS:  # the kernel reads 32 bits: the high ones do not help
        for high in (0, 1, 0xFFFFFFFF, 0x80000000):
            assert action(high << 32 | request) == EPERM, hex(high << 32 | request)
    tcgets, tiocgwinsz, fionread, tiocgptn = 0x5401, 0x5413, 0x541B, 0x80045430
    for request in (0, 1, tcgets, tiocgwinsz, fionread, tiocgptn, 0xFFFFFFFF, 0x7FFFFFFF):
        assert action(request) == ALLOW, hex(request)
    for request in (*(r - 1 for r in DENIED_IOCTLS), *(r + 1 for r in DENIED_IOCTLS)):
        assert action(request) == ALLOW, hex(request)
    assert action(0xFFFFFFFF_80045430) == ALLOW  # _IOR requests passed as a C int
    assert action(0x00000001_00005413) == ENOSYS  # neither zero- nor sign-extended


@pytest.mark.parametrize("arch", ARCHES)
def test_clone_makes_no_namespaces(
    arch: str, filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    clone = nr_of("clone", known, arch)

    def action(flags: int) -> int:
        return run_bpf(filters[arch], Call(clone, (flags, 0, 0, 0, 0)), arch)

    thread = 0x003D0F00  # glibc's pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|...
    fork = 0x01200011  # glibc's fork: CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
    for flags in (thread, fork, 0x4111, 17, 1 << 40 | fork):  # the kernel ignores bits 32+
        assert action(flags) == ALLOW, hex(flags)
    for flag in CLONE_NAMESPACE_FLAGS:
        assert action(fork | flag) == EPERM, hex(flag)
        assert action(1 << 40 | fork | flag) == EPERM, hex(flag)


@pytest.mark.parametrize("arch", ARCHES)
def test_prlimit_sets_only_ones_own_limits(
    arch: str, filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    prlimit = nr_of("prlimit64", known, arch)

    def action(pid: int, new_limit: int, old_limit: int) -> int:
        return run_bpf(filters[arch], Call(prlimit, (pid, 7, new_limit, old_limit)), arch)

    limits = 0x7FFF0000  # any address
    assert action(0, limits, 0) == action(0, limits, limits) == ALLOW  # setrlimit
    assert action(0, 0, limits) == action(1, 0, limits) == action(2**32 + 1, 0, limits) == ALLOW
    for pid in (1, 2, 12345, 2**32, 2**32 + 1, 2**64 - 1):  # 2**32: the kernel's pid 0
        assert action(pid, limits, 0) == action(pid, limits, limits) == EPERM, pid


def test_clone3_is_not_implemented_so_libc_falls_back(
    filters: dict[str, bytes], known: dict[str, dict[int, str]]
) -> None:
    for arch in ARCHES:
        assert run_bpf(filters[arch], Call(nr_of("clone3", known, arch)), arch) == ENOSYS


# --- real jobs -------------------------------------------------------------------------------


def finding_probe(arch: str) -> str:
    """A program that makes each finding's call, as it would succeed unfiltered, printing
    {name: errno or "ok"} as JSON: the same call succeeds or fails otherwise on the host."""
    numbers = {name: n[arch] for name, n in FINDINGS.items() if arch in n}
    return textwrap.dedent(f"""
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        buffer = ctypes.create_string_buffer(4096)
        arguments = {{
            "modify_ldt": (0, buffer, 16),  # read the LDT
            "set_mempolicy": (0, None, 0),  # MPOL_DEFAULT: a no-op
            "memfd_secret": (0,),
            "statmount": (buffer, buffer, 4096, 0),
            "listmount": (buffer, buffer, 16, 0),
            "open_tree_attr": (-100, b"/", 0, None, 0),  # AT_FDCWD
        }}
        answers = {{}}
        for name, number in {numbers!r}.items():
            ctypes.set_errno(0)
            result = libc.syscall(ctypes.c_long(number), *arguments[name])
            answers[name] = "ok" if result >= 0 else ctypes.get_errno()
        print(json.dumps(answers))
    """)


@pytest.mark.sandbox
@pytest.mark.skipif(MACHINE_ARCH is None, reason="neither x86_64 nor aarch64")
def test_the_findings_are_refused_in_a_job(sandbox: WatchedPool) -> None:
    assert MACHINE_ARCH is not None
    code = finding_probe(MACHINE_ARCH)
    record = sandbox.run(code)
    assert (record.status, record.stderr) == (OK, ""), record
    in_job = json.loads(record.stdout)
    assert in_job == dict.fromkeys(in_job, errno.ENOSYS)
    assert set(in_job) == {name for name, n in FINDINGS.items() if MACHINE_ARCH in n}
    # The same calls on the host, unfiltered: the ones this kernel has answer otherwise (all
    # six on Linux 6.18), so the job's ENOSYS is the filter's, not the kernel's.
    host = json.loads(
        subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert any(answer != errno.ENOSYS for answer in host.values()), host


DENIED_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def answer(number, *args):
    ctypes.set_errno(0)
    return "ok" if libc.syscall(ctypes.c_long(number), *args) >= 0 else os.strerror(ctypes.get_errno())
print("unshare", answer(NR_UNSHARE, 0x10000000))
print("bpf", answer(NR_BPF, 0, None, 0))
print("io_uring_setup", answer(NR_IO_URING, 1, ctypes.create_string_buffer(120)))
print("unknown", answer(1000))
"""


@pytest.mark.sandbox
def test_denied_calls_are_not_permitted_and_unknown_ones_not_implemented(
    sandbox: WatchedPool, known: dict[str, dict[int, str]]
) -> None:
    assert MACHINE_ARCH is not None
    code = DENIED_PROBE
    for name, placeholder in (("unshare", "NR_UNSHARE"), ("bpf", "NR_BPF"),
                              ("io_uring_setup", "NR_IO_URING")):  # fmt: skip
        code = code.replace(placeholder, str(nr_of(name, known, MACHINE_ARCH)))
    record = sandbox.run(code)
    denied = "Operation not permitted"
    assert record.stdout == (
        f"unshare {denied}\nbpf {denied}\nio_uring_setup {denied}\n"
        "unknown Function not implemented\n"
    ), record


ORDINARY_PROGRAMS: dict[str, str] = {
    "threads": """
        import threading, concurrent.futures as cf
        results = []
        threads = [threading.Thread(target=results.append, args=(i,)) for i in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        with cf.ThreadPoolExecutor(4) as ex:
            assert sum(ex.map(lambda v: v * v, range(10))) == 285
        assert sorted(results) == list(range(8))
        lock, event = threading.Lock(), threading.Event()
        with lock: event.set()
        assert event.wait(1)
    """,
    "multiprocessing_fork": """
        import multiprocessing as mp
        def square(v): return v * v
        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            with ctx.Pool(2) as pool:
                assert pool.map(square, range(6)) == [0, 1, 4, 9, 16, 25]
            queue = ctx.Queue()
            p = ctx.Process(target=queue.put, args=("hi",)); p.start()
            assert queue.get(timeout=5) == "hi"; p.join(); assert p.exitcode == 0
            lock = ctx.Lock(); value = ctx.Value("i", 0)
            with lock: value.value += 1
    """,
    "subprocess": """
        import os, subprocess
        out = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, text=True)
        assert (out.returncode, out.stdout) == (0, "hi\\n"), out
        env = subprocess.run(["/usr/bin/env"], capture_output=True, text=True, check=True)
        assert "PATH=" in env.stdout, env.stdout
        piped = subprocess.check_output("printf 'b\\na\\nb\\n' | sort | uniq | wc -l", shell=True)
        assert piped.strip() == b"2", piped
        p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.communicate(b"abc") == (b"abc", None)
        pid = os.posix_spawn("/bin/true", ["true"], dict(os.environ))
        assert os.waitpid(pid, 0)[1] == 0
        pid = os.fork()
        if pid == 0: os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    """,
    "asyncio_loopback": """
        import asyncio, socket
        async def main():
            async def echo(reader, writer):
                writer.write(await reader.read(100)); await writer.drain(); writer.close()
            for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
                server = await asyncio.start_server(echo, host, 0, family=family)
                port = server.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"ping"); writer.write_eof()
                assert await reader.read() == b"ping"
                writer.close(); server.close(); await server.wait_closed()
            proc = await asyncio.create_subprocess_exec(
                "/bin/echo", "async", stdout=asyncio.subprocess.PIPE)
            assert (await proc.communicate())[0] == b"async\\n"
            assert await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2]) == 3
            await asyncio.wait_for(asyncio.sleep(0.01), 1)
        asyncio.run(main())
    """,
    "sockets": """
        import socket, struct, os
        a, b = socket.socketpair()
        a.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 1))])
        message, fds, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4))
        assert message == b"m" and len(fds) == 1
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
        u.sendto(b"d", u.getsockname()); assert u.recvfrom(10)[0] == b"d"
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("\\0sock-test")
        for family in (socket.AF_NETLINK, socket.AF_PACKET):
            try:
                socket.socket(family, socket.SOCK_RAW)
            except OSError as e:
                assert e.errno == 97, e  # EAFNOSUPPORT
            else:
                raise AssertionError(family)
    """,
    "pty_and_terminal_ioctls": """
        import os, fcntl, termios, struct
        master, slave = os.openpty()
        assert os.ttyname(slave).startswith("/dev/pts/")
        os.write(master, b"hi\\n"); assert os.read(slave, 10) == b"hi\\n"
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        assert os.get_terminal_size(slave) == (80, 24)
        termios.tcgetattr(slave)
        try:
            fcntl.ioctl(slave, termios.TIOCSTI, b"x")
        except OSError as e:
            assert e.errno == 1, e  # EPERM
        else:
            raise AssertionError("TIOCSTI went through")
    """,
    "mmap_and_memory": """
        import mmap, os
        m = mmap.mmap(-1, 1 << 20); m[0] = 1; m.madvise(mmap.MADV_DONTNEED); m.resize(2 << 20)
        m.close()
        fd = os.memfd_create("x"); os.ftruncate(fd, 4096)
        with mmap.mmap(fd, 4096) as shared: shared[:2] = b"ok"
        assert os.pread(fd, 2, 0) == b"ok"
        from multiprocessing import shared_memory
        block = shared_memory.SharedMemory(create=True, size=1024); block.buf[0] = 9
        block.close(); block.unlink()
    """,
    "select_poll_epoll": """
        import os, select, selectors
        r, w = os.pipe(); os.write(w, b"x")
        assert select.select([r], [w], [], 0)[0] == [r]
        p = select.poll(); p.register(r); assert p.poll(0)
        e = select.epoll(); e.register(r, select.EPOLLIN); assert e.poll(0); e.close()
        s = selectors.DefaultSelector(); s.register(r, selectors.EVENT_READ); assert s.select(0)
        ev = os.eventfd(0); os.eventfd_write(ev, 3); assert os.eventfd_read(ev) == 3
    """,
    "time_signals_resources": """
        import time, signal, resource, os
        t0 = time.monotonic(); time.sleep(0.02); assert time.monotonic() - t0 >= 0.02
        time.time(); time.process_time(); time.thread_time(); time.perf_counter_ns()
        time.clock_getres(time.CLOCK_MONOTONIC)
        fired = []
        signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
        signal.alarm(1); signal.alarm(0)
        signal.setitimer(signal.ITIMER_REAL, 0.01); time.sleep(0.2); assert fired
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signal.sigtimedwait([signal.SIGUSR1], 1).si_signo == signal.SIGUSR1
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
        os.sched_setaffinity(0, os.sched_getaffinity(0)); os.getpriority(os.PRIO_PROCESS, 0)
        os.urandom(16); import secrets, uuid; secrets.token_hex(); uuid.uuid4()
        os.uname(); os.times(); os.getloadavg(); os.cpu_count()
    """,
    "files": """
        import os, shutil, tempfile, sqlite3, fcntl
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "f")
            with open(f, "w") as out: out.write("x" * 1000)
            os.chmod(f, 0o600); os.rename(f, f + "2"); os.link(f + "2", f + "3")
            os.symlink(f + "2", f + "4"); assert os.readlink(f + "4") == f + "2"
            os.utime(f + "2"); os.truncate(f + "2", 10); os.stat(f + "2"); os.lstat(f + "4")
            shutil.copy2(f + "2", f + "5"); shutil.copytree(d, d + "x"); shutil.rmtree(d + "x")
            os.mkfifo(f + "fifo"); os.statvfs(d); os.access(f + "2", os.R_OK); os.sync()
            fd = os.open(f + "2", os.O_RDWR)
            os.fsync(fd); os.fdatasync(fd); os.posix_fallocate(fd, 0, 100)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL); fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, b"abcde", 0); os.readv(fd, [bytearray(3)]); os.lseek(fd, 0, 0)
            out = os.open(f + "6", os.O_WRONLY | os.O_CREAT)
            assert os.sendfile(out, fd, 0, 5) == 5
            assert os.copy_file_range(fd, out, 5, 0, 5) == 5
            os.close(out); os.close(fd)
            with open(f + "6", "rb") as result: assert result.read() == b"abcdeabcde"
            with tempfile.NamedTemporaryFile() as tf: tf.write(b"x")
            sqlite3.connect(os.path.join(d, "db")).execute("create table t(x)")
            assert sorted(e.name for e in os.scandir(d))[0] == "db"
    """,
}


@pytest.mark.sandbox
@pytest.mark.parametrize("name", ORDINARY_PROGRAMS)
def test_ordinary_programs_work(sandbox: WatchedPool, name: str) -> None:
    record = sandbox.run(textwrap.dedent(ORDINARY_PROGRAMS[name]) + "\nprint('done')\n")
    assert (record.status, record.stdout, record.stderr) == (OK, "done\n", ""), record


UNDER_THE_FILTER = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
bpf = bytes.fromhex(sys.argv[1])
buffer = ctypes.create_string_buffer(bpf, len(bpf))
program = Program(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0
assert libc.syscall(ctypes.c_long(1000)) == -1 and ctypes.get_errno() == 38  # ENOSYS: loaded
"""
"""Loads the filter (hex in argv[1]) in this process as the zygote does, then runs the rest."""

NUMPY_PROGRAM = """
import os
import numpy as np
a = np.random.default_rng(1).random((400, 400))
assert np.allclose(a @ np.linalg.inv(a), np.eye(400), atol=1e-6)
np.fft.fft(np.ones(64)); np.linalg.svd(a[:100, :100]); np.sort(a, axis=None)
with open("/proc/self/status") as status:
    assert "Seccomp:\t2" in status.read()
print("done", len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(MACHINE_ARCH is None, reason="neither x86_64 nor aarch64")
def test_numpy_and_openblas_work_under_the_filter() -> None:
    """numpy is not in the sandbox's interpreter (the service's venv never is): run it here,
    in a process that loads the same filter. OpenBLAS starts its threads, pins them with
    sched_setaffinity and calls mbind on its buffers (answered ENOSYS, result ignored)."""
    pytest.importorskip("numpy")
    result = subprocess.run(
        [sys.executable, "-c", UNDER_THE_FILTER + NUMPY_PROGRAM, compile_filter().hex()],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "2"},
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith("done "), result
    assert int(result.stdout.split()[1]) >= 2, "OpenBLAS started no thread of its own"
