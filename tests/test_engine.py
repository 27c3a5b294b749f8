"""The sandbox engine's behaviour beyond the corpus: what a program gets, how it ends, its limits.

Programs run in the session's watched 2-slot pool (conftest.py), whose every record is checked
for invariants D and S; the isolation layers, the degraded mode without bubblewrap, and the
pure logic of verdicts and the seccomp filter come last.
"""

from __future__ import annotations

import ast
import errno
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from executors import (
    ISOLATION_LAYERS,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SandboxPool,
    SandboxUnavailableError,
)
from executors._sandbox._launch import RUNTIME_IN_SANDBOX
from executors._sandbox._seccomp import compile_filter
from executors._sandbox._verdict import JobFacts, KillReason, Verdict, decide
from executors._sandbox.zygote import MAX_PTYS
from tests.support.canary import Canary
from tests.support.interpreters import direct_mode_runtime, reachable_interpreter
from tests.support.limits import MIB
from tests.support.statuses import (
    CRASHED,
    INTERNAL_ERROR,
    MEMORY_LIMIT,
    NONZERO_EXIT,
    OK,
    OUTPUT_LIMIT,
    TIMEOUT,
)
from tests.support.watched_pool import ALLOWED_ENV, PoolFactory, WatchedPool

pytestmark = pytest.mark.sandbox

SANDBOX_UID = 1000


def assert_ok(record: ExecutionRecord, stdout: str) -> None:
    assert (record.status, record.exit_code, record.signal) == (OK, 0, None), record
    assert (record.stdout, record.stderr) == (stdout, "")


# --- what a program gets ---------------------------------------------------------------------


def test_stdin_is_delivered(sandbox: WatchedPool) -> None:
    code = (
        "import sys\na, b = map(int, input().split())\nprint(a + b)\nprint(repr(sys.stdin.read()))"
    )
    record = sandbox.run(code, stdin="3 4\nrest ✓\n")
    assert_ok(record, "7\n'rest ✓\\n'\n")


def test_large_stdin_is_delivered_whole(sandbox: WatchedPool) -> None:
    record = sandbox.run("import sys; print(len(sys.stdin.read()))", stdin="x" * 300_000)
    assert_ok(record, "300000\n")


def test_files_are_written_into_the_working_directory(sandbox: WatchedPool) -> None:
    code = (
        "import os, sys\n"
        "print(os.getcwd(), sorted(os.listdir('.')))\n"
        "print(open('data.txt').read(), open('sub/dir/more.txt').read())\n"
        "print(__name__, sys.argv)\n"
    )
    files = {"data.txt": "first ✓", "sub/dir/more.txt": "second"}
    record = sandbox.run(code, files=files)
    assert_ok(record, "/work ['data.txt', 'out', 'sub']\nfirst ✓ second\n__main__ ['main.py']\n")


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "a/./b"])
def test_file_paths_outside_the_working_directory_are_refused(
    sandbox: WatchedPool, path: str
) -> None:
    with pytest.raises(ValidationError, match="must be relative"):
        ExecutionRequest(code="print(1)", files={path: "x"}, limits=sandbox.limits)


# --- how a program ends ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("import sys; sys.exit(3)", 3),
        ("exit(4)", 4),
        ("import os; os._exit(5)", 5),
        ("raise SystemExit(7)", 7),
    ],
)
def test_exit_codes(sandbox: WatchedPool, code: str, exit_code: int) -> None:
    record = sandbox.run(code)
    assert (record.status, record.exit_code, record.signal) == (NONZERO_EXIT, exit_code, None)


@pytest.mark.parametrize("code", ["import sys; sys.exit(0)", "exit()", "raise SystemExit"])
def test_exit_zero_is_ok(sandbox: WatchedPool, code: str) -> None:
    assert_ok(sandbox.run(code), "")


def test_exit_with_a_message_prints_it_and_exits_1(sandbox: WatchedPool) -> None:
    record = sandbox.run("import sys; sys.exit('goodbye')")
    assert (record.status, record.exit_code, record.stderr) == (NONZERO_EXIT, 1, "goodbye\n")


def test_uncaught_exception_exits_1_with_the_programs_traceback(sandbox: WatchedPool) -> None:
    code = "x = 1\n\ndef f():\n    raise ValueError('boom')\n\nf()\n"
    record = sandbox.run(code)
    assert (record.status, record.exit_code, record.signal) == (NONZERO_EXIT, 1, None)
    assert record.stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "main.py", line 4, in f\n' in record.stderr
    assert "    raise ValueError('boom')\n" in record.stderr  # the source line
    assert record.stderr.endswith("ValueError: boom\n")
    assert "zygote" not in record.stderr  # no frame of the sandbox's own


def test_syntax_error_is_a_nonzero_exit(sandbox: WatchedPool) -> None:
    record = sandbox.run("print('fine')\ndef broken(:\n")
    assert (record.status, record.exit_code) == (NONZERO_EXIT, 1)
    assert 'File "main.py", line 2' in record.stderr
    assert "SyntaxError" in record.stderr
    assert record.stdout == ""


@pytest.mark.parametrize(
    ("code", "signum"),
    [
        ("import ctypes; ctypes.string_at(0)", signal.SIGSEGV),
        ("import os; os.abort()", signal.SIGABRT),
    ],
)
def test_a_program_killed_by_its_own_signal_crashed(
    sandbox: WatchedPool, code: str, signum: int
) -> None:
    record = sandbox.run(code)
    assert (record.status, record.exit_code, record.signal) == (CRASHED, None, signum)


# --- limits ----------------------------------------------------------------------------------


def test_touching_more_memory_than_the_cap_is_memory_limit(sandbox: WatchedPool) -> None:
    record = sandbox.run("b = bytearray(300 << 20)\nprint(len(b))")  # cap: 256 MiB
    assert record.status == MEMORY_LIMIT, record
    assert record.stdout == ""


@pytest.mark.parametrize(
    "handler",
    ["raise", "raise RuntimeError('no memory') from None", "raise RuntimeError('no memory')"],
)
def test_a_memory_error_reraised_is_memory_limit(sandbox: WatchedPool, handler: str) -> None:
    # 8 GiB: refused at once (the address-space cap), so the program sees a MemoryError.
    code = f"try:\n    b = bytearray(8 << 30)\nexcept MemoryError:\n    {handler}\n"
    record = sandbox.run(code)
    assert (record.status, record.exit_code) == (MEMORY_LIMIT, 1), record
    assert "MemoryError" in record.stderr or "no memory" in record.stderr


def test_a_memory_error_handled_is_ok(sandbox: WatchedPool) -> None:
    code = "try:\n    b = bytearray(8 << 30)\nexcept MemoryError:\n    print('recovered')\n"
    assert_ok(sandbox.run(code), "recovered\n")


@pytest.mark.parametrize("forged", [b"Iforged setup failure", b"SI", b"\x00" * 64])
def test_the_status_pipe_cannot_make_the_service_look_at_fault(
    sandbox: WatchedPool, forged: bytes
) -> None:
    # The program inherits the harness's status pipe (fd 3): whatever it writes there, its
    # record says what it did, never internal_error (API.md: "never caused by the code").
    record = sandbox.run(f"import os\nos.write(3, {forged!r})\nprint('done')")
    assert_ok(record, "done\n")
    failed = sandbox.run(f"import os\nos.write(3, {forged!r})\nraise SystemExit(2)")
    assert (failed.status, failed.exit_code) == (NONZERO_EXIT, 2), failed
    # The one label it can forge is memory_limit for its own failure (README "Sandbox").
    mislabelled = sandbox.run("import os\nos.write(3, b'M')\nraise SystemExit(2)")
    assert mislabelled.status in (NONZERO_EXIT, MEMORY_LIMIT), mislabelled


def test_a_busy_loop_is_stopped_by_the_cpu_limit_before_the_wall(sandbox: WatchedPool) -> None:
    limits = sandbox.limits_with(cpu_time_s=1, wall_timeout_s=10)
    record = sandbox.run("while True:\n    pass\n", limits=limits)
    assert record.status == TIMEOUT, record
    assert record.cpu_time_s is not None and record.cpu_time_s >= 0.9
    assert record.wall_time_s is not None and record.wall_time_s < 8  # well before the wall


def test_the_cpu_limit_is_for_the_whole_job(sandbox: WatchedPool) -> None:
    limits = sandbox.limits_with(cpu_time_s=1, wall_timeout_s=10)
    record = sandbox.run("import os\nos.fork()\nwhile True:\n    pass\n", limits=limits)
    assert record.status == TIMEOUT, record
    assert record.wall_time_s is not None and record.wall_time_s < 8


def test_the_cpu_limit_counts_the_cpu_of_children_that_came_and_went(
    sandbox: WatchedPool,
) -> None:
    """Five children of 0.4 s CPU each: none is over 1 s on its own, the job is."""
    code = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        end = time.process_time() + 0.4\n"
        "        while time.process_time() < end:\n"
        "            pass\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "print('survived')\n"
    )
    record = sandbox.run(code, limits=sandbox.limits_with(cpu_time_s=1, wall_timeout_s=10))
    assert record.status == TIMEOUT, record
    assert record.stdout == ""


def test_the_wall_limit_stops_a_sleeper(sandbox: WatchedPool) -> None:
    limits = sandbox.limits_with(wall_timeout_s=1)
    record = sandbox.run("import time; time.sleep(60)", limits=limits)
    assert (record.status, record.signal) == (TIMEOUT, signal.SIGKILL)


def test_output_over_the_cap_is_cut_to_the_cap(sandbox: WatchedPool) -> None:
    record = sandbox.run("import sys\nsys.stdout.write('a' * (2 << 20))")  # ASCII: 1 byte each
    assert (record.status, record.signal) == (OUTPUT_LIMIT, signal.SIGKILL)
    assert record.stdout == "a" * MIB
    assert record.stdout_truncated and not record.stderr_truncated


def test_stderr_over_the_cap_is_cut_to_the_cap(sandbox: WatchedPool) -> None:
    record = sandbox.run("import sys\nprint('fine')\nsys.stderr.write('e' * (3 << 20))")
    assert record.status == OUTPUT_LIMIT
    assert (record.stdout, record.stderr) == ("fine\n", "e" * MIB)
    assert record.stderr_truncated and not record.stdout_truncated


def test_output_of_exactly_the_cap_is_ok(sandbox: WatchedPool) -> None:
    record = sandbox.run("print('a' * ((1 << 20) - 1))")
    assert_ok(record, "a" * (MIB - 1) + "\n")
    assert not record.stdout_truncated


def test_stored_output_stays_within_the_cap_even_when_it_is_not_utf8(
    sandbox_pool: SandboxPool, sandbox: WatchedPool
) -> None:
    request = sandbox.request("import sys\nsys.stdout.buffer.write(b'\\xff' * (2 << 20))")
    record = sandbox_pool.run(request)  # not sandbox.run: that would check D itself
    assert record.status == OUTPUT_LIMIT and record.stdout_truncated
    assert len(record.stdout.encode("utf-8")) <= MIB


def test_a_fork_bomb_under_max_processes_ends_and_leaves_nothing(sandbox: WatchedPool) -> None:
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    with sandbox.watch():  # P: no process of it survives
        record = sandbox.run(code, limits=sandbox.limits_with(max_processes=16, wall_timeout_s=2))
    assert record.status in (OK, NONZERO_EXIT, TIMEOUT), record


def test_max_processes_caps_the_tasks_of_the_job(sandbox: WatchedPool) -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "while n < 100:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(10)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    with sandbox.watch():
        record = sandbox.run(code, limits=sandbox.limits_with(max_processes=16))
    assert record.status == OK, record
    assert 0 < int(record.stdout) < 16  # the program itself is one of the 16


# --- what the record tells -------------------------------------------------------------------


def test_usage_is_measured(sandbox: WatchedPool) -> None:
    code = (
        "import time\n"
        "b = bytearray(32 << 20)\n"
        "end = time.process_time() + 0.2\n"
        "while time.process_time() < end:\n"
        "    pass\n"
    )
    record = sandbox.run(code)
    assert record.status == OK
    assert record.wall_time_s is not None and record.wall_time_s > 0
    assert record.cpu_time_s is not None and record.cpu_time_s > 0
    assert record.peak_memory_bytes is not None and record.peak_memory_bytes >= 32 * MIB


def test_times_are_ordered(sandbox: WatchedPool) -> None:
    record = sandbox.run("print(1)")
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    for moment in (record.created_at, record.started_at, record.finished_at):
        offset = moment.utcoffset()
        assert offset is not None and offset.total_seconds() == 0  # UTC


def test_the_record_echoes_the_effective_limits_in_api_units(sandbox: WatchedPool) -> None:
    limits = sandbox.limits_with(wall_timeout_s=2.5, memory_bytes=128 * MIB, max_processes=10)
    record = sandbox.run("print(1)", limits=limits)
    assert record.limits == {
        "wall_timeout_s": 2.5,
        "cpu_time_s": 5.0,
        "memory_mb": 128,
        "max_output_bytes": MIB,
        "max_processes": 10,
        "max_file_bytes": 16 * MIB,
    }


# --- what a program can see and do -----------------------------------------------------------


def test_a_program_sees_only_its_own_processes(sandbox: WatchedPool) -> None:
    neighbour = "import time; print('up', flush=True); time.sleep(2)"
    looker = (
        "import os, subprocess\n"
        "child = subprocess.Popen(['sleep', '5'])\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(pids == sorted({1, os.getpid(), child.pid}), pids, os.getpid(), child.pid)\n"
        "child.kill()\n"
    )
    neighbour_record, looker_record = sandbox.run_all(
        [sandbox.request(neighbour), sandbox.request(looker)]
    )
    assert neighbour_record.status == OK
    assert looker_record.status == OK, looker_record
    assert looker_record.stdout.startswith("True [1, 2, "), looker_record.stdout


def test_a_job_has_ptys_of_its_own_and_only_a_few(sandbox: WatchedPool) -> None:
    """The review opened 100 ptys from one job and raised the host's kernel.pty.nr by 100."""
    code = (
        "import os\n"
        "held = []\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        held.append(os.openpty())\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
        "print(len(held))\n"
    )
    before = int(Path("/proc/sys/kernel/pty/nr").read_text())
    record = sandbox.run(code)
    assert record.status == OK, record
    assert record.stdout == f"{errno.ENOSPC}\n{MAX_PTYS}\n"
    assert int(Path("/proc/sys/kernel/pty/nr").read_text()) <= before + MAX_PTYS


def test_a_job_sees_neither_its_slots_cgroup_nor_can_it_reach_its_init(
    sandbox: WatchedPool,
) -> None:
    code = (
        "import resource\n"
        "print(sorted({line.split(':', 2)[2].strip() for line in open('/proc/self/cgroup')}))\n"
        "for path, value in (('/proc/1/oom_score_adj', '-1000'), ('/proc/self/oom_score_adj', '-1000')):\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write(value)\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
        "try:\n"
        "    resource.prlimit(1, resource.RLIMIT_NOFILE, (1, 1))\n"
        "    print('limited init')\n"
        "except OSError as exc:\n"
        "    print('refused prlimit', exc.errno)\n"
        "print(resource.prlimit(0, resource.RLIMIT_NOFILE)[0] > 0)\n"
    )
    record = sandbox.run(code)
    assert record.status == OK, record
    assert record.stdout.splitlines() == [
        "['/']",
        f"refused /proc/1/oom_score_adj {errno.EACCES}",
        f"refused /proc/self/oom_score_adj {errno.EACCES}",
        f"refused prlimit {errno.EPERM}",
        "True",  # its own limits stay readable
    ]


def test_a_program_runs_unprivileged(sandbox: WatchedPool) -> None:
    code = (
        "import os\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())\n"
        "fields = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "for name in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'NoNewPrivs', 'Seccomp'):\n"
        "    print(name, fields[name].strip())\n"
    )
    record = sandbox.run(code)
    assert record.status == OK
    uids, *status = record.stdout.splitlines()
    ids, groups = uids.split(" [")
    assert ids == f"{SANDBOX_UID} {SANDBOX_UID} {SANDBOX_UID} {SANDBOX_UID}"
    assert groups in ("]", f"{SANDBOX_UID}]")  # no supplementary group but its own
    fields = dict(line.split() for line in status)
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2")  # 2: a filter


def test_the_environment_is_the_allowlist(sandbox: WatchedPool) -> None:
    record = sandbox.run("import os; print(sorted(os.environ.items()))")
    env = dict(ast.literal_eval(record.stdout))
    assert set(env) <= ALLOWED_ENV, set(env) - ALLOWED_ENV
    assert (env["HOME"], env["TMPDIR"]) == ("/work", "/tmp")


def test_the_services_secrets_are_out_of_reach(sandbox: WatchedPool, canary: Canary) -> None:
    """Whatever a program can read of processes and the service's home: no canary in it."""
    code = (
        "import os\n"
        "for pid in sorted(p for p in os.listdir('/proc') if p.isdigit()):\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(pid, name, open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "        except OSError as e:\n"
        "            print(pid, name, e.strerror)\n"
        f"for path in ({str(canary.home_file)!r}, {canary.home_file.name!r}):\n"
        "    try:\n"
        "        print(path, open(path).read())\n"
        "    except OSError as e:\n"
        "        print(path, e.strerror)\n"
    )
    record = sandbox.run(code)  # the watched pool checks every record for the canary (S)
    assert record.status == OK, record
    assert record.stdout.endswith(
        f"{canary.home_file} No such file or directory\n"
        f"{canary.home_file.name} No such file or directory\n"
    )
    assert canary.token not in record.stdout


def test_the_services_packages_are_not_importable(sandbox: WatchedPool) -> None:
    record = sandbox.run("import ray")
    assert (record.status, record.exit_code) == (NONZERO_EXIT, 1)
    assert "ModuleNotFoundError: No module named 'ray'" in record.stderr
    paths = "import sys; print([p for p in sys.path if 'site-packages' in p])"
    assert_ok(sandbox.run(paths, runtime="minimal"), "[]\n")
    # The scientific runtime's own packages, mounted read-only: none of the service's.
    assert_ok(sandbox.run(paths, runtime="scientific"), f"['{RUNTIME_IN_SANDBOX}/site-packages']\n")
    record = sandbox.run("import ray", runtime="scientific")
    assert "ModuleNotFoundError: No module named 'ray'" in record.stderr


def test_the_hosts_files_are_not_visible(sandbox: WatchedPool, canary: Canary) -> None:
    code = (
        "import os, sys\n"
        f"for path in ('/etc/passwd', '/etc/shadow', '/home', {str(canary.home_file)!r}):\n"
        "    print(path, os.path.exists(path))\n"
        "print(sys.base_prefix, os.listdir('/root') if os.path.isdir('/root') else [])\n"
    )
    record = sandbox.run(code)
    assert record.status == OK
    *paths, last = record.stdout.splitlines()
    assert all(line.endswith(" False") for line in paths), paths
    prefix, root_entries = last.split(" ", 1)
    # /root holds, at most, the way to the interpreter (here a pyenv install under /root).
    for entry in ast.literal_eval(root_entries):
        assert prefix.startswith(f"/root/{entry}/"), entry


def test_the_system_is_read_only(sandbox: WatchedPool) -> None:
    code = (
        "import os\n"
        "for path in ('/usr/evil', '/usr/lib/evil', '/etc/evil', '/evil', '/opt/evil'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print(path, 'WRITTEN')\n"
        "    except OSError as e:\n"
        "        print(path, e.errno)\n"
    )
    record = sandbox.run(code)
    assert record.status == OK
    errors = dict(line.split() for line in record.stdout.splitlines())
    assert "WRITTEN" not in errors.values()
    assert errors["/usr/evil"] == errors["/usr/lib/evil"] == str(errno.EROFS)


def test_only_the_jobs_own_directories_are_writable(sandbox: WatchedPool) -> None:
    code = (
        "import os\n"
        "mounts = [line.split() for line in open('/proc/self/mountinfo')]\n"
        "read_only = {m[4] for m in mounts if 'ro' in m[5].split(',')}\n"
        "writable_mounts = {m[4] for m in mounts} - read_only\n"
        "def holds_writable(path):\n"
        "    return any(w.startswith(path.rstrip('/') + '/') for w in writable_mounts)\n"
        "writable = []\n"
        "for root, dirs, _ in os.walk('/'):\n"
        "    skip = root in read_only and not holds_writable(root)\n"
        "    if skip or root.startswith(('/proc', '/sys')):\n"
        "        dirs[:] = []\n"
        "        continue\n"
        "    try:\n"
        "        os.close(os.open(os.path.join(root, '.w'), os.O_CREAT | os.O_WRONLY, 0o600))\n"
        "        os.unlink(os.path.join(root, '.w'))\n"
        "        writable.append(root)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(sorted(writable))\n"
    )
    assert_ok(sandbox.run(code), "['/dev/shm', '/tmp', '/work', '/work/out']\n")


# --- nothing carries over from one job to the next -------------------------------------------


@pytest.mark.parametrize(
    ("first", "then", "expected"),
    [
        pytest.param(
            "import os\nfor d in ('/work', '/tmp', '/dev/shm'):\n"
            "    open(os.path.join(d, 'left.txt'), 'w').write('x' * 1000)\n"
            "    os.makedirs(os.path.join(d, 'sub/dir'))\n",
            "import os; print(os.listdir('/work'), os.listdir('/tmp'), os.listdir('/dev/shm'))",
            "['out'] [] []\n",
            id="files",
        ),
        pytest.param(
            "import json, sys; json.X = 1; sys.modules['planted'] = json",
            "import json, sys; print(hasattr(json, 'X'), 'planted' in sys.modules)",
            "False False\n",
            id="module-state",
        ),
        pytest.param(
            "import subprocess; subprocess.Popen(['sleep', '60'], start_new_session=True)",
            "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
            "[1, 2]\n",
            id="background-process",
        ),
        pytest.param(
            "import os; os.environ['PLANTED'] = '1'; os.putenv('PLANTED', '1')",
            "import os; print('PLANTED' in os.environ)",
            "False\n",
            id="environment",
        ),
    ],
)
def test_nothing_carries_over_to_the_next_job(
    sandbox: WatchedPool, first: str, then: str, expected: str
) -> None:
    with sandbox.watch():
        for record in sandbox.run_on_every_slot(first):
            assert record.status == OK, record
        for record in sandbox.run_on_every_slot(then):
            assert_ok(record, expected)


# --- isolation layers ------------------------------------------------------------------------


def test_every_isolation_layer_is_in_force(sandbox_pool: SandboxPool) -> None:
    if os.geteuid() != 0:
        pytest.skip("every layer needs root (slot uids, cgroups); this run is not root")
    if shutil.which("bwrap") is None:
        pytest.skip("every layer needs bubblewrap (bwrap), which is not installed")
    report = sandbox_pool.isolation
    assert report is not None
    assert report.missing == [], report.errors
    assert all(report.layers[layer] for layer in ISOLATION_LAYERS)
    assert report.complete and report.summary()["ok"]
    assert report.mode == "bubblewrap"
    assert report.sandbox_uid == SANDBOX_UID
    assert report.host_uid == sandbox_pool.config.slot_uid_base != 0
    assert report.cgroup_version in (1, 2)


@pytest.fixture(scope="module")
def interpreter_for_direct_mode() -> str:
    path = reachable_interpreter()
    if path is None:
        pytest.skip("no Python >= 3.11 that the slots' uids can run without bubblewrap")
    return path


def test_without_bubblewrap_a_pool_requiring_full_isolation_refuses_to_start(
    pool_factory: PoolFactory, interpreter_for_direct_mode: str
) -> None:
    config = pool_factory.config(
        require_full_isolation=True,
        bwrap_path="/nonexistent/bwrap",
        python_executable=interpreter_for_direct_mode,
    )
    with pytest.raises(SandboxUnavailableError) as refused:
        pool_factory.start(config, slots=1)
    assert {"bubblewrap", "read_only_root"} <= set(refused.value.missing)
    assert "bubblewrap" in str(refused.value)


def test_without_bubblewrap_full_isolation_is_refused_whatever_the_interpreter(
    pool_factory: PoolFactory,
) -> None:
    config = pool_factory.config(require_full_isolation=True, bwrap_path="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailableError) as refused:
        pool_factory.start(config, slots=1)
    assert "bubblewrap" in refused.value.missing


@pytest.fixture(scope="module")
def degraded_pool(
    pool_factory: PoolFactory, interpreter_for_direct_mode: str
) -> Iterator[SandboxPool]:
    """A pool on a host without bubblewrap, allowed to run degraded."""
    config = pool_factory.config(
        bwrap_path="/nonexistent/bwrap",
        python_executable=interpreter_for_direct_mode,
        default_runtime=direct_mode_runtime(interpreter_for_direct_mode),
    )
    pool = pool_factory.start(config, slots=1)
    yield pool
    pool.close()


def test_without_bubblewrap_the_pool_reports_what_is_missing(degraded_pool: SandboxPool) -> None:
    report = degraded_pool.isolation
    assert report is not None
    assert report.mode == "direct"
    assert {"bubblewrap", "read_only_root"} <= set(report.missing)
    assert not report.complete and not report.summary()["ok"]


def test_without_bubblewrap_the_pool_still_runs_programs(
    degraded_pool: SandboxPool, corpus_limits: Limits
) -> None:
    record = degraded_pool.run(ExecutionRequest(code="print(1)", limits=corpus_limits))
    assert (record.status, record.stdout) == (OK, "1\n")


# --- verdicts: from what was observed to a status (pure logic) -------------------------------


def exited(code: int) -> int:
    return code << 8


def facts(**changes: object) -> JobFacts:
    fields: dict[str, object] = {
        "wait_status": exited(0),
        "killed_for": None,
        "oom_kills": 0,
        "memory_error": False,
        "cpu_time_s": 0.1,
        "cpu_limit_s": 5.0,
        **changes,
    }
    return JobFacts(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (KillReason.WALL_TIMEOUT, TIMEOUT),
        (KillReason.CPU_TIMEOUT, TIMEOUT),
        (KillReason.OUTPUT_LIMIT, OUTPUT_LIMIT),
        (KillReason.SHUTDOWN, INTERNAL_ERROR),
        (KillReason.CANCELLED, INTERNAL_ERROR),
    ],
)
def test_verdict_of_a_kill_by_the_host(reason: KillReason, status: ExecutionStatus) -> None:
    # What the host did comes first, whatever the program's own end looked like.
    for wait_status in (None, exited(0), signal.SIGSEGV):
        verdict = decide(facts(wait_status=wait_status, killed_for=reason, oom_kills=1))
        assert verdict == Verdict(status, None, signal.SIGKILL, reason.value)


def test_verdict_of_an_internal_failure() -> None:
    verdict = decide(facts(wait_status=None, internal="init: mount failed"))
    assert verdict == Verdict(INTERNAL_ERROR, None, None, "init: mount failed")


def test_verdict_without_a_report_after_an_oom_kill_is_memory_limit() -> None:
    assert decide(facts(wait_status=None, oom_kills=1)) == Verdict(
        MEMORY_LIMIT, None, signal.SIGKILL
    )


def test_verdict_without_a_report_is_internal_error() -> None:
    verdict = decide(facts(wait_status=None))
    assert (verdict.status, verdict.exit_code, verdict.signal) == (INTERNAL_ERROR, None, None)
    assert verdict.detail


def test_verdict_of_a_sigkill_with_oom_kills_is_memory_limit() -> None:
    verdict = decide(facts(wait_status=signal.SIGKILL, oom_kills=1))
    assert verdict == Verdict(MEMORY_LIMIT, None, signal.SIGKILL)


@pytest.mark.parametrize(
    ("wait_status", "cpu_time_s"), [(signal.SIGXCPU, 0.5), (signal.SIGKILL, 5.0)]
)
def test_verdict_of_the_cpu_rlimit_is_timeout(wait_status: int, cpu_time_s: float) -> None:
    # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one (CPU over the limit).
    verdict = decide(facts(wait_status=wait_status, cpu_time_s=cpu_time_s))
    assert verdict == Verdict(TIMEOUT, None, wait_status)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
def test_verdict_of_any_other_signal_is_crashed(signum: int) -> None:
    assert decide(facts(wait_status=signum)) == Verdict(CRASHED, None, signum)
    core_dumped = signum | 0x80
    assert decide(facts(wait_status=core_dumped)) == Verdict(CRASHED, None, signum)


def test_verdict_of_exit_0_is_ok_even_after_a_memory_error() -> None:
    assert decide(facts()) == Verdict(OK, 0, None)
    assert decide(facts(memory_error=True, oom_kills=1)) == Verdict(OK, 0, None)


@pytest.mark.parametrize("changes", [{"memory_error": True}, {"oom_kills": 2}])
def test_verdict_of_a_nonzero_exit_after_a_memory_error_is_memory_limit(
    changes: dict[str, object],
) -> None:
    assert decide(facts(wait_status=exited(1), **changes)) == Verdict(MEMORY_LIMIT, 1, None)


def test_verdict_of_a_nonzero_exit_is_nonzero_exit() -> None:
    assert decide(facts(wait_status=exited(3))) == Verdict(NONZERO_EXIT, 3, None)
    assert decide(facts(wait_status=exited(255))) == Verdict(NONZERO_EXIT, 255, None)


# --- the seccomp filter ----------------------------------------------------------------------


def test_the_seccomp_filter_compiles_to_classic_bpf() -> None:
    bpf = compile_filter()
    assert bpf and len(bpf) % 8 == 0  # struct sock_filter: 8 bytes per instruction
    assert len(bpf) // 8 <= 4096  # BPF_MAXINSNS
    assert compile_filter() == bpf  # deterministic
