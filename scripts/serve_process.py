"""``exec-agent serve`` in a subprocess, and the small helpers the scripts share.

Used by ``scripts/bench.py`` (``benchlib/``: its ``http`` and ``humaneval`` benchmarks) and
``scripts/soak.py`` (``soaklib/``). scripts/ is not a package: they import this module as
``serve_process`` (with scripts/ on ``sys.path``: its ``[0]`` when a script runs, put there by
the script when loaded by path).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SLOT_UID_BASE = 60000
"""The engine's default: slot N of a replica runs as host uid 60000 + N (when root)."""
DEFAULT_SLOTS = 2
"""The service's MAX_CONCURRENT_EXECUTIONS when nothing sets it."""
RATE_LIMIT_PER_MINUTE = 100_000_000
"""The keys' limit: never the limiter that answers."""
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class ServeProcess:
    """``exec-agent serve`` in a subprocess of its own session: embedded (SQLite in
    ``workdir``), on free loopback ports (API, Ray's GCS, metrics, HAProxy's stats and
    metrics), never joining a Ray.

    ``ingress`` is its ``SERVE_INGRESS``. ``slots`` (its MAX_CONCURRENT_EXECUTIONS, on one
    executor replica) and ``executor_queue`` (EXECUTOR_MAX_QUEUED_REQUESTS): None leaves them
    to the environment and the service's defaults. ``extra_env`` comes last and wins.
    """

    STRIPPED = ("RAY_ADDRESS", "REDIS_URL", "DATABASE_URL", "ENVIRONMENT")

    def __init__(
        self,
        workdir: Path,
        *,
        ingress: str = "proxy",
        slots: int | None = 2,
        executor_queue: int | None = 4,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_path = workdir / "serve.db"
        self.log_path = workdir / "serve.log"
        self.secret = secrets.token_urlsafe(32)
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in self.STRIPPED and not name.startswith("RAY_SERVE_")
        }
        env |= {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "RAY_GCS_PORT": str(free_port()),
            "METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "DATABASE_URL": f"sqlite:///{self.database_path}",
            "API_KEY_SECRET": self.secret,
            "RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT_PER_MINUTE),
            "MAX_CONCURRENT_PER_KEY": "1000",
            "SERVE_INGRESS": ingress,
        }
        if slots is not None:
            env |= {
                "MAX_CONCURRENT_EXECUTIONS": str(slots),
                "EXECUTOR_NUM_REPLICAS_MIN": "1",
                "EXECUTOR_NUM_REPLICAS_MAX": "1",
            }
        if executor_queue is not None:
            env["EXECUTOR_MAX_QUEUED_REQUESTS"] = str(executor_queue)
        env.pop("RAY_METRICS_EXPORT_PORT", None)  # METRICS_PORT's old name
        self.env = env | (extra_env or {})
        self.slots = int(self.env.get("MAX_CONCURRENT_EXECUTIONS", DEFAULT_SLOTS))
        self.exec_agent = str(Path(sys.executable).with_name("exec-agent"))
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.start_s: float | None = None
        self.keys: list[str] = []
        self._prepared = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def slot_uids(self) -> range:
        return range(SLOT_UID_BASE, SLOT_UID_BASE + self.slots)

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.exec_agent, *argv],
            cwd=self.workdir,  # no .env from elsewhere
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"exec-agent {' '.join(argv)}: exit {done.returncode}: {done.stderr}"
            )
        return done

    def prepare(self) -> None:
        """Create (or migrate) the database: keys can be made before the service starts."""
        if not self._prepared:
            self.cli("db", "upgrade")
            self._prepared = True

    def create_key(self, name: str, *, max_concurrent: int | None = None) -> str:
        """A new key (its rate limit never reached); ``max_concurrent`` is its in-flight cap,
        None: the service's MAX_CONCURRENT_PER_KEY (1000 here)."""
        self.prepare()
        argv = ["keys", "create", "--name", name]
        argv += ["--rate-limit-per-minute", str(RATE_LIMIT_PER_MINUTE)]
        if max_concurrent is not None:
            argv += ["--max-concurrent", str(max_concurrent)]
        created = self.cli(*argv)
        key = created.stdout.strip().splitlines()[-1]
        self.keys.append(key)
        return key

    def launch(self) -> subprocess.Popen[bytes]:
        """Start ``exec-agent serve`` (after ``db upgrade``); do not wait for it."""
        self.prepare()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.exec_agent, "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: what Ray leaves is killed whole
            )
        return self.process

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Launch and wait until ``/health/ready`` answers 200; the seconds it took (also
        :attr:`start_s`)."""
        began = time.monotonic()
        process = self.launch()
        while time.monotonic() < began + timeout_s:
            if process.poll() is not None:
                raise RuntimeError(
                    f"exec-agent serve exited {process.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2.0).status_code == 200:
                    self.start_s = time.monotonic() - began
                    return self.start_s
            time.sleep(0.5)
        raise RuntimeError(f"exec-agent serve not ready within {timeout_s} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(
        self, timeout_s: float = STOP_TIMEOUT_S, *, drain_signal: int = signal.SIGTERM
    ) -> int | None:
        """``drain_signal`` (SIGTERM or SIGINT: either drains), then wait; the exit status,
        None if it had to be killed. What it leaves behind stays for the caller to see (then
        :meth:`kill_group`)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(drain_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)
        self.exit_code = process.poll()
        if self.exit_code is None:
            self.kill_group()
        return self.exit_code

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the service's process group."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
