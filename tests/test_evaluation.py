"""Judged runs at the engine level: ``test_code`` and ``cases`` (API.md, "Evaluation").

Programs run in the session's watched 2-slot pool (conftest.py). The forging attempts each try
to get ``passed: true`` for a program that fails its test; they all get ``passed: false``,
whatever status they manage to give their run. Two residuals the harness documents
(``executors/_sandbox/zygote.py``, ``_arm_proof``) are pinned as strict expected failures: a
program written against the harness that runs its own code inside the proof's hook, and a test
that trusts ``==`` on what the program returns.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING

import pytest

from executors import ExecutionRecord, ExecutionRequest, Limits, SandboxPool
from executors._evaluation import outputs_match
from tests.conftest import CRASHED, INTERNAL_ERROR, MEMORY_LIMIT, NONZERO_EXIT, OK, TIMEOUT

if TYPE_CHECKING:
    from tests.conftest import WatchedPool

pytestmark = pytest.mark.sandbox

HUMANEVAL_CODE = """\
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
"""
HUMANEVAL_TEST = """\
METADATA = {"author": "jt", "dataset": "test"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True

check(has_close_elements)
"""
WRONG_ADD = "def add(a, b):\n    return a - b\n"
RIGHT_ADD = "def add(a, b):\n    return a + b\n"
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n\ncheck(add)\n"
REFUSED = "is not available while the program is judged"


def with_limits(sandbox: WatchedPool, **changes: float) -> Limits:
    return Limits.model_validate({**sandbox.limits.model_dump(), **changes})


# --- test_code --------------------------------------------------------------------------------


def test_a_humaneval_style_check_passes(sandbox: WatchedPool) -> None:
    record = sandbox.run(HUMANEVAL_CODE, test_code=HUMANEVAL_TEST)
    assert (record.status, record.exit_code, record.passed) == (OK, 0, True), record
    assert (record.stdout, record.stderr) == ("", "")
    assert record.cases is None


def test_a_failing_assertion_fails_with_the_tests_traceback(sandbox: WatchedPool) -> None:
    wrong = HUMANEVAL_CODE.replace("return True", "return False")
    record = sandbox.run(wrong, test_code=HUMANEVAL_TEST)
    assert (record.status, record.exit_code, record.passed) == (NONZERO_EXIT, 1, False), record
    assert 'File "<test_code>", line 5, in check' in record.stderr
    assert "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n" in record.stderr
    assert record.stderr.endswith("AssertionError\n")
    assert "zygote" not in record.stderr


def test_an_exception_in_the_code_fails_before_the_test_runs(sandbox: WatchedPool) -> None:
    record = sandbox.run("raise ValueError('broken')", test_code="print('test ran')")
    assert (record.status, record.passed, record.stdout) == (NONZERO_EXIT, False, "")
    assert record.stderr.endswith("ValueError: broken\n")


def test_a_syntax_error_in_the_test_fails_without_running_the_code(sandbox: WatchedPool) -> None:
    record = sandbox.run("print('code ran')", test_code="def check(:\n")
    assert (record.status, record.passed, record.stdout) == (NONZERO_EXIT, False, "")
    assert 'File "<test_code>", line 1' in record.stderr and "SyntaxError" in record.stderr


def test_the_test_shares_the_programs_namespace_stdin_and_output(sandbox: WatchedPool) -> None:
    code = "import sys\nfirst = input()\nprint('code', first)\n"
    test = "print('test', first, sys.stdin.read().strip(), __name__)\nassert first == 'a'\n"
    record = sandbox.run(code, test_code=test, stdin="a\nb\n")
    assert (record.status, record.passed) == (OK, True), record
    assert record.stdout == "code a\ntest a b __main__\n"


def test_a_record_that_asked_for_no_judgement_says_passed_null(sandbox: WatchedPool) -> None:
    record = sandbox.run("print(1)")
    assert record.passed is None and record.cases is None
    api = record.to_api()
    assert api["passed"] is None and "cases" not in api


def test_a_run_that_times_out_after_its_test_passed_does_not_pass(sandbox: WatchedPool) -> None:
    """The proof came (the test returned), but the run did not end well: not passed."""
    code = RIGHT_ADD + "import atexit, time\natexit.register(time.sleep, 60)\n"
    record = sandbox.run(code, test_code=ADD_TEST, limits=with_limits(sandbox, wall_timeout_s=1))
    assert (record.status, record.passed) == (TIMEOUT, False), record


def test_a_test_that_never_ends_times_out_and_does_not_pass(sandbox: WatchedPool) -> None:
    limits = with_limits(sandbox, wall_timeout_s=1)
    record = sandbox.run(RIGHT_ADD, test_code="while True:\n    pass\n", limits=limits)
    assert (record.status, record.passed) == (TIMEOUT, False), record


def test_a_run_over_its_memory_does_not_pass(sandbox: WatchedPool) -> None:
    record = sandbox.run(RIGHT_ADD, test_code=ADD_TEST + "b = bytearray(300 << 20)\n")
    assert (record.status, record.passed) == (MEMORY_LIMIT, False), record


# --- forging attempts: a program that fails its test tries to pass ------------------------------

FORGERIES: dict[str, tuple[str, object]] = {
    "sys-exit-0": ("import sys\nsys.exit(0)\n", OK),
    "os-exit-0": ("import os\nos._exit(0)\n", OK),
    "raise-systemexit-at-top": ("raise SystemExit\n", OK),
    "systemexit-in-the-tests-path": (
        "def add(a, b):\n    raise SystemExit(0)\n",
        OK,
    ),
    "exit-from-a-thread-before-the-test": (
        "import os, threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0))).start()\n"
        "time.sleep(2)\n",
        OK,
    ),
    "custom-excepthook": (
        "import os, sys\nsys.excepthook = lambda *exc: (print('All tests passed'), os._exit(0))\n",
        OK,
    ),
    "sigkill-itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", CRASHED),
    "success-marker": (
        "print('PASSED\\nAll tests passed\\nOK')\nprint('passed', file=__import__('sys').stderr)\n",
        NONZERO_EXIT,
    ),
    "close-inherited-descriptors": ("import os\nos.closerange(3, 1 << 16)\n", NONZERO_EXIT),
    "junk-on-every-descriptor": (
        "import os\n"
        "for fd in [*range(1025), *(int(n) for n in os.listdir('/proc/self/fd'))]:\n"
        "    try:\n"
        "        os.write(fd, b'PASSED ' * 3)\n"
        "    except OSError:\n"
        "        pass\n",
        NONZERO_EXIT,
    ),
    "atexit-exit-0": ("import atexit, os\natexit.register(os._exit, 0)\n", OK),
    "atexit-success-marker": ("import atexit\natexit.register(print, 'PASSED')\n", NONZERO_EXIT),
    "monkeypatch-exits": (
        "import builtins, os, sys\n"
        "sys.exit = os._exit = builtins.exit = builtins.quit = lambda *args: None\n"
        "sys.excepthook = lambda *exc: None\n",
        NONZERO_EXIT,
    ),
    "monkeypatch-builtins": (
        "import builtins\n"
        "builtins.AssertionError = builtins.print = builtins.__import__ = lambda *a, **k: None\n",
        NONZERO_EXIT,
    ),
    "spoof-the-audit-event": (
        "import os, sys\nsys.audit('exec_agent.test_passed')\nos._exit(0)\n",
        OK,
    ),
    "run-the-test-in-a-frame-of-its-own": (
        # The harness frame's test code, run by the program with a right answer planted.
        "import os, sys\n"
        "harness = sys._getframe(1)\n"
        "test = next(v for v in harness.f_locals.values() if getattr(v, 'co_filename', '') == '<test_code>')\n"
        "exec(test, {'add': lambda a, b: a + b})\n"
        "sys.audit('exec_agent.test_passed')\n"
        "print('ran the test myself')\n"
        "os._exit(0)\n",
        OK,
    ),
    "fork-a-child-that-passes": (
        # The child gets right answers and passes; the parent waits for it and exits 0.
        "import os\n"
        "child = os.fork() == 0\n"
        "if child:\n"
        "    def add(a, b):\n"
        "        return a + b\n"
        "else:\n"
        "    os.waitpid(-1, 0)\n"
        "    os._exit(0)\n",
        OK,
    ),
}
"""Attack (run after a wrong ``add``, before ``ADD_TEST``) -> the status the run ends with."""

STEAL_FROM_FRAMES = """\
import os, sys

def reachable_from_frames():
    found, frame = [], sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            found.append(value)
            found.extend(getattr(value, "__dict__", {}).values())
            found.extend(cell.cell_contents for cell in getattr(value, "__closure__", None) or ())
            if isinstance(value, (tuple, list)):
                found.extend(value)
        frame = frame.f_back
    return found

def is_pipe(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:  # the directory listed
        return False

nonces = [v for v in reachable_from_frames() if isinstance(v, bytes) and len(v) == 16]
pipes = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 3 and is_pipe(fd)]
print(len(nonces), "nonces,", len(pipes), "pipe")
for fd in pipes:
    for nonce in nonces:
        os.write(fd, nonce)
os._exit(0)
"""


@pytest.mark.parametrize(("attack", "status"), FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_pass_does_not_pass(sandbox: WatchedPool, attack: str, status: object) -> None:
    record = sandbox.run(WRONG_ADD + attack, test_code=ADD_TEST)
    assert (record.status, record.passed) == (status, False), record


def test_the_forking_forger_leaves_nothing_behind(sandbox: WatchedPool) -> None:
    with sandbox.watch():
        record = sandbox.run(
            WRONG_ADD + FORGERIES["fork-a-child-that-passes"][0], test_code=ADD_TEST
        )
    assert (record.status, record.passed) == (OK, False), record


def test_the_nonce_is_not_reachable_from_the_programs_frames(sandbox: WatchedPool) -> None:
    record = sandbox.run(WRONG_ADD + STEAL_FROM_FRAMES, test_code=ADD_TEST)
    assert (record.status, record.passed) == (OK, False), record.stderr
    assert record.stdout == "0 nonces, 1 pipe\n"  # the proof pipe is found, not what to write


@pytest.mark.parametrize(
    ("call", "event"),
    [
        ("gc.get_objects()", "gc.get_objects"),
        ("gc.get_referrers(sys._getframe(1))", "gc.get_referrers"),
        ("gc.get_referents(sys._getframe(1))", "gc.get_referents"),
        ("sys.settrace(lambda *args: None)", "sys.settrace"),
        ("ctypes.string_at(id(1), 8)", "ctypes.string_at"),
        ("ctypes.CDLL(None)", "ctypes.dlopen"),
    ],
)
def test_introspection_that_reaches_the_proof_is_refused(
    sandbox: WatchedPool, call: str, event: str
) -> None:
    code = f"import ctypes, gc, sys\n{call}\n{RIGHT_ADD}"
    record = sandbox.run(code, test_code=ADD_TEST)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert f"PermissionError: {event} {REFUSED}" in record.stderr


def test_a_trace_function_jumping_over_the_failing_assertion_is_refused(
    sandbox: WatchedPool,
) -> None:
    """Outside a judged run, this tracer makes the test below run to its end."""
    tracer = (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check' and event == 'line'"
        " and frame.f_lineno == frame.f_code.co_firstlineno + 1:\n"
        "        frame.f_lineno += 1\n"
        "    return tracer\n"
        "try:\n"
        "    sys.settrace(tracer)\n"
        "except PermissionError as exc:\n"
        "    print(exc)\n"
    )
    record = sandbox.run(WRONG_ADD + tracer, test_code=ADD_TEST)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert record.stdout == f"sys.settrace {REFUSED}\n"


def test_builtins_patched_by_the_program_are_not_the_tests(sandbox: WatchedPool) -> None:
    """The test sees the builtins as they were before the program ran."""
    patch = "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
    test = "assert isinstance(add(2, 3), str) or abs(add(2, 3) - 5) < 1e-9\n"
    record = sandbox.run(WRONG_ADD + patch, test_code=test)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert sandbox.run(RIGHT_ADD + patch, test_code=test).passed is True


def test_tampering_with_the_proof_descriptor_fails_even_a_right_program(
    sandbox: WatchedPool,
) -> None:
    junk = FORGERIES["junk-on-every-descriptor"][0]
    record = sandbox.run(RIGHT_ADD + junk, test_code=ADD_TEST)
    assert (record.status, record.passed) == (OK, False), record


@pytest.mark.xfail(
    strict=True,
    reason="residual: test_code sees what the program built; an == test trusts its __eq__",
)
def test_an_always_equal_result_fools_an_equality_only_test(sandbox: WatchedPool) -> None:
    code = (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def add(a, b):\n"
        "    return Anything()\n"
    )
    assert sandbox.run(code, test_code=ADD_TEST).passed is False


SIGNAL_THIEF = """\
import itertools, os, signal, sys, threading

stolen = []

def steal(signum, frame):
    while frame is not None and not stolen:
        if frame.f_code.co_name == "release_proof":
            stolen.append(dict(frame.f_locals))
        frame = frame.f_back

signal.signal(signal.SIGUSR1, steal)
main = threading.main_thread().ident

def storm():
    while not stolen:
        signal.pthread_kill(main, signal.SIGUSR1)

threading.Thread(target=storm, daemon=True).start()
while not stolen:  # every audit event runs the hook; the storm interrupts it sooner or later
    list(map(sys.audit, itertools.repeat("x", 10000)))
os.write(stolen[0]["fd"], stolen[0]["nonce"])
os._exit(0)
"""


@pytest.mark.xfail(
    strict=True,
    reason="residual: Python code run inside the proof's audit hook (here a signal handler) "
    "sees the hook's frame, and so the nonce",
)
def test_a_signal_handler_inside_the_hook_steals_the_proof(sandbox: WatchedPool) -> None:
    record = sandbox.run(WRONG_ADD + SIGNAL_THIEF, test_code=ADD_TEST)
    assert record.passed is False, record.stderr


def test_an_always_equal_result_does_not_fool_a_type_aware_test(sandbox: WatchedPool) -> None:
    code = "class Anything:\n    __eq__ = lambda self, other: True\n\ndef add(a, b):\n    return Anything()\n"
    test = "result = add(2, 3)\nassert type(result) is int and result == 5\n"
    record = sandbox.run(code, test_code=test)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record


# --- cases ------------------------------------------------------------------------------------

REVERSE = "print(input()[::-1])\n"


def case(stdin: str, expected_stdout: str) -> dict[str, str]:
    return {"stdin": stdin, "expected_stdout": expected_stdout}


def test_cases_that_all_pass(sandbox: WatchedPool) -> None:
    cases = [case("abc\n", "cba\n"), case("xy", "yx"), case("\n", "")]
    record = sandbox.run(REVERSE, cases=cases)
    assert (record.status, record.passed) == (OK, True), record
    assert record.cases is not None
    assert [(c.status, c.passed, c.stdout) for c in record.cases] == [
        (OK, True, "cba\n"),
        (OK, True, "yx\n"),
        (OK, True, "\n"),
    ]
    assert (record.exit_code, record.stdout, record.stderr) == (0, "\n", "")  # the last case's


def test_each_case_gets_its_own_stdin_and_nothing_else(sandbox: WatchedPool) -> None:
    code = "import sys\nprint(repr(sys.stdin.read()))\n"
    stdins = ["first\n", "", "third ✓\nline 2\n"]
    record = sandbox.run(code, stdin="ignored", cases=[case(s, repr(s)) for s in stdins])
    assert record.passed is True, record
    assert record.cases is not None
    assert [c.stdout for c in record.cases] == [repr(s) + "\n" for s in stdins]


def test_a_wrong_answer_fails_and_the_record_shows_that_case(sandbox: WatchedPool) -> None:
    cases = [case("abc", "cba"), case("hello", "hello"), case("xy", "nope")]
    record = sandbox.run(REVERSE, cases=cases)
    assert (record.status, record.passed) == (OK, False), record
    assert record.cases is not None
    assert [c.passed for c in record.cases] == [True, False, False]
    assert record.stdout == "olleh\n"  # the first case that failed


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        ("1\n2\n", "1\n2", True),
        ("1  \n2\t\n", "1\n2\n\n\n", True),
        ("1\r\n2\r\n", "1\n2\n", True),
        ("", "\n \n", True),
        (" 1\n", "1\n", False),  # leading whitespace counts
        ("1 2\n", "1  2\n", False),  # so does whitespace inside a line
        ("1\n\n2\n", "1\n2\n", False),  # and blank lines before the end
        ("1\n2\n", "1\n", False),
    ],
)
def test_outputs_compare_without_trailing_whitespace(
    actual: str, expected: str, same: bool
) -> None:
    assert outputs_match(actual, expected) is same


def test_trailing_whitespace_does_not_fail_a_case(sandbox: WatchedPool) -> None:
    code = "print('a  ')\nprint('b')\nprint()\nprint('   ')\n"
    record = sandbox.run(code, cases=[case("", "a\nb"), case("", "a\n b\n")])
    assert record.cases is not None
    assert [c.passed for c in record.cases] == [True, False]


def test_a_case_that_times_out_makes_the_record_time_out(sandbox: WatchedPool) -> None:
    code = "import time\nn = int(input())\ntime.sleep(n)\nprint(n)\n"
    limits = with_limits(sandbox, wall_timeout_s=1)
    record = sandbox.run(
        code, cases=[case("0", "0"), case("30", "30"), case("0", "0")], limits=limits
    )
    assert (record.status, record.signal, record.passed) == (TIMEOUT, signal.SIGKILL, False)
    assert record.cases is not None
    assert [(c.status, c.passed) for c in record.cases] == [
        (OK, True),
        (TIMEOUT, False),
        (OK, True),
    ]
    assert record.stdout == ""  # the timed-out case's
    walls = [c.wall_time_s or 0.0 for c in record.cases]
    assert record.wall_time_s == pytest.approx(sum(walls), abs=1e-5)
    assert record.wall_time_s is not None and record.wall_time_s >= 1


def test_the_first_case_not_ok_is_the_one_shown(sandbox: WatchedPool) -> None:
    code = "import sys\nn = int(input())\nprint('out', n)\nsys.exit(n)\n"
    record = sandbox.run(code, cases=[case("0", "wrong"), case("3", "out 3"), case("4", "out 4")])
    assert (record.status, record.exit_code, record.stdout) == (NONZERO_EXIT, 3, "out 3\n")
    assert record.passed is False


def test_usage_adds_up_over_the_cases_and_peak_memory_is_the_largest(
    sandbox: WatchedPool,
) -> None:
    code = "b = bytearray(int(input()) << 20)\nprint(len(b) >> 20)\n"
    record = sandbox.run(code, cases=[case("1", "1"), case("48", "48"), case("2", "2")])
    assert record.passed is True and record.cases is not None
    peaks = [c.peak_memory_bytes or 0 for c in record.cases]
    assert record.peak_memory_bytes == max(peaks) >= 48 << 20
    cpu = [c.cpu_time_s or 0.0 for c in record.cases]
    assert record.cpu_time_s == pytest.approx(sum(cpu), abs=1e-5)


def test_cases_with_test_code_need_both_to_pass(sandbox: WatchedPool) -> None:
    code = "def double(x):\n    return 2 * x if x < 10 else 0\n\nprint(double(int(input())))\n"
    test = "assert double(3) == 6\n"
    record = sandbox.run(code, test_code=test, cases=[case("1", "2"), case("20", "40")])
    assert record.cases is not None
    assert [(c.status, c.passed) for c in record.cases] == [(OK, True), (OK, False)]
    record = sandbox.run(code, test_code="assert double(20) == 40\n", cases=[case("1", "2")])
    assert record.cases is not None
    assert (record.status, record.passed, record.cases[0].passed) == (NONZERO_EXIT, False, False)


def test_a_forged_exit_in_a_case_with_test_code_does_not_pass(sandbox: WatchedPool) -> None:
    code = WRONG_ADD + "print(add(1, 1))\nimport os\nos._exit(0)\n"
    record = sandbox.run(code, test_code=ADD_TEST, cases=[case("", "0")])
    assert (record.status, record.passed) == (OK, False), record


def test_a_cases_record_in_api_form(sandbox: WatchedPool) -> None:
    record = sandbox.run(REVERSE, cases=[case("ab", "ba")])
    api = record.to_api()
    assert api["passed"] is True
    assert api["cases"] == [
        {
            "status": "ok",
            "passed": True,
            "stdout": "ba\n",
            "stderr": "",
            "wall_time_s": api["cases"][0]["wall_time_s"],
            "cpu_time_s": api["cases"][0]["cpu_time_s"],
            "peak_memory_bytes": api["cases"][0]["peak_memory_bytes"],
            "exit_code": 0,
            "signal": None,
            "stdout_truncated": False,
            "stderr_truncated": False,
        }
    ]
    assert ExecutionRecord.model_validate(api) == record


def test_cancelling_stops_every_case(sandbox_pool: SandboxPool, sandbox: WatchedPool) -> None:
    cancel = threading.Event()
    request = ExecutionRequest.model_validate(
        {
            "code": "import time\ntime.sleep(30)\n",
            "cases": [case(str(n), "") for n in range(6)],
            "limits": with_limits(sandbox, wall_timeout_s=30),
        }
    )
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    record = sandbox_pool.run(request, cancel)  # not sandbox.run: internal_error is the point
    assert time.monotonic() - t0 < 10
    assert (record.status, record.passed) == (INTERNAL_ERROR, False)
    assert record.cases is not None
    assert {(c.status, c.passed) for c in record.cases} == {(INTERNAL_ERROR, False)}
