"""The engine run by a service that is not root (a pod without privileges, say).

bubblewrap then builds the slots in a user namespace of its own; cgroups are out of reach,
so the pool reports those layers missing and runs with rlimits for them. The service is
started here as ``nobody`` with the system's Python 3.11 (the development interpreter lives
under /root, which ``nobody`` cannot read) and the project's installed packages.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.sandbox

SYSTEM_PYTHON = "/usr/bin/python3.11"
SERVICE = """
import json
from executors import ExecutionRequest, Limits, SandboxConfig, SandboxPool

limits = Limits(wall_timeout_s=5, cpu_time_s=5, memory_bytes=256 << 20,
                max_output_bytes=1 << 20, max_processes=64, max_file_bytes=8 << 20,
                disk_bytes=8 << 20)
programs = {
    "whoami": "import os; print(os.getuid(), os.getcwd(), os.getpid())",
    "database": "import socket; socket.create_connection(('127.0.0.1', 5432), timeout=1)",
    "memory": "b = bytearray(8 << 30)",
    "plant": %r,
    "find": %r,
}
with SandboxPool(SandboxConfig(python_executable=%r), slots=1) as pool:
    out = {"isolation": pool.isolation.summary()}
    for name, code in programs.items():
        out[name] = pool.run(ExecutionRequest(code=code, limits=limits)).to_api()
print(json.dumps(out))
"""

PLANTED = {
    "/dev/big": 48 << 20,  # the review's 48 MiB under /dev, past an 8 MiB disk cap
    "/dev/shm/big": 48 << 20,
    "/etc/ld.so.preload": 1,
    "/planted": 1,
    "/scratch/planted": 1,
    "/opt/planted": 1,
    "/tmp/planted": 1,
    "/work/planted": 1,
}
"""Where a job tries to leave something for the next job of its slot, and how many bytes."""
PLANT = f"""
import json
written = {{}}
for path, size in {PLANTED!r}.items():
    try:
        with open(path, "wb") as f:
            for _ in range(max(1, size >> 20)):
                f.write(b"/work/evil.so " if size == 1 else bytes(1 << 20))
    except OSError as exc:
        pass
    try:
        import os
        written[path] = os.path.getsize(path)
    except OSError:
        written[path] = None
print(json.dumps(written))
"""
FIND = f"""
import json, os, subprocess
true = subprocess.run(["/bin/true"], capture_output=True, text=True)
found = {{path: os.path.exists(path) for path in {list(PLANTED)!r}}}
print(json.dumps({{"found": found, "true": [true.returncode, true.stderr]}}))
"""


@pytest.fixture(scope="module")
def unprivileged_run() -> dict[str, dict[str, object]]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("bwrap") is None:
        pytest.skip("needs root (to become nobody), setpriv and bubblewrap")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON}, an interpreter nobody can run")
    nobody = pwd.getpwnam("nobody")
    packages = sysconfig.get_paths()["purelib"]
    for needed in (REPO / "executors" / "__init__.py", Path(packages) / "pydantic"):
        if not all(os.stat(d).st_mode & stat.S_IXOTH for d in needed.parents):
            pytest.skip(f"{needed} is closed to other users: nobody cannot import the project")
    result = subprocess.run(
        [
            str(shutil.which("setpriv")),
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            SERVICE % (PLANT, FIND, SYSTEM_PYTHON),
        ],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": f"{REPO}:{packages}"},
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: dict[str, dict[str, object]] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_without_root_the_slots_are_built_in_a_user_namespace(
    unprivileged_run: dict[str, dict[str, object]],
) -> None:
    isolation = unprivileged_run["isolation"]
    assert isolation["mode"] == "bubblewrap-userns"
    assert isolation["host_uid"] == pwd.getpwnam("nobody").pw_uid
    assert isolation["missing"] == ["cgroup_memory", "cgroup_pids", "cgroup_cpu"]


def test_without_root_programs_still_run_isolated(
    unprivileged_run: dict[str, dict[str, object]],
) -> None:
    whoami = unprivileged_run["whoami"]
    assert whoami["status"] == "ok"
    uid, cwd, pid = str(whoami["stdout"]).split()
    assert (uid, cwd, pid) == ("1000", "/work", "2")
    database = unprivileged_run["database"]
    assert database["status"] == "nonzero_exit"
    assert "Connection refused" in str(database["stderr"])
    assert unprivileged_run["memory"]["status"] == "memory_limit"


def test_without_root_nothing_outside_the_jobs_own_tmpfs_is_writable(
    unprivileged_run: dict[str, dict[str, object]],
) -> None:
    """The root and /dev are bubblewrap's tmpfs, owned by the sandbox's uid in a user namespace:
    read-only now, and the job's own tmpfs (working directory, /tmp, /dev/shm) keeps its cap."""
    plant = unprivileged_run["plant"]
    assert plant["status"] == "ok", plant
    written = json.loads(str(plant["stdout"]))
    assert {path: written[path] for path in ("/dev/big", "/etc/ld.so.preload", "/planted",
                                             "/scratch/planted", "/opt/planted")} == {
        "/dev/big": None,
        "/etc/ld.so.preload": None,
        "/planted": None,
        "/scratch/planted": None,
        "/opt/planted": None,
    }  # fmt: skip
    assert written["/dev/shm/big"] <= 8 << 20  # the disk cap holds (and fills the job's tmpfs)
    assert written["/tmp/planted"] is not None and written["/work/planted"] is not None


def test_without_root_the_next_job_finds_nothing_of_the_last(
    unprivileged_run: dict[str, dict[str, object]],
) -> None:
    find = unprivileged_run["find"]
    assert find["status"] == "ok", find
    seen = json.loads(str(find["stdout"]))
    assert not any(seen["found"].values()), seen["found"]
    assert seen["true"] == [0, ""]  # no planted /etc/ld.so.preload honoured


def test_without_root_read_only_root_is_claimed_because_it_was_tried(
    unprivileged_run: dict[str, dict[str, object]],
) -> None:
    assert "read_only_root" in unprivileged_run["isolation"]["layers"]  # type: ignore[operator]
