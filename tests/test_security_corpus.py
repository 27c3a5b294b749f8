"""The adversarial corpus (tests/data/security_corpus.json) against the sandbox engine.

Every entry but the HTTP ones (the API's tests take those) is one test: its expectation,
checked precisely (tests/support/corpus_checks.py), and the corpus' invariants
(tests/data/security_corpus.README.md): D and S on every record, P, H and F after the case (see
``WatchedPool`` in tests/support/watched_pool.py). This module says how each entry runs.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from executors import ExecutionRecord
from tests.support.corpus import CORPUS, ENGINE_ENTRIES, request_fields
from tests.support.corpus_checks import CHECKS, assert_ok, wall_s
from tests.support.listeners import loopback_listener
from tests.support.ports import answers
from tests.support.statuses import OK
from tests.support.watched_pool import HostSnapshot, PoolFactory, WatchedPool

pytestmark = pytest.mark.sandbox

SLOW = (
    "c_level_bignum",
    "wall_clock_sleep",
    "ignore_termination_signals",
    "nondaemon_thread_outlives_main",
    "thread_bomb",
)
"""Entries that run until the wall limit: they run all at once, each in a slot of its own."""
GRACE_S = 3.0
"""A generous GRACE: every answer comes within WALL + GRACE_S."""
ZOMBIE_FARM_RUNS = 10
SYSV_SHM_RUNS = 3


def test_every_engine_entry_has_its_check() -> None:
    assert set(CHECKS) == set(ENGINE_ENTRIES)


# --- how each entry runs ----------------------------------------------------------------------

Scenario = Callable[[str, pytest.FixtureRequest], None]
SCENARIOS: dict[str, Scenario] = {}


def scenario(*names: str) -> Callable[[Scenario], Scenario]:
    def register(run: Scenario) -> Scenario:
        for name in names:
            SCENARIOS[name] = run
        return run

    return register


@pytest.mark.parametrize("name", ENGINE_ENTRIES)
def test_corpus_entry(name: str, request: pytest.FixtureRequest) -> None:
    SCENARIOS.get(name, run_once)(name, request)


def run_checked(sandbox: WatchedPool, name: str, code: str | None = None) -> ExecutionRecord:
    """Run the entry (or ``code`` for it), check its expectation and the answer's delay."""
    record, elapsed = sandbox.timed(
        sandbox.request(code or CORPUS[name]["code"], **request_fields(name))
    )
    CHECKS[name](record)
    assert elapsed <= wall_s(record) + GRACE_S, f"answered after {elapsed:.1f} s"
    return record


def run_once(name: str, request: pytest.FixtureRequest) -> None:
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    with sandbox.watch():
        run_checked(sandbox, name)


# Slow entries: all at once in a wide pool, once per module; each test checks its own record
# and the invariants after the batch.


@dataclass(frozen=True)
class Batch:
    pool: WatchedPool
    before: HostSnapshot
    results: dict[str, tuple[ExecutionRecord, float]]


@pytest.fixture(scope="module")
def wide_pool(pool_factory: PoolFactory) -> Iterator[WatchedPool]:
    pool = pool_factory(slots=len(SLOW))
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def slow_batch(wide_pool: WatchedPool) -> Batch:
    before = wide_pool.snapshot()
    requests = [wide_pool.request(CORPUS[name]["code"]) for name in SLOW]
    with ThreadPoolExecutor(max_workers=len(SLOW)) as executor:
        results = list(executor.map(wide_pool.timed, requests))
    return Batch(wide_pool, before, dict(zip(SLOW, results, strict=True)))


@scenario(*SLOW)
def run_in_slow_batch(name: str, request: pytest.FixtureRequest) -> None:
    batch: Batch = request.getfixturevalue("slow_batch")
    record, elapsed = batch.results[name]
    CHECKS[name](record)
    assert elapsed <= wall_s(record) + GRACE_S, f"answered after {elapsed:.1f} s"
    batch.pool.check(batch.before)


@scenario("zombie_farm")
def run_zombie_farm(name: str, request: pytest.FixtureRequest) -> None:
    """Many runs at once; then no zombie is left (checked by ``watch``) and all is well."""
    pool: WatchedPool = request.getfixturevalue("wide_pool")
    with pool.watch():
        records = pool.run_all([pool.request(CORPUS[name]["code"])] * ZOMBIE_FARM_RUNS)
        for record in records:
            CHECKS[name](record)


@scenario("sysv_shm_outlives_job")
def run_repeatedly(name: str, request: pytest.FixtureRequest) -> None:
    """Over and over: nothing outlives a run (no segment on the host) to pile up."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    for _ in range(SYSV_SHM_RUNS):
        with sandbox.watch():
            run_checked(sandbox, name)


@scenario("dev_shm_fill")
def run_then_look_in_every_slot(name: str, request: pytest.FixtureRequest) -> None:
    """The filled /dev/shm was the job's own: every next job starts with empty ones."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    with sandbox.watch():
        run_checked(sandbox, name)
        probe = "import os; print(os.listdir('/dev/shm'), os.listdir('/tmp'), os.listdir('.'))"
        for record in sandbox.run_on_every_slot(probe):
            assert_ok(record, "[] [] ['out']\n")


@scenario("write_outside_workdir_persistence")
def run_twice(name: str, request: pytest.FixtureRequest) -> None:
    """Run, then again in every slot: the second runs find nothing of the first."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    with sandbox.watch():
        run_checked(sandbox, name)
        for record in sandbox.run_on_every_slot(CORPUS[name]["code"]):
            CHECKS[name](record)
    for directory in ("/tmp", "/var/tmp", "/dev/shm", str(Path.home())):
        assert not Path(directory, "sbx_marker").exists()


@scenario("usercustomize_persistence")
def run_then_control(name: str, request: pytest.FixtureRequest) -> None:
    """The planted usercustomize never runs: the next job in every slot prints just hello."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    with sandbox.watch():
        run_checked(sandbox, name)
        for record in sandbox.run_on_every_slot('print("hello")'):
            assert_ok(record, "hello\n")  # never 'PWNED-next-run'


FRESH_MODULES = (
    "import numpy, pandas, matplotlib, matplotlib.pyplot as plt\n"
    "print(numpy.sum([1, 2]), callable(numpy.linalg.norm), numpy.__version__ != '0.0-evil',\n"
    "      pandas.get_option('display.max_rows'), int(pandas.DataFrame({'a': [1, 2]}).sum()['a']),\n"
    "      matplotlib.rcParams['lines.linewidth'], list(plt.rcParams['figure.figsize']),\n"
    "      plt.savefig.__module__)\n"
)
FRESH_MATPLOTLIB_DIR = (
    "import os, matplotlib\n"
    "print(matplotlib.rcParams['lines.linewidth'], os.path.exists('/tmp/matplotlib/matplotlibrc'),\n"
    "      os.path.exists('/tmp/matplotlib/fontlist-v390.json'))\n"
)


@scenario("runtime_preloaded_module_tampering", "runtime_matplotlib_cache_write")
def run_then_find_the_runtime_untouched(name: str, request: pytest.FixtureRequest) -> None:
    """What one job changed in the preloaded modules or matplotlib's directories, no next job
    in any slot sees."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    with sandbox.watch():
        run_checked(sandbox, name)
        if name == "runtime_preloaded_module_tampering":
            probe = FRESH_MODULES
            expected = "3 True True 60 3 1.5 [6.4, 4.8] matplotlib.pyplot\n"
        else:
            probe, expected = FRESH_MATPLOTLIB_DIR, "1.5 False False\n"
        for record in sandbox.run_on_every_slot(probe):
            assert_ok(record, expected)


# Network entries: listeners on the host's loopback, never any other address.


@scenario("tcp_egress_to_host_listener", "ipv6_to_host_listener")
def run_against_a_host_listener(name: str, request: pytest.FixtureRequest) -> None:
    """The job gets the port of a listener on the host's loopback; no connection arrives."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    ipv6 = name == "ipv6_to_host_listener"
    family, address = (socket.AF_INET6, "::1") if ipv6 else (socket.AF_INET, "127.0.0.1")
    with loopback_listener(family, address) as listener, sandbox.watch():
        code = re.sub(r"\bHOST_PORT6?\b", str(listener.port), CORPUS[name]["code"])
        run_checked(sandbox, name, code)
        assert listener.connections() == 0


@scenario("bind_listen_port")
def run_two_at_once(name: str, request: pytest.FixtureRequest) -> None:
    """Two copies at once both bind 8265, each in its own network; the host's stays as it was."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    port = 8265
    open_before = answers(port, timeout_s=1)
    with sandbox.watch(), ThreadPoolExecutor(max_workers=2) as executor:
        request_ = sandbox.request(CORPUS[name]["code"])
        runs = [executor.submit(sandbox.timed, request_) for _ in range(2)]
        time.sleep(1.0)  # both are listening (for 2 s) by now
        open_during = answers(port, timeout_s=1)
        for run in runs:
            record, elapsed = run.result()
            CHECKS[name](record)
            assert elapsed <= wall_s(record) + GRACE_S
    if not open_before:
        assert not open_during, "a job's listener is reachable from the host"


@scenario("lateral_other_jobs_workdirs")
def run_beside_another_job(name: str, request: pytest.FixtureRequest) -> None:
    """While another job holds files in its workdir, /tmp and /dev/shm, none can be seen."""
    sandbox: WatchedPool = request.getfixturevalue("sandbox")
    marker = f"lateral{secrets.token_hex(8)}"
    other = (
        "import os, time\n"
        f"open('{marker}.py', 'w').write('{marker}')\n"
        f"os.mkdir('/tmp/{marker}'); open('/tmp/{marker}/{marker}.py', 'w').write('{marker}')\n"
        f"open('/dev/shm/{marker}', 'w').write('{marker}')\n"
        "print(time.time(), flush=True)\n"
        "time.sleep(3)\n"
    )
    with sandbox.watch(), ThreadPoolExecutor(max_workers=1) as executor:
        holder = executor.submit(sandbox.run, other)
        time.sleep(1.0)
        record = run_checked(sandbox, name)
        held = holder.result()
    assert held.status == OK, held
    assert record.started_at is not None
    assert float(held.stdout) < record.started_at.timestamp(), "the files came too late"
    assert marker not in record.stdout
