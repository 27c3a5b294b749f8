"""Judged runs at the engine level: ``test_code`` and ``cases`` (API.md, "Evaluation").

Programs run in the session's watched 2-slot pool (conftest.py), under both judges: ``isolated``
(the default: the test runs in a process of its own) and ``in_process``. The forging attempts
each try to get ``passed: true`` for a program that fails its test; under the isolated judge
they all get ``passed: false``, whatever status they manage to give their run. The residuals
the in-process judge documents (``executors/_sandbox/zygote.py``, ``_arm_proof``) are pinned as
strict expected failures of that judge alone: a program that runs its own code inside the
proof's hook, one that reads its own memory, one that reads the test's code, and a test that
trusts ``==`` on what the program returns.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from executors import ExecutionRecord, ExecutionRequest, SandboxPool
from executors._evaluation import CASE_OUTPUT_FLOOR_BYTES, outputs_match
from tests.support.statuses import CRASHED, INTERNAL_ERROR, MEMORY_LIMIT, NONZERO_EXIT, OK, TIMEOUT
from tests.support.watched_pool import WatchedPool

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


JUDGES = ("isolated", "in_process")


@pytest.fixture(params=JUDGES)
def judge(request: pytest.FixtureRequest) -> str:
    """The judge a test runs under, when both must behave alike."""
    return str(request.param)


def in_process_residual(reason: str) -> list[object]:
    """Both judges, the in-process one pinned as a strict expected failure for ``reason``."""
    return [
        "isolated",
        pytest.param("in_process", marks=pytest.mark.xfail(strict=True, reason=reason)),
    ]


# --- test_code --------------------------------------------------------------------------------


def test_a_humaneval_style_check_passes(sandbox: WatchedPool, judge: str) -> None:
    record = sandbox.run(HUMANEVAL_CODE, test_code=HUMANEVAL_TEST, judge=judge)
    assert (record.status, record.exit_code, record.passed) == (OK, 0, True), record
    assert (record.stdout, record.stderr) == ("", "")
    assert record.cases is None


def test_a_failing_assertion_fails_with_the_tests_traceback(
    sandbox: WatchedPool, judge: str
) -> None:
    wrong = HUMANEVAL_CODE.replace("return True", "return False")
    record = sandbox.run(wrong, test_code=HUMANEVAL_TEST, judge=judge)
    assert (record.status, record.exit_code, record.passed) == (NONZERO_EXIT, 1, False), record
    assert 'File "<test_code>", line 5, in check' in record.stderr
    assert "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n" in record.stderr
    assert record.stderr.endswith("AssertionError\n")
    assert "zygote" not in record.stderr


def test_an_exception_in_the_code_fails_before_the_test_runs(
    sandbox: WatchedPool, judge: str
) -> None:
    record = sandbox.run("raise ValueError('broken')", test_code="print('test ran')", judge=judge)
    assert (record.status, record.passed, record.stdout) == (NONZERO_EXIT, False, "")
    assert record.stderr.endswith("ValueError: broken\n")


def test_a_syntax_error_in_the_test_fails_without_running_the_code(
    sandbox: WatchedPool, judge: str
) -> None:
    record = sandbox.run("print('code ran')", test_code="def check(:\n", judge=judge)
    assert (record.status, record.passed, record.stdout) == (NONZERO_EXIT, False, "")
    assert 'File "<test_code>", line 1' in record.stderr and "SyntaxError" in record.stderr


def test_the_test_shares_the_programs_namespace_stdin_and_output(
    sandbox: WatchedPool, judge: str
) -> None:
    code = "import sys\nfirst = input()\nprint('code', first)\n"
    test = "print('test', first, sys.stdin.read().strip(), __name__)\nassert first == 'a'\n"
    record = sandbox.run(code, test_code=test, stdin="a\nb\n", judge=judge)
    assert (record.status, record.passed) == (OK, True), record
    assert record.stdout == "code a\ntest a b __main__\n"


def test_a_record_that_asked_for_no_judgement_says_passed_null(sandbox: WatchedPool) -> None:
    record = sandbox.run("print(1)")
    assert record.passed is None and record.cases is None
    api = record.to_api()
    assert api["passed"] is None and "cases" not in api


def test_a_run_that_times_out_after_its_test_passed_does_not_pass(
    sandbox: WatchedPool, judge: str
) -> None:
    """The proof came (the test returned), but the run did not end well: not passed."""
    code = RIGHT_ADD + "import atexit, time\natexit.register(time.sleep, 60)\n"
    record = sandbox.run(
        code, test_code=ADD_TEST, limits=sandbox.limits_with(wall_timeout_s=1), judge=judge
    )
    assert (record.status, record.passed) == (TIMEOUT, False), record


def test_a_test_that_never_ends_times_out_and_does_not_pass(
    sandbox: WatchedPool, judge: str
) -> None:
    limits = sandbox.limits_with(wall_timeout_s=1)
    record = sandbox.run(RIGHT_ADD, test_code="while True:\n    pass\n", limits=limits, judge=judge)
    assert (record.status, record.passed) == (TIMEOUT, False), record


def test_a_run_over_its_memory_does_not_pass(sandbox: WatchedPool, judge: str) -> None:
    record = sandbox.run(RIGHT_ADD, test_code=ADD_TEST + "b = bytearray(300 << 20)\n", judge=judge)
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

NEW_FORGERIES: dict[str, tuple[str, object]] = {
    # The security review's proofs of concept against the in-process judge (issue 10).
    "excepthook-partial-of-audit": (
        "import atexit, functools, os, sys\n"
        "sys.excepthook = functools.partial(sys.audit, 'exec_agent.test_passed')\n"
        "atexit.register(os._exit, 0)\n",
        OK,
    ),
    "exception-str-partial-of-audit": (
        "import atexit, builtins, functools, os, sys\n"
        "class Loud(Exception):\n"
        "    __str__ = functools.partial(sys.audit, 'exec_agent.test_passed')\n"
        "def add(a, b):\n"
        "    raise Loud()\n"
        "sys.excepthook = print\n"
        "atexit.register(os._exit, 0)\n",
        OK,
    ),
    "current-frames-from-a-thread": (
        "import os, sys, threading\n"
        "def watch():\n"
        "    while True:\n"
        "        for frame in sys._current_frames().values():\n"
        "            while frame is not None:\n"
        "                if frame.f_code.co_name == 'release_proof':\n"
        "                    loc = frame.f_locals\n"
        "                    os.write(loc['fd'], loc['nonce'])\n"
        "                    os._exit(0)\n"
        "                frame = frame.f_back\n"
        "try:\n"
        "    sys._current_frames()\n"
        "    threading.Thread(target=watch, daemon=True).start()\n"
        "except PermissionError:\n"
        "    pass\n",
        OK,
    ),
}
"""Forgeries that beat the in-process judge before it was hardened (or that it still refuses)."""

MEMORY_THIEF = """\
import os, struct

# The proof's nonce: a 16-byte bytes object held by a closure cell. Objects are found by their
# type pointers: a bytes object is refcount, type, size, hash (-1: never hashed), its bytes and
# a NUL; a cell is refcount, type, pointer to its content.
bytes_header = struct.pack("<Qqq", id(bytes), 16, -1)
cell_type = struct.pack("<Q", id(type((lambda x: lambda: x)(0).__closure__[0])))
regions = []
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if perms.startswith("rw"):
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                regions.append((start, mem.read(end - start)))
            except (OSError, OverflowError, ValueError):
                pass
found = {}
for start, chunk in regions:
    at = chunk.find(bytes_header)
    while at != -1:
        data = chunk[at + 24 : at + 41]
        if len(data) == 17 and data[16] == 0:
            found[start + at - 8] = data[:16]
        at = chunk.find(bytes_header, at + 1)
held = []
for start, chunk in regions:
    at = chunk.find(cell_type)
    while at != -1:
        (target,) = struct.unpack("<Q", chunk[at + 8 : at + 16] or bytes(8))
        if target in found:
            held.append(found[target])
        at = chunk.find(cell_type, at + 1)


def is_pipe(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:  # the directory listed
        return False


pipes = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 3 and is_pipe(fd)]
print(len(found), "candidates,", len(held), "in cells,", len(pipes), "pipes")
if pipes and held:
    os.write(pipes[0], held[0])
os._exit(0)
"""

CODE_READER = """\
import dis, sys

def add(a, b):
    caller = sys._getframe(1)
    after = [
        i for i in dis.get_instructions(caller.f_code)
        if i.offset > caller.f_lasti and i.opname == "LOAD_CONST"
    ]
    return after[0].argval
"""


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
def test_a_forged_pass_does_not_pass_in_process(
    sandbox: WatchedPool, attack: str, status: object
) -> None:
    record = sandbox.run(WRONG_ADD + attack, test_code=ADD_TEST, judge="in_process")
    assert (record.status, record.passed) == (status, False), record


@pytest.mark.parametrize("attack", [*FORGERIES, *NEW_FORGERIES])
def test_a_forged_pass_does_not_pass_the_isolated_judge(sandbox: WatchedPool, attack: str) -> None:
    """Whatever status the program gives its run, it does not pass; and a right program that
    does the same harmless things still passes, so the test is not failing for its own sake."""
    code = {**FORGERIES, **NEW_FORGERIES}[attack][0]
    record = sandbox.run(WRONG_ADD + code, test_code=ADD_TEST)
    assert record.passed is False and record.status != INTERNAL_ERROR, record


@pytest.mark.parametrize("judge", JUDGES)
def test_the_forking_forger_leaves_nothing_behind(sandbox: WatchedPool, judge: str) -> None:
    with sandbox.watch():
        record = sandbox.run(
            WRONG_ADD + FORGERIES["fork-a-child-that-passes"][0], test_code=ADD_TEST, judge=judge
        )
    assert record.passed is False and record.status != INTERNAL_ERROR, record


def test_the_nonce_is_not_reachable_from_the_programs_frames(sandbox: WatchedPool) -> None:
    record = sandbox.run(WRONG_ADD + STEAL_FROM_FRAMES, test_code=ADD_TEST, judge="in_process")
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
        ("sys._current_frames()", "sys._current_frames"),
        ("sys._current_exceptions()", "sys._current_exceptions"),
    ],
)
def test_introspection_that_reaches_the_proof_is_refused(
    sandbox: WatchedPool, call: str, event: str
) -> None:
    code = f"import ctypes, gc, sys\n{call}\n{RIGHT_ADD}"
    record = sandbox.run(code, test_code=ADD_TEST, judge="in_process")
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
    record = sandbox.run(WRONG_ADD + tracer, test_code=ADD_TEST, judge="in_process")
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert record.stdout == f"sys.settrace {REFUSED}\n"


def test_builtins_patched_by_the_program_are_not_the_tests(
    sandbox: WatchedPool, judge: str
) -> None:
    """The test sees the builtins as they were before the program ran."""
    patch = "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
    test = "assert isinstance(add(2, 3), str) or abs(add(2, 3) - 5) < 1e-9\n"
    record = sandbox.run(WRONG_ADD + patch, test_code=test, judge=judge)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert sandbox.run(RIGHT_ADD + patch, test_code=test, judge=judge).passed is True


def test_tampering_with_the_proof_descriptor_fails_even_a_right_program(
    sandbox: WatchedPool,
) -> None:
    junk = FORGERIES["junk-on-every-descriptor"][0]
    record = sandbox.run(RIGHT_ADD + junk, test_code=ADD_TEST, judge="in_process")
    assert (record.status, record.passed) == (OK, False), record


@pytest.mark.parametrize(
    "judge",
    in_process_residual("residual: test_code sees what the program built; == trusts its __eq__"),
)
def test_an_always_equal_result_fools_only_an_in_process_equality_test(
    sandbox: WatchedPool, judge: str
) -> None:
    code = (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def add(a, b):\n"
        "    return Anything()\n"
    )
    assert sandbox.run(code, test_code=ADD_TEST, judge=judge).passed is False


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


@pytest.mark.parametrize(
    "judge",
    in_process_residual(
        "residual: Python code run inside the proof's audit hook (here a signal handler) "
        "sees the hook's frame, and so the nonce"
    ),
)
def test_a_signal_handler_inside_the_hook_steals_the_proof_only_in_process(
    sandbox: WatchedPool, judge: str
) -> None:
    record = sandbox.run(WRONG_ADD + SIGNAL_THIEF, test_code=ADD_TEST, judge=judge)
    assert record.passed is False, record.stderr


@pytest.mark.parametrize(
    "judge", in_process_residual("residual: the program can read its own process's memory")
)
def test_a_program_reading_its_own_memory_finds_no_proof_to_forge(
    sandbox: WatchedPool, judge: str
) -> None:
    record = sandbox.run(WRONG_ADD + MEMORY_THIEF, test_code=ADD_TEST, judge=judge)
    assert record.passed is False, record.stdout + record.stderr


@pytest.mark.parametrize(
    "judge", in_process_residual("residual: the test's code is readable from the program's frames")
)
def test_a_candidate_reading_the_tests_code_finds_nothing_to_copy(
    sandbox: WatchedPool, judge: str
) -> None:
    record = sandbox.run(CODE_READER, test_code=ADD_TEST, judge=judge)
    assert record.passed is False, record.stderr


# --- the isolated judge: what crosses between the test and the program -----------------------


def test_values_cross_as_copies_and_objects_as_handles(sandbox: WatchedPool) -> None:
    code = (
        "import collections\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.n = 0\n"
        "    def bump(self, by=1):\n"
        "        self.n += by\n"
        "        return self.n\n"
        "def values():\n"
        "    return [None, True, 3, 2.5, 1j, 'é', b'\\x00', (1, [2]), {'k': {3}}, frozenset({4}), 10**30]\n"
        "def point():\n"
        "    return Point(1, 2)\n"
        "def gen(n):\n"
        "    yield from range(n)\n"
        "def fail():\n"
        "    raise KeyError('missing')\n"
        "def call_back(f):\n"
        "    return f(20) + 1\n"
    )
    test = (
        "assert values() == [None, True, 3, 2.5, 1j, 'é', b'\\x00', (1, [2]), {'k': {3}}, frozenset({4}), 10**30]\n"
        "assert type(values()[2]) is int and point() == (1, 2) and type(point()) is tuple\n"
        "c = Counter()\n"
        "assert c.bump() == 1 and c.bump(by=2) == 3 and c.n == 3 and c == c and c != Counter()\n"
        "assert list(gen(3)) == [0, 1, 2] and 'Counter object' in repr(c)\n"
        "try:\n"
        "    fail()\n"
        "except KeyError as exc:\n"
        "    assert exc.args == ('missing',)\n"
        "else:\n"
        "    raise AssertionError('no KeyError')\n"
        "assert call_back(lambda x: x * 2) == 41\n"
        "print('all crossed')\n"
    )
    record = sandbox.run(code, test_code=test)
    assert (record.status, record.passed, record.stdout) == (OK, True, "all crossed\n"), record


def test_a_program_class_and_its_exceptions_keep_their_builtin_bases(
    sandbox: WatchedPool,
) -> None:
    code = (
        "class Invalid(ValueError):\n"
        "    pass\n"
        "class Solution:\n"
        "    def two_sum(self, nums, target):\n"
        "        seen = {}\n"
        "        for i, n in enumerate(nums):\n"
        "            if target - n in seen:\n"
        "                return [seen[target - n], i]\n"
        "            seen[n] = i\n"
        "        raise Invalid(f'no pair for {target}')\n"
    )
    test = (
        "assert Solution().two_sum([2, 7, 11, 15], 9) == [0, 1]\n"
        "try:\n"
        "    Solution().two_sum([1], 5)\n"
        "except ValueError as exc:\n"
        "    assert type(exc).__name__ == 'Invalid' and str(exc) == 'no pair for 5'\n"
    )
    record = sandbox.run(code, test_code=test)
    assert (record.status, record.passed) == (OK, True), record


def test_an_uncaught_program_error_shows_both_tracebacks(sandbox: WatchedPool) -> None:
    code = "def add(a, b):\n    return a + undefined\n"
    record = sandbox.run(code, test_code=ADD_TEST)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert 'File "<test_code>", line 2, in check' in record.stderr
    assert "NameError: name 'undefined' is not defined" in record.stderr
    assert 'In the program:\n  File "main.py", line 2, in add' in record.stderr
    assert "zygote" not in record.stderr


def test_the_isolated_test_imports_nothing_the_program_wrote(sandbox: WatchedPool) -> None:
    code = RIGHT_ADD + "open('json.py', 'w').write('raise SystemExit(0)')\n"
    record = sandbox.run(code, test_code="import json\nassert json.dumps([add(1, 1)]) == '[2]'\n")
    assert (record.status, record.passed) == (OK, True), record


def test_a_program_function_that_exits_fails_the_isolated_test(sandbox: WatchedPool) -> None:
    """The program ending mid-test is no pass, even for a test that swallows the error."""
    code = "import os\ndef add(a, b):\n    os._exit(0)\n"
    test = "try:\n    add(1, 2)\nexcept Exception:\n    pass\n"
    record = sandbox.run(code, test_code=test)
    assert record.passed is False, record


def test_a_test_object_that_is_not_a_function_does_not_cross(sandbox: WatchedPool) -> None:
    code = "def size(x):\n    return len(x)\n"
    test = "class Box:\n    def __len__(self):\n        return 3\nsize(Box())\n"
    record = sandbox.run(code, test_code=test)
    assert (record.status, record.passed) == (NONZERO_EXIT, False), record
    assert "a Box cannot be passed to the program" in record.stderr


def test_an_always_equal_result_does_not_fool_a_type_aware_test(
    sandbox: WatchedPool, judge: str
) -> None:
    code = "class Anything:\n    __eq__ = lambda self, other: True\n\ndef add(a, b):\n    return Anything()\n"
    test = "result = add(2, 3)\nassert type(result) is int and result == 5\n"
    record = sandbox.run(code, test_code=test, judge=judge)
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
    limits = sandbox.limits_with(wall_timeout_s=1)
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


def test_cases_with_test_code_need_both_to_pass(sandbox: WatchedPool, judge: str) -> None:
    code = "def double(x):\n    return 2 * x if x < 10 else 0\n\nprint(double(int(input())))\n"
    test = "assert double(3) == 6\n"
    record = sandbox.run(
        code, test_code=test, cases=[case("1", "2"), case("20", "40")], judge=judge
    )
    assert record.cases is not None
    assert [(c.status, c.passed) for c in record.cases] == [(OK, True), (OK, False)]
    test = "assert double(20) == 40\n"
    record = sandbox.run(code, test_code=test, cases=[case("1", "2")], judge=judge)
    assert record.cases is not None
    assert (record.status, record.passed, record.cases[0].passed) == (NONZERO_EXIT, False, False)


def test_a_forged_exit_in_a_case_with_test_code_does_not_pass(
    sandbox: WatchedPool, judge: str
) -> None:
    code = WRONG_ADD + "print(add(1, 1))\nimport os\nos._exit(0)\n"
    record = sandbox.run(code, test_code=ADD_TEST, cases=[case("", "0")], judge=judge)
    assert (record.status, record.passed) == (OK, False), record


def test_many_loud_cases_are_judged_whole_but_kept_in_a_share(sandbox: WatchedPool) -> None:
    """The review's 97 bytes with 4 cases made a 62.9 MB record: the whole of each case's
    output is compared, then each keeps only its share of ``max_output_bytes``."""
    loud = 400_000
    code = f"import sys\nprint('o' * {loud})\nprint('e' * {loud}, file=sys.stderr)\n"
    cases = [case("", "o" * loud)] * 20
    record = sandbox.run(code, cases=cases)
    assert (record.status, record.passed) == (OK, True), record.status  # judged on all of it
    assert record.cases is not None
    share = max(CASE_OUTPUT_FLOOR_BYTES, sandbox.limits.max_output_bytes // len(cases))
    assert all(len(c.stdout) == len(c.stderr) == share for c in record.cases)
    assert all(c.stdout_truncated and c.stderr_truncated for c in record.cases)
    kept = sum(len(c.stdout) + len(c.stderr) for c in record.cases)
    assert kept <= 2 * sandbox.limits.max_output_bytes < 2 * loud * len(cases) // 4


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
            "limits": sandbox.limits_with(wall_timeout_s=30),
        }
    )
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    record = sandbox_pool.run(request, cancel)  # not sandbox.run: internal_error is the point
    assert time.monotonic() - t0 < 10
    assert (record.status, record.passed) == (INTERNAL_ERROR, False)
    assert record.cases is not None
    assert {(c.status, c.passed) for c in record.cases} == {(INTERNAL_ERROR, False)}
