"""The cgroup v2 job cgroup, on a directory laid out like cgroupfs (this host runs v1).

The v1 code is exercised for real by every sandbox test here; v2's file names and
arithmetic are checked against files shaped like the kernel's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from executors._sandbox import _cgroups
from executors._sandbox._cgroups import _V2

MIB = 1024 * 1024


@pytest.fixture
def v2_dir(tmp_path: Path) -> Path:
    files = {
        "memory.max": "",
        "memory.swap.max": "",
        "memory.peak": "",
        "pids.max": "",
        "cgroup.procs": "",
        "memory.current": "4096\n",
        "cpu.stat": "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n",
        "memory.stat": "anon 0\nfile 8192\nshmem 0\n",
        "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    return tmp_path


def test_v2_prepare_sets_limits_and_reports_what_is_charged(v2_dir: Path) -> None:
    cgroup = _V2([v2_dir])
    assert cgroup.prepare(256 * MIB, 66) == 4096
    assert (v2_dir / "memory.max").read_text() == str(256 * MIB)
    assert (v2_dir / "memory.swap.max").read_text() == "0"
    assert (v2_dir / "pids.max").read_text() == "66"
    assert (v2_dir / "memory.peak").read_text() == "0"


def test_v2_usage_counts_cpu_from_the_jobs_start(v2_dir: Path) -> None:
    cgroup = _V2([v2_dir])
    cgroup.prepare(256 * MIB, 66)
    (v2_dir / "cpu.stat").write_text("usage_usec 251000\nuser_usec 200000\n")
    (v2_dir / "memory.peak").write_text("5000000\n")
    usage = cgroup.usage()
    assert usage.cpu_time_s == pytest.approx(0.25)
    assert usage.peak_memory_bytes == 5000000
    assert usage.oom_kills == 2
    assert cgroup.oom_kills() == 2


def test_limits_are_written_only_when_they_change(v2_dir: Path) -> None:
    cgroup = _V2([v2_dir])
    cgroup.prepare(256 * MIB, 66)
    (v2_dir / "pids.max").write_text("changed by someone")
    cgroup.prepare(256 * MIB, 66)
    assert (v2_dir / "pids.max").read_text() == "changed by someone"
    cgroup.prepare(128 * MIB, 66)
    assert (v2_dir / "memory.max").read_text().startswith(str(128 * MIB))


def test_settle_waits_for_a_jobs_leftovers_to_go(
    v2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cgroups, "SETTLE_TIMEOUT_S", 0.2)
    cgroup = _V2([v2_dir])
    (v2_dir / "memory.stat").write_text(f"anon {64 * MIB}\nfile 0\nshmem {64 * MIB}\n")
    assert cgroup._held_bytes() == 128 * MIB
    cgroup.settle()  # gives up after the timeout: the next job still runs
    (v2_dir / "memory.stat").write_text("anon 0\nfile 0\nshmem 0\n")
    assert cgroup._held_bytes() == 0
