"""The adversarial corpus (tests/data/security_corpus.json) run inside sessions, call after call.

Each engine entry is one call in a live session of a module-wide :class:`SessionHost`: its
expectation (tests/support/corpus_checks.py, or below where a session differs from a one-shot
run), then the corpus' invariants (tests/support/watched_sessions.py: D and S on every record,
P, H and F after each call), then either the session still answers a trivial call or it has
ended for a reason the entry explains (``ENDS``: an entry that ends the interpreter, exits,
crashes or ignores its interrupt ends its session) and a new session takes the next entries.
Judged entries cannot be a call (``NOT_A_CALL``); entries whose leftovers would change the next
entries' outcomes, or that read the whole session, run in a session of their own (``ALONE``).
The entries of category ``sessions`` (several calls, one or two sessions each: ``then``) are
the surface's own, checked by ``SESSION_CHECKS``.
"""

from __future__ import annotations

import re
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from executors import EndReason, ExecutionRecord, Limits, SandboxConfig, SessionHost
from tests.support.canary import Canary
from tests.support.corpus import CORPUS, ENGINE_ENTRIES, SESSION_ENTRIES
from tests.support.corpus_checks import CHECKS, Check, assert_ok, wall_s
from tests.support.listeners import loopback_listener
from tests.support.ports import answers
from tests.support.statuses import OK, OUTPUT_LIMIT, TIMEOUT
from tests.support.watched_sessions import Call, WatchedHost

pytestmark = pytest.mark.sandbox

MINIMAL, SCIENTIFIC = "minimal", "scientific"
SLOT_UID_BASE = 63600
"""The host's sessions run as host uid 64600 (``SESSION_UID_OFFSET``, 1000, above): no pool of the
suite (62000 up, 100 apart) nor the engine's default (60000 up) comes near it."""
CAPACITY = 6
GRACE_S = 3.0
"""A generous GRACE: every answer comes within WALL + GRACE_S."""
SHORT_WALL_S = 2.0
"""The wall limit of the calls that run until it (the corpus' WALL is 5 s): a faster file."""
ALIVE = None

# --- how each entry runs in a session ----------------------------------------------------------

NOT_A_CALL = {
    name: "judged: a session call has no test_code, no judge and no proof; one-shot only"
    for name in ENGINE_ENTRIES
    if "test_code" in CORPUS[name]
}
"""Entries that cannot be a session call (listed, so that none goes missing unnoticed)."""
CALL_ENTRIES = [name for name in ENGINE_ENTRIES if name not in NOT_A_CALL]

ALONE: dict[str, str] = {
    # What these leave in their session by design would change later entries' outcomes there.
    "grandchild_holds_stdout_pipe": "its grandchild sleeps on in the session",
    "zombie_farm": "its 50 zombies hold the session's process cap while it lives",
    "nondaemon_thread_outlives_main": "its thread runs on in the session",
    "sysv_shm_outlives_job": "its segments hold the session's memory while it lives",
    "dev_shm_fill": "it fills the session's disk, which stays full",
    "thread_bomb": "its threads hold the session's process cap for a minute",
    "inode_exhaustion_many_small_files": "it fills the session's disk, which stays full",
    "fd_exhaustion": "it keeps every descriptor it could open",
    "artifact_growing_file": "its child writes on in the session",
    "runtime_blas_thread_bomb": "BLAS keeps its threads in the session",
    # These read the whole session (its namespace, /tmp, its processes): a fresh one.
    "py_gc_and_frame_walk": "it lists the session's globals",
    "lateral_other_jobs_workdirs": "it lists /tmp, where earlier calls may have written",
    "proc_cmdline_scan": "it lists the session's processes",
}
"""Entries run in a session of their own, deleted after the entry: nothing of it may be left."""

ENDS: dict[str, frozenset[EndReason | None]] = {
    "c_level_bignum": frozenset({ALIVE, EndReason.TIMEOUT, EndReason.MEMORY_LIMIT}),
    "ignore_termination_signals": frozenset({EndReason.TIMEOUT}),  # SIGINT ignored too
    "sysv_shm_outlives_job": frozenset({ALIVE, EndReason.MEMORY_LIMIT}),
    "memory_mmap_overcommit": frozenset({EndReason.MEMORY_LIMIT}),
    "memory_single_huge_alloc": frozenset({EndReason.MEMORY_LIMIT}),
    "dev_shm_fill": frozenset({ALIVE, EndReason.MEMORY_LIMIT}),
    "thread_bomb": frozenset({ALIVE, EndReason.MEMORY_LIMIT}),
    "huge_exception_message": frozenset({ALIVE, EndReason.OUTPUT_LIMIT}),
    "killpg_own_group": frozenset({EndReason.CRASHED}),  # its own SIGKILL
    "exit_code_and_partial_output": frozenset({EndReason.EXITED}),  # os._exit(3)
    "self_sigkill_vs_enforced_kill": frozenset({EndReason.CRASHED}),
    # OpenBLAS may give up (exit 1) when the process cap refuses its threads.
    "runtime_blas_thread_bomb": frozenset({ALIVE, EndReason.EXITED, EndReason.CRASHED}),
    "runtime_numpy_memory_bomb": frozenset({EndReason.MEMORY_LIMIT}),
    "runtime_numpy_touch_past_cap": frozenset({EndReason.MEMORY_LIMIT}),
    "runtime_pandas_memory_bomb": frozenset({EndReason.MEMORY_LIMIT}),
}
"""How a session may come out of an entry (absent: it goes on)."""

SHORT_WALL = frozenset(
    {"c_level_bignum", "wall_clock_sleep", "ignore_termination_signals", "thread_bomb"}
)

FINDINGS: dict[str, str] = {
    "py_gc_and_frame_walk": (
        "the outermost frame of a session call is the zygote's serve loop: its globals (the "
        "whole zygote module) and its locals (the Job, with the session's socket) are reachable "
        "from the session's code; one-shot jobs show only the program's own globals"
    ),
}
"""Expectations the engine does not meet yet (strict xfail: fixed, they fail loudly)."""

FRESH_MODULES = (
    "import numpy, pandas, matplotlib, matplotlib.pyplot as plt\n"
    "print(numpy.sum([1, 2]), callable(numpy.linalg.norm), numpy.__version__ != '0.0-evil',\n"
    "      pandas.get_option('display.max_rows'), int(pandas.DataFrame({'a': [1, 2]}).sum()['a']),\n"
    "      matplotlib.rcParams['lines.linewidth'], list(plt.rcParams['figure.figsize']),\n"
    "      plt.savefig.__module__)\n"
)
FOLLOW_UPS: dict[str, tuple[str, str | None]] = {
    # What a session changed stays in it (its files, its modules): never in the next session.
    "write_outside_workdir_persistence": (
        CORPUS["write_outside_workdir_persistence"]["code"],
        None,
    ),
    "usercustomize_persistence": ('print("hello")', "hello\n"),
    "dev_shm_fill": (
        "import os; print(os.listdir('/dev/shm'), os.listdir('/tmp'), os.listdir('.'))",
        "[] [] ['out']\n",
    ),
    "runtime_preloaded_module_tampering": (
        FRESH_MODULES,
        "3 True True 60 3 1.5 [6.4, 4.8] matplotlib.pyplot\n",
    ),
    "runtime_matplotlib_cache_write": (
        "import os, matplotlib\n"
        "print(matplotlib.rcParams['lines.linewidth'], os.path.exists('/tmp/matplotlib/matplotlibrc'),\n"
        "      os.path.exists('/tmp/matplotlib/fontlist-v390.json'))\n",
        "1.5 False False\n",
    ),
}
"""Entry -> a call in a new session of its runtime afterwards, and its stdout (None: the
entry's own check)."""

# Where a session's call differs from a one-shot run.
SESSION_CHECKS_OF_ENTRIES: dict[str, Check] = {}


def in_a_session(name: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        SESSION_CHECKS_OF_ENTRIES[name] = check
        return check

    return register


def assert_interrupted(r: ExecutionRecord) -> None:
    """Interrupted at the wall limit, control given back: the session goes on."""
    assert (r.status, r.exit_code, r.signal) == (TIMEOUT, None, signal.SIGINT), r
    assert r.stderr.endswith("KeyboardInterrupt\n"), r.stderr[-300:]


@in_a_session("wall_clock_sleep")
def _wall_clock_sleep(r: ExecutionRecord) -> None:
    # One-shot: killed. In a session, time.sleep gives control back to the interrupt.
    assert_interrupted(r)
    assert r.stdout == ""


@in_a_session("nondaemon_thread_outlives_main")
def _nondaemon_thread_outlives_main(r: ExecutionRecord) -> None:
    # A call ends with its code (notebook semantics); the thread lives on in the session.
    assert_ok(r, "main finished\n")


@in_a_session("huge_exception_message")
def _huge_exception_message(r: ExecutionRecord) -> None:
    # Interrupted when over the cap (SIGINT), killed if it did not stop: output_limit either way.
    assert (r.status, r.exit_code) == (OUTPUT_LIMIT, None), r
    assert r.signal in (signal.SIGINT, signal.SIGKILL), r
    assert r.stderr_truncated and not r.stdout_truncated
    assert len(r.stderr.encode("utf-8")) == int(r.limits["max_output_bytes"])
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    assert r.stdout == ""


@in_a_session("stream_one_byte_write_flood")
def _stream_one_byte_write_flood(r: ExecutionRecord) -> None:
    # Interrupted when over the cap (SIGINT: KeyboardInterrupt in the call), the session goes on.
    assert (r.status, r.exit_code) == (OUTPUT_LIMIT, None), r
    assert r.signal in (signal.SIGINT, signal.SIGKILL), r
    assert r.stdout == "x" * int(r.limits["max_output_bytes"]) and r.stdout_truncated


def session_check(name: str) -> Check:
    return SESSION_CHECKS_OF_ENTRIES.get(name, CHECKS[name])


def test_every_call_entry_is_run_or_said_why_not() -> None:
    assert set(CALL_ENTRIES) | set(NOT_A_CALL) == set(ENGINE_ENTRIES)
    assert set(ALONE) | set(ENDS) | set(FINDINGS) | set(FOLLOW_UPS) <= set(CALL_ENTRIES)
    assert set(SESSION_CHECKS) == set(SESSION_ENTRIES)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched(canary: Canary, corpus_limits: Limits) -> Iterator[WatchedHost]:
    """One session host for the module, with the service's secrets in its zygotes' environment."""
    config = SandboxConfig(default_runtime=MINIMAL, slot_uid_base=SLOT_UID_BASE)
    host = SessionHost(config, name="corpus", capacity=CAPACITY)
    with canary.planted():
        host.start()
    try:
        yield WatchedHost(host, corpus_limits, canary)
    finally:
        host.close()


class Chain:
    """The session the entries run in, call after call, per runtime (a new one once it ended)."""

    def __init__(self, watched: WatchedHost) -> None:
        self.watched = watched
        self.sessions: dict[str, uuid.UUID] = {}

    def session(self, runtime: str) -> uuid.UUID:
        if runtime not in self.sessions:
            self.sessions[runtime] = self.watched.open(runtime)
        return self.sessions[runtime]

    def forget(self, runtime: str) -> None:
        """The session ended (or a failed entry left it untrusted: then it ends now)."""
        session_id = self.sessions.pop(runtime, None)
        if session_id is not None and session_id in self.watched.live():
            self.watched.discard(session_id)


@pytest.fixture(scope="module")
def chain(watched: WatchedHost) -> Iterator[Chain]:
    chain = Chain(watched)
    yield chain
    for runtime in list(chain.sessions):
        chain.forget(runtime)


# --- the corpus' programs, one call each -------------------------------------------------------


def runtime_of(name: str) -> str:
    return str(CORPUS[name].get("runtime", MINIMAL))


def call_limits(name: str) -> dict[str, float]:
    if name in SHORT_WALL:
        return {"wall_timeout_s": SHORT_WALL_S, "cpu_time_s": SHORT_WALL_S}
    return {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=FINDINGS[name]))
        if name in FINDINGS
        else name
        for name in CALL_ENTRIES
    ],
)
def test_corpus_entry_in_a_session(name: str, watched: WatchedHost, chain: Chain) -> None:
    runtime = runtime_of(name)
    alone = name in ALONE
    session_id = watched.open(runtime) if alone else chain.session(runtime)
    before = watched.snapshot()
    try:
        call = run_entry(watched, name, session_id)
        session_check(name)(call.record)
        assert call.elapsed_s <= wall_s(call.record) + GRACE_S, f"after {call.elapsed_s:.1f} s"
        check_ending(name, call)
        if call.ended is ALIVE:
            watched.answers(session_id)
        if alone and call.ended is ALIVE:
            watched.end(session_id)
        elif call.ended is not ALIVE and not alone:
            chain.forget(runtime)
        watched.check(before)
    except BaseException:
        if alone:
            watched.discard(session_id)
        else:
            chain.forget(runtime)
        raise
    if name in FOLLOW_UPS:
        follow_up(watched, name, runtime)


def run_entry(watched: WatchedHost, name: str, session_id: uuid.UUID) -> Call:
    """One call of the entry's program (its host listener's port put in, and checked after)."""
    code: str = CORPUS[name]["code"]
    if "HOST_PORT" not in code:
        return watched.call(session_id, code, **call_limits(name))
    ipv6 = "HOST_PORT6" in code
    family, address = (socket.AF_INET6, "::1") if ipv6 else (socket.AF_INET, "127.0.0.1")
    with loopback_listener(family, address) as listener:
        code = re.sub(r"\bHOST_PORT6?\b", str(listener.port), code)
        call = watched.call(session_id, code, **call_limits(name))
        assert listener.connections() == 0
    return call


def check_ending(name: str, call: Call) -> None:
    """The session went on, or ended as the entry explains, the record saying the same."""
    allowed = ENDS.get(name, frozenset({ALIVE}))
    assert call.ended in allowed, f"session came out {call.ended!r}, expected one of {allowed}"
    if call.ended is not ALIVE:
        assert call.state.message, call.state
    status, sig = call.record.status, call.record.signal
    if status == "memory_limit":
        assert call.ended == EndReason.MEMORY_LIMIT, "the memory cap ends the session"
    if status in ("timeout", "output_limit"):
        killed = sig == signal.SIGKILL
        assert (call.ended is not ALIVE) == killed, f"{status} with signal {sig}: {call.ended}"


def follow_up(watched: WatchedHost, name: str, runtime: str) -> None:
    """A new session of the runtime finds nothing of what the entry did in its own."""
    code, stdout = FOLLOW_UPS[name]
    before = watched.snapshot()
    session_id = watched.open(runtime)
    try:
        record = watched.call(session_id, code).record
        if stdout is None:
            CHECKS[name](record)
        else:
            assert_ok(record, stdout)
    except BaseException:
        watched.discard(session_id)
        raise
    watched.end(session_id)
    watched.check(before)
    for directory in ("/tmp", "/var/tmp", "/dev/shm", str(Path.home())):
        assert not Path(directory, "sbx_marker").exists()


def test_two_sessions_bind_the_same_port(watched: WatchedHost) -> None:
    """bind_listen_port in two sessions at once: each binds 8265 in its own network namespace;
    the host's 8265 stays as it was."""
    name, port = "bind_listen_port", 8265
    open_before = answers(port, timeout_s=1)
    before = watched.snapshot()
    sessions = [watched.open(MINIMAL) for _ in range(2)]
    try:
        with ThreadPoolExecutor(max_workers=2) as executor:
            runs = [executor.submit(watched.call, s, CORPUS[name]["code"]) for s in sessions]
            open_during = answers(port, timeout_s=1)
            calls = [run.result() for run in runs]
        for session_id, call in zip(sessions, calls, strict=True):
            CHECKS[name](call.record)
            assert call.ended is ALIVE
            watched.answers(session_id)
    except BaseException:
        for session_id in sessions:
            watched.discard(session_id)
        raise
    for session_id in sessions:
        watched.end(session_id)
    watched.check(before)
    if not open_before:
        assert not open_during, "a session's listener is reachable from the host"


# --- the sessions' own entries: several calls, one or two sessions -----------------------------


@dataclass(frozen=True)
class Step:
    session: str
    call: Call | None
    """None for a step that ended the session."""


SessionCheck = Callable[[list[Step]], None]
SESSION_CHECKS: dict[str, SessionCheck] = {}
SESSION_SHORT_WALL = frozenset(
    {
        "session_sigint_blocked_ends_as_timeout",
        "session_swallowed_interrupt_ends_as_timeout",
        "session_interrupted_call_keeps_state",
        "session_hostile_repr_interrupted",
    }
)


def session_expect(name: str) -> Callable[[SessionCheck], SessionCheck]:
    def register(check: SessionCheck) -> SessionCheck:
        assert CORPUS[name]["category"] == "sessions", name
        SESSION_CHECKS[name] = check
        return check

    return register


def calls(steps: list[Step]) -> list[Call]:
    return [step.call for step in steps if step.call is not None]


@pytest.mark.parametrize("name", SESSION_ENTRIES)
def test_session_entry(name: str, watched: WatchedHost) -> None:
    entry: dict[str, Any] = CORPUS[name]
    runtime = str(entry.get("runtime", MINIMAL))
    limits = (
        {"wall_timeout_s": SHORT_WALL_S, "cpu_time_s": SHORT_WALL_S}
        if name in SESSION_SHORT_WALL
        else {}
    )
    before = watched.snapshot()
    sessions: dict[str, uuid.UUID] = {}
    steps: list[Step] = []
    try:
        for step in [{"session": "a", "code": entry["code"]}, *entry.get("then", [])]:
            label = step["session"]
            if label not in sessions:
                sessions[label] = watched.open(runtime)
            if "end" in step:
                assert step["end"] == "deleted", step
                watched.end(sessions[label])
                steps.append(Step(label, None))
                continue
            call = watched.call(sessions[label], step["code"], **limits)
            assert call.elapsed_s <= wall_s(call.record) + GRACE_S, f"{call.elapsed_s:.1f} s"
            steps.append(Step(label, call))
            watched.check(before)
        SESSION_CHECKS[name](steps)
        for session_id in sessions.values():
            if session_id in watched.live():
                watched.answers(session_id)
        for session_id in sessions.values():
            if session_id in watched.live():
                watched.end(session_id)
    except BaseException:
        for session_id in sessions.values():
            watched.discard(session_id)
        raise
    watched.check(before)


@session_expect("session_other_session_sees_nothing")
def _other_session_sees_nothing(steps: list[Step]) -> None:
    held, other, holder = calls(steps)
    assert_ok(held.record, "holding True\n")
    assert_ok(
        other.record,
        "variable False\nprocesses 0\nfiles 0\nabstract ConnectionRefusedError\nsysv 2\n",
    )
    assert_ok(holder.record, "variable True\nprocesses 1\nfiles 3\nabstract reached\nsysv True\n")
    assert {call.ended for call in (held, other, holder)} == {ALIVE}


@session_expect("session_leftovers_cannot_write_after_delete")
def _leftovers_cannot_write_after_delete(steps: list[Step]) -> None:
    started, probe = calls(steps)
    assert started.record.status == OK, started.record
    assert [step.session for step in steps] == ["a", "a", "b"]
    assert_ok(probe.record, "['out'] [] []\n")
    assert not probe.record.artifacts
    assert "sbx-leftover-writer" not in probe.record.model_dump_json()


@session_expect("session_child_output_stays_with_its_call")
def _child_output_stays_with_its_call(steps: list[Step]) -> None:
    forked, following = calls(steps)
    # While its call runs, the child's lines are the call's (they may land mid-line).
    assert forked.record.status == OK, forked.record
    assert "forked" in forked.record.stdout, forked.record.stdout
    assert_ok(following.record, "next\n")


@session_expect("session_out_emptied_between_calls")
def _out_emptied_between_calls(steps: list[Step]) -> None:
    written, emptied, again = calls(steps)
    assert_ok(written.record, "")
    assert {a.path: a.content() for a in written.record.artifacts} == {
        "out/a.txt": b"a",
        "out/sub/b.txt": b"b",
    }
    assert_ok(emptied.record, "[]\n")
    assert emptied.record.artifacts == [], "out/ a link to the working directory was followed"
    assert_ok(again.record, "False [] ['keep.txt', 'out']\n")
    assert again.record.artifacts == []


def _ends_as_timeout(steps: list[Step]) -> None:
    (call,) = calls(steps)
    assert (call.record.status, call.record.exit_code) == (TIMEOUT, None), call.record
    assert call.record.signal == signal.SIGKILL, call.record
    assert call.ended == EndReason.TIMEOUT, call.state
    assert call.elapsed_s <= SHORT_WALL_S + 1.0 + 1.0, f"killed after {call.elapsed_s:.1f} s"


session_expect("session_sigint_blocked_ends_as_timeout")(_ends_as_timeout)
session_expect("session_swallowed_interrupt_ends_as_timeout")(_ends_as_timeout)


@session_expect("session_interrupted_call_keeps_state")
def _interrupted_call_keeps_state(steps: list[Step]) -> None:
    assigned, interrupted, read = calls(steps)
    assert_ok(assigned.record, "")
    assert_interrupted(interrupted.record)
    assert interrupted.ended is ALIVE
    assert_ok(read.record, "")
    assert read.record.result == "42"


@session_expect("session_result_repr_capped")
def _result_repr_capped(steps: list[Step]) -> None:
    (call,) = calls(steps)
    assert_ok(call.record, "")
    cap = int(call.record.limits["max_output_bytes"])
    assert call.record.result is not None
    assert 0 < len(call.record.result.encode()) <= cap
    assert set(call.record.result) == {"r"}
    assert call.ended is ALIVE


@session_expect("session_hostile_repr_interrupted")
def _hostile_repr_interrupted(steps: list[Step]) -> None:
    (call,) = calls(steps)
    assert_interrupted(call.record)
    assert call.record.result is None
    assert call.ended is ALIVE
