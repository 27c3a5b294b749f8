"""A real ``exec-agent serve`` process, for the tests that must meet the service as a user does
(the OpenAPI document and its fuzzing, the documentation and the playground in a browser).

It joins the session's Ray (``RAY_ADDRESS``) rather than starting a second one on this 2-core
machine, so its replicas and the programs they run live inside the test run's PID namespace and
cgroup like every other test's. Its database is a SQLite file of its own; its key is made by
``exec-agent keys create``, as the README tells a user to.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.polling import polled
from tests.support.ports import free_port

__all__ = ["LiveServer", "copy_terminal", "live_server"]

START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 90.0
SECRET = "live-server-test-secret-0123456789abcdef"


@dataclass(frozen=True)
class LiveServer:
    """A running ``exec-agent serve``: its address, a key of its own, its logs, and the
    environment it runs with (for ``exec-agent`` commands on its database)."""

    url: str
    key: str
    stdout: Path
    stderr: Path
    environment: dict[str, str]

    def logs(self) -> str:
        """What the process wrote so far (for a failing test's message)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def _exec_agent() -> str:
    return str(Path(sys.executable).parent / "exec-agent")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def copy_terminal(master: int, to: Path) -> None:
    """Append what the pseudo-terminal's other end shows to ``to`` until every writer closed
    it (the process and its children ended: EIO)."""
    with to.open("ab") as out:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out.write(data)
            out.flush()
    os.close(master)


@contextlib.contextmanager
def live_server(
    workdir: Path, *, terminal: bool = False, **environment: str
) -> Iterator[LiveServer]:
    """``exec-agent serve`` on a free port, joined to the session's Ray (which must be up: take
    the ``ray_session`` fixture), until the block ends; then interrupted (it drains) and Serve
    shut down, so that the next module's deployment starts its own. ``environment``: settings
    of this server (``API_DOCS="false"``). ``terminal``: its standard input, output and error
    are a pseudo-terminal, as a person's shell gives it; what it shows lands in ``stdout``
    (``stderr`` stays empty)."""
    import ray
    from ray import serve

    port = free_port()
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{workdir / 'live.db'}",
        "API_KEY_SECRET": SECRET,
        "RATE_LIMIT_PER_MINUTE": "100000",
        "MAX_CONCURRENT_EXECUTIONS": "1",
        "EXECUTOR_NUM_REPLICAS_MIN": "1",
        "EXECUTOR_NUM_REPLICAS_MAX": "1",
        "SESSION_HOSTS_MIN": "0",
        **environment,
    }
    env.pop("REDIS_URL", None)
    url = f"http://127.0.0.1:{port}"
    stdout, stderr = workdir / "serve.stdout", workdir / "serve.stderr"
    copier = None
    with stdout.open("wb") as out, stderr.open("wb") as err:
        # cwd: the workdir, so that no .env of the repository is read.
        if terminal:
            master, child = pty.openpty()
            process = subprocess.Popen(
                [_exec_agent(), "serve"],
                cwd=workdir,
                env=env,
                stdin=child,
                stdout=child,
                stderr=child,
            )
            os.close(child)
            copier = threading.Thread(target=copy_terminal, args=(master, stdout), daemon=True)
            copier.start()
        else:
            process = subprocess.Popen(
                [_exec_agent(), "serve"], cwd=workdir, env=env, stdout=out, stderr=err
            )
    try:
        up = polled(lambda: process.poll() is not None or _ready(url), START_TIMEOUT_S)
        logs = stdout.read_text(errors="replace") + stderr.read_text(errors="replace")
        assert up and process.poll() is None, f"exec-agent serve did not come up:\n{logs[-4000:]}"
        made = subprocess.run(
            [_exec_agent(), "keys", "create", "--name", "live-test"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        yield LiveServer(url=url, key=key, stdout=stdout, stderr=stderr, environment=env)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if copier is not None:
            copier.join(STOP_TIMEOUT_S)
        # A joined `exec-agent serve` leaves the cluster's Serve (and its proxy) running.
        serve.shutdown()  # type: ignore[no-untyped-call]
