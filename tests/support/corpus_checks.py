"""Each corpus entry's expectation (``CHECKS``: entry -> a check of its record), checked
precisely. Where the corpus and the API's status table disagree, the API wins; the checks say
where."""

from __future__ import annotations

import ast
import errno
import re
import signal
from collections.abc import Callable

from executors import ExecutionRecord, ExecutionStatus
from executors._sandbox.zygote import MAX_PTYS
from tests.support.corpus import CORPUS
from tests.support.limits import CORPUS_LIMITS, MIB
from tests.support.statuses import (
    CRASHED,
    MEMORY_LIMIT,
    NONZERO_EXIT,
    OK,
    OUTPUT_LIMIT,
    TIMEOUT,
)
from tests.support.watched_pool import ALLOWED_ENV

__all__ = ["CHECKS", "Check", "assert_killed", "assert_ok", "wall_s"]

SHM_SEGMENT_BYTES = 64 << 20
MAX_ARTIFACTS = CORPUS_LIMITS.max_artifacts
MAX_ARTIFACT_BYTES = CORPUS_LIMITS.max_artifact_bytes


Check = Callable[[ExecutionRecord], None]
CHECKS: dict[str, Check] = {}


def expect(name: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        assert name in CORPUS, f"no corpus entry {name!r}"
        CHECKS[name] = check
        return check

    return register


def assert_ok(record: ExecutionRecord, stdout: str | None = None) -> None:
    """Exited 0 within every limit, nothing on stderr, and ``stdout`` if given."""
    assert (record.status, record.exit_code, record.signal) == (OK, 0, None), record
    assert record.stderr == ""
    assert not (record.stdout_truncated or record.stderr_truncated)
    if stdout is not None:
        assert record.stdout == stdout


def assert_killed(record: ExecutionRecord, status: ExecutionStatus) -> None:
    """Killed by the service (SIGKILL) for ``status``."""
    assert (record.status, record.exit_code, record.signal) == (status, None, signal.SIGKILL)


def wall_s(record: ExecutionRecord) -> float:
    return float(record.limits["wall_timeout_s"])


@expect("control_hello")
def _control_hello(r: ExecutionRecord) -> None:
    assert_ok(r, "hello\n")


@expect("control_moderate_resources")
def _control_moderate_resources(r: ExecutionRecord) -> None:
    assert_ok(r, "ok 33554432\n")


@expect("control_short_sleep")
def _control_short_sleep(r: ExecutionRecord) -> None:
    assert_ok(r, "woke\n")


@expect("control_unicode_roundtrip")
def _control_unicode_roundtrip(r: ExecutionRecord) -> None:
    assert_ok(r, "héllo ✓ 日本語 🐍\n")
    assert r.stdout.encode("utf-8") == "héllo ✓ 日本語 🐍\n".encode()


@expect("c_level_bignum")
def _c_level_bignum(r: ExecutionRecord) -> None:
    assert r.status in (TIMEOUT, MEMORY_LIMIT), r
    assert r.stdout == ""


@expect("wall_clock_sleep")
def _wall_clock_sleep(r: ExecutionRecord) -> None:
    assert_killed(r, TIMEOUT)


@expect("ignore_termination_signals")
def _ignore_termination_signals(r: ExecutionRecord) -> None:
    assert_killed(r, TIMEOUT)


@expect("stdin_blocking_read")
def _stdin_blocking_read(r: ExecutionRecord) -> None:
    assert_ok(r, "read 0\n")


@expect("grandchild_holds_stdout_pipe")
def _grandchild_holds_stdout_pipe(r: ExecutionRecord) -> None:
    assert_ok(r, "bye\n")  # and, as for every entry, answered within WALL + GRACE


@expect("zombie_farm")
def _zombie_farm(r: ExecutionRecord) -> None:
    assert_ok(r, "50 children never reaped\n")


@expect("nondaemon_thread_outlives_main")
def _nondaemon_thread_outlives_main(r: ExecutionRecord) -> None:
    assert_killed(r, TIMEOUT)
    assert r.stdout == "main finished\n"


@expect("sysv_shm_outlives_job")
def _sysv_shm_outlives_job(r: ExecutionRecord) -> None:
    if r.status == MEMORY_LIMIT:
        return
    # Or the segments beyond the memory cap were refused.
    assert_ok(r)
    created = int(r.stdout.removeprefix("segments created:").strip())
    assert created * SHM_SEGMENT_BYTES <= int(r.limits["memory_mb"]) << 20, r.stdout


@expect("memory_mmap_overcommit")
def _memory_mmap_overcommit(r: ExecutionRecord) -> None:
    # The corpus allows nonzero_exit; the API's status table says a program that hit the
    # memory cap, killed or failing with the memory error it caused (here ENOMEM from
    # mmap), ends as memory_limit: the API wins.
    assert r.status == MEMORY_LIMIT, r
    assert r.stdout == ""


@expect("memory_single_huge_alloc")
def _memory_single_huge_alloc(r: ExecutionRecord) -> None:
    # As above: "MemoryError (exit 1) ... nonzero_exit" in the corpus is memory_limit in the API.
    assert r.status == MEMORY_LIMIT, r
    assert r.stdout == ""
    if r.exit_code is not None:
        assert "MemoryError" in r.stderr


@expect("dev_shm_fill")
def _dev_shm_fill(r: ExecutionRecord) -> None:
    if r.status == MEMORY_LIMIT:
        return
    assert (r.status, r.exit_code) == (NONZERO_EXIT, 1), r
    # ENOSPC from the job's size-capped tmpfs, or EFBIG: the file-size cap (max_file_bytes,
    # at most the tmpfs' size) is the same cap on the job's writable space, met first.
    assert re.search(
        r"OSError: \[Errno (28|27)\] (No space left on device|File too large)", r.stderr
    )


@expect("thread_bomb")
def _thread_bomb(r: ExecutionRecord) -> None:
    if r.status == MEMORY_LIMIT:
        return
    # The bomb dies of the task cap; its sleeping threads then keep the process up to the
    # wall limit (timeout), unless they were few enough to end first (nonzero_exit).
    assert r.status in (TIMEOUT, NONZERO_EXIT), r
    assert "RuntimeError: can't start new thread" in r.stderr


@expect("sparse_file_petabyte")
def _sparse_file_petabyte(r: ExecutionRecord) -> None:
    if r.status == OK:
        assert_ok(r, f"{1 << 50}\n")
    else:
        assert (r.status, r.exit_code) == (NONZERO_EXIT, 1), r
        assert "OSError: [Errno 27] File too large" in r.stderr


@expect("inode_exhaustion_many_small_files")
def _inode_exhaustion(r: ExecutionRecord) -> None:
    if r.status == TIMEOUT:
        return
    assert (r.status, r.exit_code) == (NONZERO_EXIT, 1), r
    assert "OSError: [Errno 28] No space left on device" in r.stderr


@expect("fd_exhaustion")
def _fd_exhaustion(r: ExecutionRecord) -> None:
    assert_ok(r)
    match = re.fullmatch(r"(\d+) Too many open files\n", r.stdout)
    assert match, r.stdout
    assert int(match.group(1)) <= 256  # NOFILE


@expect("binary_non_utf8_output")
def _binary_non_utf8_output(r: ExecutionRecord) -> None:
    written = bytes(range(256)) * 4 + b"\xff\xfe\xc3\x28\xed\xa0\x80"
    assert_ok(r, written.decode("utf-8", errors="replace").replace("\x00", ""))


@expect("nul_and_terminal_control_output")
def _nul_and_terminal_control_output(r: ExecutionRecord) -> None:
    forged = "\x1b[2J\x1b]0;owned\x07\r\n2025-01-01 INFO job=other status=ok  <- forged log line"
    assert_ok(r, f"beforeafter\n{forged}\n")


@expect("huge_exception_message")
def _huge_exception_message(r: ExecutionRecord) -> None:
    # The corpus says nonzero_exit with stderr capped; the API says a program that writes
    # more than max_output_bytes on a stream is killed: output_limit, with the stream cut to
    # exactly the cap and flagged truncated. The API wins.
    assert_killed(r, OUTPUT_LIMIT)
    cap = int(r.limits["max_output_bytes"])
    assert r.stderr_truncated and not r.stdout_truncated
    assert len(r.stderr.encode("utf-8")) == cap
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    assert r.stdout == ""


@expect("lone_surrogate_print")
def _lone_surrogate_print(r: ExecutionRecord) -> None:
    if r.status == OK:  # a replacing output policy
        assert r.stdout in ("\ufffd\n", "?\n", "\\ud800\n")
    else:
        assert (r.status, r.exit_code) == (NONZERO_EXIT, 1), r
        assert "UnicodeEncodeError" in r.stderr


@expect("proc_cmdline_scan")
def _proc_cmdline_scan(r: ExecutionRecord) -> None:
    assert_ok(r)
    pids = {line.split()[0] for line in r.stdout.splitlines()}
    assert "2" in pids and pids <= {"1", "2"}, r.stdout  # the job's init and the program
    for host_process in ("ray", "gcs_server", "postgres", "redis", "pytest", "bwrap", "setpriv"):
        assert host_process not in r.stdout


@expect("env_dump")
def _env_dump(r: ExecutionRecord) -> None:
    assert_ok(r)
    env = dict(line.split(" = ", 1) for line in r.stdout.splitlines())
    assert set(env) <= ALLOWED_ENV, set(env) - ALLOWED_ENV
    assert env["HOME"] == "/work"


@expect("lateral_other_jobs_workdirs")
def _lateral_other_jobs_workdirs(r: ExecutionRecord) -> None:
    assert_ok(r)
    found = ast.literal_eval(r.stdout.splitlines()[0])
    assert not [p for p in found if p.startswith(("/tmp/", "/var/tmp/", "/sandbox"))], found


@expect("killpg_own_group")
def _killpg_own_group(r: ExecutionRecord) -> None:
    # Its own SIGKILL: crashed (runtime_error(signal) in the corpus), signal 9.
    assert (r.status, r.exit_code, r.signal) == (CRASHED, None, signal.SIGKILL)


@expect("tiocsti_terminal_injection")
def _tiocsti_terminal_injection(r: ExecutionRecord) -> None:
    assert_ok(r, "no tty: No such device or address\n")  # ENXIO


@expect("ptrace_parent_memory")
def _ptrace_parent_memory(r: ExecutionRecord) -> None:
    assert_ok(r)
    denied = "Permission denied|Operation not permitted|No such file or directory"
    assert re.fullmatch(rf"denied: ({denied})\n", r.stdout), r.stdout


@expect("db_direct_connect")
def _db_direct_connect(r: ExecutionRecord) -> None:
    assert_ok(r)
    first, *probes = r.stdout.splitlines()
    names = ("DATABASE_URL", "PGPASSWORD", "POSTGRES_PASSWORD", "REDIS_URL")
    assert ast.literal_eval(first) == dict.fromkeys(names)
    assert "CONNECTED" not in r.stdout
    assert len(probes) == 4 and all(line.startswith("blocked ") for line in probes), probes


def _blocked_fast(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert "CONNECTED" not in r.stdout
    assert "blocked:" in r.stdout
    assert "timed out" not in r.stdout  # refused or unreachable at once, not by timeout


@expect("tcp_egress_to_host_listener")
def _tcp_egress_to_host_listener(r: ExecutionRecord) -> None:
    _blocked_fast(r)
    interfaces = r.stdout.splitlines()[0].removeprefix("interfaces: ")
    assert interfaces in ("none", "[]", "['lo']"), interfaces


@expect("internal_services_ssrf")
def _internal_services_ssrf(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert "OPEN" not in r.stdout
    probes = r.stdout.splitlines()
    assert len(probes) == 8 and all(line.startswith("closed ") for line in probes), probes


@expect("no_route_and_no_resolver")
def _no_route_and_no_resolver(r: ExecutionRecord) -> None:
    assert_ok(r)
    route, _, rest = r.stdout.partition("\nresolv.conf: ")
    resolv, _, _ = rest.partition("\nhosts: ")
    routes = route.removeprefix("route: ").splitlines()[1:]  # after the header
    for line in filter(str.strip, routes):
        iface, destination = line.split()[:2]
        assert iface == "lo" and destination != "00000000", line  # never a default route
    assert resolv == "absent" or "nameserver" not in resolv, resolv


@expect("bind_listen_port")
def _bind_listen_port(r: ExecutionRecord) -> None:
    assert_ok(r, "listening ('127.0.0.1', 8265)\n")


@expect("ipv6_to_host_listener")
def _ipv6_to_host_listener(r: ExecutionRecord) -> None:
    _blocked_fast(r)


@expect("ray_cluster_attach")
def _ray_cluster_attach(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert "ATTACHED" not in r.stdout
    assert r.stdout.startswith("no ray: "), r.stdout


@expect("write_outside_workdir_persistence")
def _write_outside_workdir_persistence(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert "EXISTS" not in r.stdout
    for line in r.stdout.splitlines():
        assert line.split()[1] in ("new", "denied"), line


@expect("unshare_and_mount")
def _unshare_and_mount(r: ExecutionRecord) -> None:
    assert_ok(r, "unshare: -1 Operation not permitted\nmount: -1 Operation not permitted\n")


@expect("setuid_and_shell_exec")
def _setuid_and_shell_exec(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert not re.search(r"uid=0\b", r.stdout), r.stdout
    results = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert set(results) == {"id", "sudo", "su", "sh"}, r.stdout
    for escalation in ("sudo", "su"):  # absent, or failing
        assert results[escalation] == "FileNotFoundError" or int(results[escalation]) != 0


@expect("usercustomize_persistence")
def _usercustomize_persistence(r: ExecutionRecord) -> None:
    # Written to the job's own, discarded HOME; the next runs show nothing (see its scenario).
    assert_ok(r)
    assert r.stdout.startswith("planted in /work/"), r.stdout


@expect("fifo_trap_for_collector")
def _fifo_trap_for_collector(r: ExecutionRecord) -> None:
    assert_ok(r, "fifos created\n")


@expect("hardlink_host_file")
def _hardlink_host_file(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert "HARDLINKED" not in r.stdout
    assert r.stdout.startswith("denied: "), r.stdout


@expect("py_builtins_obfuscated_import")
def _py_builtins_obfuscated_import(r: ExecutionRecord) -> None:
    # Not filtered (nothing promises that): contained by the OS boundary, which the
    # invariants check.
    assert_ok(r, "obfuscated-import-ok\n0\n")


@expect("py_audit_hook_is_not_a_boundary")
def _py_audit_hook_is_not_a_boundary(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert r.stdout.endswith("ctypes loaded; hooks can be disabled by memory writes\n")


@expect("py_gc_and_frame_walk")
def _py_gc_and_frame_walk(r: ExecutionRecord) -> None:
    assert_ok(r)
    modules, frame = r.stdout.splitlines()
    assert modules.endswith(" []"), modules  # no ray, database or web module
    names = set(ast.literal_eval(frame.removeprefix("outermost frame globals: ")))
    main_module = {"__builtins__", "__doc__", "__name__", "__loader__", "__package__", "__spec__"}
    main_module |= {"__annotations__", "__file__", "__cached__"}
    assert names <= {"f", "gc", "mods", "sys"} | main_module, names  # the snippet's own


@expect("unicode_bidi_and_invisibles")
def _unicode_bidi_and_invisibles(r: ExecutionRecord) -> None:
    label = "user\u202e\u2066 nimda \u2069\u2066"
    assert_ok(r, f"{label!r} zero\u200bwidth \ufeffbom\n")


@expect("unicode_utf7_coding_cookie")
def _unicode_utf7_coding_cookie(r: ExecutionRecord) -> None:
    # Code travels and is stored as text, and is compiled as text: a coding cookie cannot
    # change it, so the "comment" stays a comment. What runs is what is stored.
    assert_ok(r, "")


@expect("exit_code_and_partial_output")
def _exit_code_and_partial_output(r: ExecutionRecord) -> None:
    assert (r.status, r.exit_code, r.signal) == (NONZERO_EXIT, 3, None)
    assert r.stdout == "partial output, no newline"


@expect("self_sigkill_vs_enforced_kill")
def _self_sigkill_vs_enforced_kill(r: ExecutionRecord) -> None:
    # Its own signal: crashed, never a limit's status, no limit flag.
    assert (r.status, r.exit_code, r.signal) == (CRASHED, None, signal.SIGKILL)
    assert not (r.stdout_truncated or r.stderr_truncated)
    assert r.stdout == "about to die\n"


def _judged_and_not_passed(r: ExecutionRecord) -> None:
    assert r.passed is False and r.status != ExecutionStatus.INTERNAL_ERROR, r


for _name in (name for name, entry in CORPUS.items() if entry["category"] == "judge"):
    expect(_name)(_judged_and_not_passed)


@expect("dev_filled_past_the_disk_cap")
def _dev_filled_past_the_disk_cap(r: ExecutionRecord) -> None:
    assert_ok(r, f"refused {errno.EROFS}\n0\n")


@expect("plant_ld_so_preload_for_the_next_job")
def _plant_ld_so_preload_for_the_next_job(r: ExecutionRecord) -> None:
    paths = ("/etc/ld.so.preload", "/planted", "/scratch/planted", "/opt/planted")
    assert_ok(r, "".join(f"refused {path} {errno.EROFS}\n" for path in paths))


@expect("ptmx_exhaustion")
def _ptmx_exhaustion(r: ExecutionRecord) -> None:
    assert_ok(r, f"{errno.ENOSPC}\n{MAX_PTYS}\n")


@expect("proc_reveals_the_slot")
def _proc_reveals_the_slot(r: ExecutionRecord) -> None:
    assert r.status == OK, r
    lines = r.stdout.splitlines()
    assert {line.split(":", 2)[2] for line in lines if line.count(":") >= 2} == {"/"}
    assert lines[-3:] == [
        f"refused /proc/1/oom_score_adj {errno.EACCES}",
        f"refused /proc/self/oom_score_adj {errno.EACCES}",
        f"refused prlimit {errno.EPERM}",
    ]


# --- runtimes (issue 13): the scientific stack inside the sandbox ------------------------------


@expect("runtime_preloaded_module_tampering")
def _runtime_preloaded_module_tampering(r: ExecutionRecord) -> None:
    # The next jobs' view of the modules is checked by its scenario.
    assert_ok(r, "tampered\n")
    assert r.runtime == "scientific"


@expect("runtime_matplotlib_cache_write")
def _runtime_matplotlib_cache_write(r: ExecutionRecord) -> None:
    assert_ok(r, "written True\n")


@expect("runtime_site_packages_read_write")
def _runtime_site_packages_read_write(r: ExecutionRecord) -> None:
    assert_ok(r)
    lines = r.stdout.splitlines()
    assert lines[0] == "read True", r.stdout
    assert len(lines) == 4, r.stdout
    for line in lines[1:]:
        assert line in ("refused EROFS", "refused EACCES", "refused EPERM"), r.stdout


@expect("runtime_blas_thread_bomb")
def _runtime_blas_thread_bomb(r: ExecutionRecord) -> None:
    assert r.status in (OK, CRASHED, NONZERO_EXIT), r
    if r.status == OK:
        words = r.stdout.split()
        assert words[0] == "threads", r.stdout
        assert int(words[1]) <= r.limits["max_processes"], r.stdout
    assert r.cpu_time_s is not None
    assert r.cpu_time_s <= r.limits["cpu_time_s"] + 1.0


def _memory_limited(r: ExecutionRecord) -> None:
    assert r.status == MEMORY_LIMIT, r
    assert "ALLOCATED" not in r.stdout and "BUILT" not in r.stdout


for _name in ("runtime_numpy_memory_bomb", "runtime_numpy_touch_past_cap"):
    expect(_name)(_memory_limited)
expect("runtime_pandas_memory_bomb")(_memory_limited)


# --- artifacts (issue 13): what the collector reads, as root, of the job's out/ ----------------


def _artifacts(r: ExecutionRecord) -> dict[str, bytes]:
    return {artifact.path: artifact.content() for artifact in r.artifacts}


def _within_caps(r: ExecutionRecord) -> None:
    assert len(r.artifacts) <= MAX_ARTIFACTS
    assert sum(a.size_bytes for a in r.artifacts) <= MAX_ARTIFACT_BYTES
    assert [a.path for a in r.artifacts] == sorted(a.path for a in r.artifacts)
    for artifact in r.artifacts:
        assert artifact.size_bytes == len(artifact.content())


@expect("artifact_symlinks_out_of_out")
def _artifact_symlinks_out_of_out(r: ExecutionRecord) -> None:
    assert_ok(r, "planted\n")
    assert _artifacts(r) == {"out/real.txt": b"real"}
    assert not r.artifacts_truncated


@expect("artifact_hardlinks")
def _artifact_hardlinks(r: ExecutionRecord) -> None:
    assert_ok(r, "denied EXDEV\n")
    assert _artifacts(r) == {"out/own-link.txt": b"own"}


@expect("artifact_special_files")
def _artifact_special_files(r: ExecutionRecord) -> None:
    assert_ok(r, "mknod denied EPERM\nmknod denied EPERM\n")
    assert _artifacts(r) == {"out/file.bin": bytes([0, 1, 255])}
    assert r.artifacts[0].media_type == "application/octet-stream"


@expect("artifact_many_tiny_files")
def _artifact_many_tiny_files(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert r.stdout.endswith("made many True\n"), r.stdout
    assert [a.path for a in r.artifacts] == [f"out/f{n:07d}" for n in range(MAX_ARTIFACTS)]
    assert r.artifacts_truncated


@expect("artifact_hostile_names")
def _artifact_hostile_names(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert r.stdout.endswith("NUL refused\n"), r.stdout
    assert [a.path for a in r.artifacts] == [
        "out/...",
        "out/..txt",
        "out/dots..",
        "out/ok.txt",
        "out/space name.txt",
        "out/\u00fcn\u00ef.txt",
    ]
    assert r.artifacts_truncated  # the names with control characters or invalid UTF-8
    _within_caps(r)


@expect("artifact_growing_file")
def _artifact_growing_file(r: ExecutionRecord) -> None:
    assert_ok(r, "parent done\n")
    _within_caps(r)
    for artifact in r.artifacts:
        assert set(artifact.content()) <= {ord("x")}


@expect("artifact_fills_tmpfs")
def _artifact_fills_tmpfs(r: ExecutionRecord) -> None:
    assert_ok(r)
    assert r.stdout == "full No space left on device\nfiles True\n", r.stdout
    assert [a.path for a in r.artifacts] == ["out/big-00.bin"]
    assert r.artifacts[0].size_bytes == 8 * MIB
    assert r.artifacts_truncated
    _within_caps(r)


@expect("stream_one_byte_write_flood")
def _stream_one_byte_write_flood(r: ExecutionRecord) -> None:
    assert_killed(r, OUTPUT_LIMIT)
    assert r.stdout == "x" * CORPUS_LIMITS.max_output_bytes
    assert r.stdout_truncated and r.stderr == ""


@expect("stream_character_split_by_the_cap")
def _stream_character_split_by_the_cap(r: ExecutionRecord) -> None:
    # Written in one go, then the program exits: the cap is crossed by its last write, and the
    # verdict may find it gone already (killed or exited 0): output_limit either way.
    assert r.status == OUTPUT_LIMIT, r
    assert r.stdout == "a" * (CORPUS_LIMITS.max_output_bytes - 1)
    assert r.stdout_truncated


@expect("stream_both_pipes_interleaved")
def _stream_both_pipes_interleaved(r: ExecutionRecord) -> None:
    assert (r.status, r.exit_code) == (OK, 0), r
    assert (r.stdout, r.stderr) == ("o\n" * 100000, "e\n" * 100000)
