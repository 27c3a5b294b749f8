"""Sessions in the engine (no Ray): a :class:`SessionHost` keeps live interpreters whose state
stays from one call to the next, each in a sandbox and cgroup of its own, and ends them (their
processes, cgroup and tmpfs with them) for every reason API.md names."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors import (
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SandboxConfig,
    SessionBusyError,
    SessionEndedError,
    SessionHost,
    SessionSpec,
    SessionState,
    SessionStatus,
)
from tests.support.limits import MIB

LIMITS = Limits(
    wall_timeout_s=3.0,
    cpu_time_s=3.0,
    memory_bytes=256 * MIB,
    max_output_bytes=64 * 1024,
    max_processes=16,
    max_file_bytes=8 * MIB,
)
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def host() -> Iterator[SessionHost]:
    host = SessionHost(SandboxConfig(default_runtime="minimal"), name="engine-tests", capacity=64)
    host.start()
    yield host
    host.close()
    assert not host.interpreter_pids()


def new_session(host: SessionHost, **fields: object) -> uuid.UUID:
    spec = {"runtime": "minimal", "limits": LIMITS, "idle_timeout_s": 60.0, "ttl_s": 600.0}
    return host.create(SessionSpec.model_validate({**spec, **fields})).id


def run(
    host: SessionHost, session: uuid.UUID, code: str, **limits: float
) -> tuple[ExecutionRecord, SessionState]:
    request = ExecutionRequest(
        code=code,
        limits=LIMITS.model_copy(update=limits),
        runtime="minimal",
    )
    return host.call(session, request)


def result_of(host: SessionHost, session: uuid.UUID, code: str) -> str | None:
    record, _ = run(host, session, code)
    assert record.status == ExecutionStatus.OK, record.stderr
    return record.result


def gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.02)
    return False


def test_state_stays_from_one_call_to_the_next(host: SessionHost) -> None:
    session = new_session(host)
    assert result_of(host, session, "import math\nx = 41\ndef twice(v):\n    return 2 * v") is None
    assert result_of(host, session, "x + 1") == "42"
    assert result_of(host, session, "twice(x)") == "82"
    assert result_of(host, session, "math.floor(2.5)") == "2"
    assert result_of(host, session, "open('data.txt', 'w').write('kept')") == "4"
    assert result_of(host, session, "open('data.txt').read()") == "'kept'"
    host.end(session, EndReason.DELETED)


def test_the_result_is_the_repr_of_a_final_expression_only(host: SessionHost) -> None:
    session = new_session(host)
    assert result_of(host, session, "None") is None
    assert result_of(host, session, "y = 3") is None
    assert result_of(host, session, "'a' * 3") == "'aaa'"
    assert result_of(host, session, "print('out')\n[y] * 2") == "[3, 3]"
    record, _ = run(host, session, "'x' * 100_000")
    assert record.result is not None and len(record.result.encode()) <= LIMITS.max_output_bytes
    record, _ = run(host, session, "import sys\nprint('to stdout')\nsys.stdin.read()")
    assert record.stdout == "to stdout\n"
    host.end(session, EndReason.DELETED)


def test_stdin_and_files_are_per_call(host: SessionHost) -> None:
    session = new_session(host)
    request = ExecutionRequest(
        code="import sys\nsys.stdin.read() + open('in.txt').read()",
        stdin="from stdin, ",
        files={"in.txt": "from a file"},
        limits=LIMITS,
        runtime="minimal",
    )
    record, _ = host.call(session, request)
    assert record.result == "'from stdin, from a file'"
    second = request.model_copy(update={"stdin": "", "files": {"in.txt": b"replaced"}})
    record, _ = host.call(session, second)
    assert record.result == "'replaced'"
    host.end(session, EndReason.DELETED)


def test_an_exception_ends_the_call_not_the_session(host: SessionHost) -> None:
    session = new_session(host)
    record, state = run(host, session, "v = 1\n1 / 0")
    assert record.status == ExecutionStatus.NONZERO_EXIT and record.exit_code == 1
    assert "ZeroDivisionError" in record.stderr and "zygote" not in record.stderr
    assert state.status == SessionStatus.ACTIVE
    assert result_of(host, session, "v") == "1"
    record, _ = run(host, session, "def broken(:\n    pass")
    assert record.status == ExecutionStatus.NONZERO_EXIT and "SyntaxError" in record.stderr
    host.end(session, EndReason.DELETED)


def test_a_call_past_its_time_is_interrupted_and_the_session_goes_on(host: SessionHost) -> None:
    session = new_session(host)
    result_of(host, session, "kept = 'yes'")
    record, state = run(host, session, "while True:\n    pass", wall_timeout_s=0.5)
    assert record.status == ExecutionStatus.TIMEOUT
    assert "KeyboardInterrupt" in record.stderr
    assert state.status == SessionStatus.ACTIVE
    assert result_of(host, session, "kept") == "'yes'"
    record, state = run(host, session, "n = 0\nwhile True:\n    n += 1", cpu_time_s=0.3)
    assert record.status == ExecutionStatus.TIMEOUT and state.status == SessionStatus.ACTIVE
    host.end(session, EndReason.DELETED)


IGNORING_THE_INTERRUPT = {
    "a loop catching BaseException": (
        "import time\nwhile True:\n    try:\n        time.sleep(5)\n    except BaseException:\n"
        "        pass"
    ),
    "C code that never looks at signals": "sum(range(10 ** 13))",
    "SIGINT blocked": (
        "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "time.sleep(30)"
    ),
}


@pytest.mark.parametrize("code", IGNORING_THE_INTERRUPT.values(), ids=IGNORING_THE_INTERRUPT)
def test_a_call_that_ignores_the_interrupt_ends_the_session(host: SessionHost, code: str) -> None:
    session = new_session(host)
    pid = host.interpreter_pids()[session]
    started = time.monotonic()
    record, state = run(host, session, code, wall_timeout_s=0.5)
    assert time.monotonic() - started < 0.5 + 1.0 + 2.0  # the limit, the grace second, a margin
    assert record.status == ExecutionStatus.TIMEOUT
    assert (state.status, state.terminated_reason) == (SessionStatus.TERMINATED, EndReason.TIMEOUT)
    assert gone(pid)
    with pytest.raises(SessionEndedError) as ended:
        run(host, session, "1")
    assert ended.value.reason == "timeout"


def test_the_memory_cap_ends_the_session(host: SessionHost) -> None:
    session = new_session(host)
    record, state = run(host, session, "hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))")
    assert record.status == ExecutionStatus.MEMORY_LIMIT
    assert state.terminated_reason == EndReason.MEMORY_LIMIT
    if ROOT:  # the cgroup holds the session's whole memory, not one call's
        session = new_session(host)
        result_of(host, session, "first = bytearray(150 << 20)")
        record, state = run(host, session, "second = bytearray(150 << 20)")
        assert record.status == ExecutionStatus.MEMORY_LIMIT
        assert state.terminated_reason == EndReason.MEMORY_LIMIT


@pytest.mark.parametrize(
    ("code", "status", "exit_code"),
    [
        ("import sys\nsys.exit()", ExecutionStatus.OK, 0),
        ("raise SystemExit(3)", ExecutionStatus.NONZERO_EXIT, 3),
        ("import os\nos._exit(4)", ExecutionStatus.NONZERO_EXIT, 4),
    ],
)
def test_ending_the_interpreter_ends_the_session(
    host: SessionHost, code: str, status: ExecutionStatus, exit_code: int
) -> None:
    session = new_session(host)
    record, state = run(host, session, code)
    assert (record.status, record.exit_code) == (status, exit_code)
    assert (state.status, state.terminated_reason) == (SessionStatus.TERMINATED, EndReason.EXITED)


def test_a_crash_ends_the_session_as_crashed(host: SessionHost) -> None:
    session = new_session(host)
    record, state = run(host, session, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert record.status == ExecutionStatus.CRASHED and record.signal == 11
    assert state.terminated_reason == EndReason.CRASHED


def test_one_call_at_a_time(host: SessionHost) -> None:
    import threading

    session = new_session(host)
    slow = threading.Thread(target=run, args=(host, session, "import time\ntime.sleep(1)"))
    slow.start()
    time.sleep(0.3)
    with pytest.raises(SessionBusyError):
        run(host, session, "1")
    slow.join()
    assert result_of(host, session, "1 + 1") == "2"
    host.end(session, EndReason.DELETED)


def test_deleting_kills_at_once_even_mid_call(host: SessionHost) -> None:
    import threading

    session = new_session(host)
    pid = host.interpreter_pids()[session]
    records: list[ExecutionRecord] = []
    call = threading.Thread(
        target=lambda: records.append(run(host, session, "import time\ntime.sleep(30)")[0])
    )
    call.start()
    time.sleep(0.3)
    started = time.monotonic()
    state = host.end(session, EndReason.DELETED)
    call.join(timeout=5)
    assert time.monotonic() - started < 3
    assert state.terminated_reason == EndReason.DELETED
    assert records and records[0].status == ExecutionStatus.INTERNAL_ERROR
    assert gone(pid)
    assert host.end(session, EndReason.IDLE).terminated_reason == EndReason.DELETED  # idempotent


def test_idle_and_expired_sessions_are_reaped_without_leftovers(host: SessionHost) -> None:
    idle = new_session(host, idle_timeout_s=0.5)
    expiring = new_session(host, ttl_s=1.0)
    pids = host.interpreter_pids()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (idle in pids or expiring in pids):
        time.sleep(0.1)
        pids = host.interpreter_pids()
    states = host.states([idle, expiring])
    assert states[idle].terminated_reason == EndReason.IDLE
    assert states[expiring].terminated_reason == EndReason.TTL
    with pytest.raises(SessionEndedError, match="idle"):
        run(host, idle, "1")


def test_a_long_call_holds_off_the_idle_reaper(host: SessionHost) -> None:
    session = new_session(host, idle_timeout_s=0.5)
    record, state = run(host, session, "import time\ntime.sleep(1.2)\n'done'")
    assert record.result == "'done'" and state.status == SessionStatus.ACTIVE
    host.end(session, EndReason.DELETED)


def test_sessions_share_nothing(host: SessionHost) -> None:
    first, second = new_session(host), new_session(host)
    result_of(host, first, "secret = 'first'\nopen('mine.txt', 'w').write('first')")
    result_of(
        host,
        first,
        "import socket\nlistener = socket.socket(socket.AF_UNIX)\n"
        "listener.bind('\\0exec-agent-session-test')\nlistener.listen()",
    )
    assert result_of(host, second, "'secret' in globals()") == "False"
    assert result_of(host, second, "import os\nos.path.exists('mine.txt')") == "False"
    probe = (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
        "    s.connect('\\0exec-agent-session-test')\n    reached = True\n"
        "except OSError:\n    reached = False\nreached"
    )
    assert result_of(host, second, probe) == "False"
    assert result_of(
        host, second, "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
    ) in (
        "[1, 2]",
        "[1, 2, 3]",
    )
    for session in (first, second):
        host.end(session, EndReason.DELETED)


def test_each_call_gets_an_empty_out_directory(host: SessionHost) -> None:
    session = new_session(host)
    record, _ = run(host, session, "open('out/a.txt', 'w').write('one')")
    assert [a.path for a in record.artifacts] == ["out/a.txt"]
    record, _ = run(host, session, "import os\nos.listdir('out')")
    assert record.result == "[]" and record.artifacts == []
    host.end(session, EndReason.DELETED)


def test_output_past_its_cap_interrupts_the_call(host: SessionHost) -> None:
    session = new_session(host)
    record, state = run(host, session, "while True:\n    print('x' * 1000)")
    assert record.status == ExecutionStatus.OUTPUT_LIMIT and record.stdout_truncated
    assert state.status == SessionStatus.ACTIVE
    assert result_of(host, session, "2 * 21") == "42"
    host.end(session, EndReason.DELETED)


@pytest.mark.skipif(not ROOT, reason="session cgroups need root")
def test_ended_sessions_leave_no_cgroup_behind(host: SessionHost) -> None:
    session = new_session(host)
    result_of(host, session, "1")
    groups = list(Path("/sys/fs/cgroup").glob(f"*/**/session-{session.hex[:16]}"))
    assert groups
    host.end(session, EndReason.DELETED)
    assert not [g for g in groups if g.exists()]


def test_a_full_host_refuses_new_sessions() -> None:
    from executors import SessionPlacementError

    small = SessionHost(SandboxConfig(default_runtime="minimal"), name="small", capacity=1)
    small.start()
    try:
        new_session(small)
        with pytest.raises(SessionPlacementError, match="full"):
            new_session(small)
    finally:
        ended = small.close()
    assert [state.terminated_reason for state in ended] == [EndReason.SHUTDOWN]


def test_fifty_idle_sessions_live_side_by_side(record_property: pytest.RecordProperty) -> None:
    """50 idle sessions of the scientific runtime on this machine at once, each answering, their
    memory measured (reported, not asserted: the goal lives in ``scripts/bench sessions``)."""
    import psutil

    many = SessionHost(SandboxConfig(default_runtime="scientific"), name="fifty", capacity=50)
    many.start()
    try:
        spec = {"runtime": "scientific", "limits": LIMITS, "idle_timeout_s": 600.0, "ttl_s": 600.0}
        sessions = [many.create(SessionSpec.model_validate(spec)).id for _ in range(50)]
        for number, session in enumerate(sessions):
            request = ExecutionRequest(
                code=f"import pandas\nn = {number}\nn", limits=LIMITS, runtime="scientific"
            )
            record, state = many.call(session, request)
            assert (record.result, state.status) == (str(number), SessionStatus.ACTIVE)
        private = shared = 0
        for pid in many.interpreter_pids().values():
            init = psutil.Process(pid)
            for process in (init, *init.children(recursive=True)):
                info = process.memory_full_info()
                private, shared = private + info.uss, shared + info.pss
        record_property("private_mib_per_session", round(private / 50 / MIB, 2))
        record_property("pss_mib_per_session", round(shared / 50 / MIB, 2))
        print(f"50 idle sessions: {private / 50 / MIB:.2f} MiB private, "
              f"{shared / 50 / MIB:.2f} MiB PSS each")  # fmt: skip
        for number, session in enumerate(sessions):  # every one still holds its own state
            assert result_of_in(many, session, "n") == str(number)
    finally:
        ended = many.close()
    assert len(ended) == 50 and not many.interpreter_pids()


def result_of_in(host: SessionHost, session: uuid.UUID, code: str) -> str | None:
    record, _ = host.call(
        session, ExecutionRequest(code=code, limits=LIMITS, runtime=host.config.default_runtime)
    )
    return record.result


def test_figures_come_back_with_the_call_that_drew_them() -> None:
    """In the scientific runtime, pandas is already imported and every figure still open at a
    call's end is saved under that call's ``out/`` (numbered from 1 in each call)."""
    plots = SessionHost(SandboxConfig(default_runtime="scientific"), name="plots", capacity=1)
    plots.start()
    try:
        spec = {"runtime": "scientific", "limits": LIMITS, "idle_timeout_s": 60.0, "ttl_s": 60.0}
        session = plots.create(SessionSpec.model_validate(spec)).id
        draw = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nlen(plt.get_fignums())"
        for _ in range(2):
            record, _state = plots.call(
                session, ExecutionRequest(code=draw, limits=LIMITS, runtime="scientific")
            )
            assert record.result == "1"
            assert [a.path for a in record.artifacts] == ["out/figure-1.png"]
            assert record.artifacts[0].content().startswith(b"\x89PNG")
        record, _state = plots.call(
            session,
            ExecutionRequest(
                code="import sys\n'pandas' in sys.modules", limits=LIMITS, runtime="scientific"
            ),
        )
        assert record.result == "True" and record.artifacts == []
    finally:
        plots.close()


def test_output_past_its_cap_with_the_interrupt_ignored_ends_the_session(
    host: SessionHost,
) -> None:
    session = new_session(host)
    code = (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    print('x' * 1000)"
    )
    record, state = run(host, session, code)
    assert record.status == ExecutionStatus.OUTPUT_LIMIT and record.stdout_truncated
    assert state.terminated_reason == EndReason.OUTPUT_LIMIT


def test_a_session_that_takes_every_descriptor_ends_instead_of_failing_each_call(
    host: SessionHost,
) -> None:
    """The harness keeps descriptors below the hard limit for each call's own; a session that
    raises its limit and takes those too can take no call: it ends (``exited``), said so."""
    session = new_session(host)
    hog = (
        "import os, resource\n_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\nheld = []\ntry:\n"
        "    while True:\n        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError:\n    pass\nlen(held) > 0"
    )
    assert result_of(host, session, hog) == "True"
    record, state = run(host, session, "1 + 1")
    assert record.status == ExecutionStatus.NONZERO_EXIT
    assert "file descriptor" in record.stderr
    assert state.terminated_reason == EndReason.EXITED
