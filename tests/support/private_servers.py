"""Private PostgreSQL and Redis servers that tests may stop and start at will.

The shared servers (PostgreSQL at 5432, Redis at 6379) are never stopped by a test: other
tests, and other sessions' CI, use them. These run on free loopback ports, keep nothing after
the test (PostgreSQL in a temporary directory, without fsync; Redis without persistence), and
are found through the binaries Debian's packages install.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.polling import eventually
from tests.support.ports import answers

__all__ = ["REDIS_SERVER", "PrivatePostgres", "PrivateRedis", "postgres_bin_dir"]

REDIS_SERVER = shutil.which("redis-server")
REDIS_OPTIONS = ("--save", "", "--appendonly", "no", "--protected-mode", "yes")
POSTGRES_USER = "postgres"
START_TIMEOUT_S = 30


class PrivateRedis:
    """A ``redis-server`` on a loopback port: no persistence, no disk."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._process is None and REDIS_SERVER is not None
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), *REDIS_OPTIONS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        eventually(self.answers, 10, f"redis-server on port {self.port} answers")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert not self.answers()

    def answers(self) -> bool:
        return answers(self.port, b"PING\r\n", b"+PONG")


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory (Debian's layout), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(n) for n in part.split(".") if n.isdigit())


class PrivatePostgres:
    """A PostgreSQL server of its own in a temporary directory, run as the ``postgres`` user
    (``initdb`` refuses root), trust authentication, listening on 127.0.0.1 only."""

    def __init__(self, port: int) -> None:
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None, "no PostgreSQL binaries under /usr/lib/postgresql"
        self.bin_dir = bin_dir
        self.port = port
        self.url = f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{port}/postgres"
        self.root = Path(tempfile.mkdtemp(prefix="exec-agent-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self._initialised = False

    def _as_postgres(self, *command: str) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", POSTGRES_USER, "--"]
        subprocess.run(
            [*prefix, *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def _initialise(self) -> None:
        self.sockets.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, POSTGRES_USER)
            shutil.chown(self.sockets, POSTGRES_USER)
        self._as_postgres(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            POSTGRES_USER,
            "--no-sync",
        )
        self._initialised = True

    def start(self) -> None:
        if not self._initialised:
            self._initialise()
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )

    def stop(self) -> None:
        """Stop now (``fast``: open sessions are cut, as in a crash or failover)."""
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
            )
        assert not self.answers()

    def answers(self) -> bool:
        return answers(self.port)

    def remove(self) -> None:
        with_server = (self.data / "postmaster.pid").exists()
        if with_server:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
