"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from executors import (
    TERMINAL_STATUSES,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SandboxConfig,
    SandboxPool,
)
from serve_app.db import Database, migrate
from serve_app.db.models import Base
from serve_app.settings import Settings

MIB = 1024 * 1024


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session: starting one costs seconds, so tests share it.

    Always a new local cluster (``address="local"``), never one named by ``RAY_ADDRESS``;
    on loopback, with a small object store and no dashboard, sized for a 2-core machine.
    """
    import ray

    from serve_app.api.middleware import PROXY_MIDDLEWARES_IMPORT_PATH
    from serve_app.deployment import PROXY_CALLBACK_VARIABLE

    # As `exec-agent serve` does: Serve's proxy replaces request ids it would echo unsafely.
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_MIDDLEWARES_IMPORT_PATH)
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=200 * MIB,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="exec-agent-tests",
    )
    yield
    ray.shutdown()


# --- the sandbox engine under watch (tests/test_security_corpus.py, tests/test_engine.py) ---
#
# The invariants of tests/data/security_corpus.README.md, checked on the host side:
#   D (data) and S (secrets) on every record a WatchedPool returns;
#   P (processes), H (health) and F (files) after a case, by ``WatchedPool.watch()``.

ZYGOTE_SCRIPT = "/opt/exec-agent/zygote.py"
SLOT_UID_BASE = 62000
"""Our pools' slots run as host uids from here up, ``POOL_UID_STRIDE`` apart per pool; not the
engine's default 60000, which other pools on the same host use (the Ray tests' executors, a
benchmark): the process checks go by uid, so they must see our slots' processes only."""
POOL_UID_STRIDE = 100
SETTLE_S = 1.0
"""Invariant P: one second after the answer, nothing of the job still runs."""
EVERY_SLOT_HOLD_S = 0.25
"""How long each of ``run_on_every_slot``'s jobs keeps its slot, so that they overlap."""
SPARE_MAX_PROCESSES = 2
"""Between jobs a slot may keep one spare job sandbox ready (its init and program process)."""
SYSV_IPC_KINDS = ("shm", "msg", "sem")
OVERFLOW_UID = 65534
"""What the host shows for a uid that a job's user namespace does not map."""
CONTROL_CODE = 'print("hello")'

ALLOWED_ENV = frozenset(
    {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "MALLOC_ARENA_MAX",
        "PWD",
    }
)
"""The whole environment a sandboxed program may see."""

OK = ExecutionStatus.OK
NONZERO_EXIT = ExecutionStatus.NONZERO_EXIT
CRASHED = ExecutionStatus.CRASHED
TIMEOUT = ExecutionStatus.TIMEOUT
MEMORY_LIMIT = ExecutionStatus.MEMORY_LIMIT
OUTPUT_LIMIT = ExecutionStatus.OUTPUT_LIMIT
INTERNAL_ERROR = ExecutionStatus.INTERNAL_ERROR


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
"""The machine's PostgreSQL (trust auth); tests work in schemas of their own."""


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped afterwards."""
    name = f"exec_agent_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(
        POSTGRES_URL, poolclass=NullPool, connect_args={"connect_timeout": 3}
    )
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    except OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) unreachable: {reason}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


# --- migrated databases for the persistence tests (tests/test_db*.py, tests/test_cache.py)

SMALL_LIMITS = Limits(
    wall_timeout_s=2,
    cpu_time_s=1.5,
    memory_bytes=64 * MIB,
    max_output_bytes=4096,
    max_processes=4,
    max_file_bytes=MIB,
)
"""Limits of stored requests in tests that run nothing."""
DATABASE_BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def empty_database(backend: str, directory: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file in ``directory``, or a PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'exec_agent.db'}"
    else:
        with postgres_schema() as url:
            yield url


def migrated_sqlite_settings(directory: Path, **overrides: Any) -> Settings:
    """Settings on a new, migrated SQLite database in ``directory``, with ``overrides``."""
    settings = Settings(
        _env_file=None, database_url=f"sqlite:///{directory / 'service.db'}", **overrides
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture(scope="session", params=DATABASE_BACKENDS)
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per backend for the session (tests clean up after themselves)."""
    with empty_database(request.param, tmp_path_factory.mktemp("db")) as url:
        migrate.upgrade(Settings(database_url=url))
        yield url


@pytest.fixture
def database(migrated_url: str) -> Iterator[Database]:
    """The session's migrated database, emptied after the test."""
    database = Database.from_url(migrated_url)
    yield database
    with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    database.dispose()


@dataclass(frozen=True)
class Canary:
    """A secret planted where the service keeps its own (invariant S): never in a record."""

    token: str
    home_file: Path

    @property
    def database_url(self) -> str:
        return f"postgresql://exec_agent:{self.token}@127.0.0.1:5432/exec_agent"

    @contextlib.contextmanager
    def planted(self) -> Iterator[None]:
        """The service's database secrets in the environment, as when it starts its pools.

        Only for the pool's start (when slots are spawned): the rest of the suite keeps its
        own database settings.
        """
        saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "PGPASSWORD")}
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["PGPASSWORD"] = self.token
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@dataclass(frozen=True)
class HostProcess:
    pid: int
    ppid: int
    uid: int
    state: str  # psutil.STATUS_*
    name: str
    cmdline: str
    started: float
    """With the pid, names one process even if the pid is reused."""
    pid_namespace: str

    @property
    def zombie(self) -> bool:
        """Exited, not yet reaped: gone for every check but the zombie count."""
        return self.state == psutil.STATUS_ZOMBIE

    @property
    def key(self) -> tuple[int, float]:
        return self.pid, self.started

    def __str__(self) -> str:
        return f"pid {self.pid} (uid {self.uid}, {self.state}, ppid {self.ppid}): {self.cmdline[:200]!r}"


def _read_process(pid: int) -> HostProcess | None:
    fields = ["ppid", "uids", "status", "name", "cmdline", "create_time"]
    try:
        info = psutil.Process(pid).as_dict(fields)  # a zombie's cmdline: None
        namespace = os.readlink(f"/proc/{pid}/ns/pid")  # not one of psutil's
    except (psutil.NoSuchProcess, OSError):  # gone meanwhile, or a kernel thread's namespace link
        return None
    return HostProcess(
        pid=pid,
        ppid=info["ppid"],
        uid=info["uids"].real,
        state=info["status"],
        name=info["name"],
        cmdline=" ".join(info["cmdline"] or ()).strip(),
        started=info["create_time"],
        pid_namespace=namespace,
    )


def host_processes() -> list[HostProcess]:
    """Every process this (possibly namespaced) /proc shows."""
    found = map(_read_process, psutil.pids())
    return [process for process in found if process is not None]


def _sysv_ipc_objects() -> dict[str, frozenset[tuple[str, int, int]]]:
    """Kind -> (key and id, owner uid, creator uid) of every SysV IPC object on the host."""
    objects = {}
    for kind in SYSV_IPC_KINDS:
        path = Path("/proc/sysvipc", kind)
        header, *lines = path.read_text().splitlines() if path.exists() else [""]
        uid, cuid = header.split().index("uid"), header.split().index("cuid")
        objects[kind] = frozenset(
            (" ".join(f[:2]), int(f[uid]), int(f[cuid])) for f in map(str.split, lines)
        )
    return objects


def _host_dirs() -> tuple[str, ...]:
    return ("/tmp", "/var/tmp", "/dev/shm", str(Path.home()))


@dataclass(frozen=True)
class HostSnapshot:
    """What invariant F and the zombie count compare against."""

    entries: dict[str, frozenset[str]]
    ipc: dict[str, frozenset[tuple[str, int, int]]]
    zombies: int


class WatchedPool:
    """A started pool, and the host-side checks of the corpus' invariants (see above)."""

    def __init__(self, pool: SandboxPool, limits: Limits, canary: Canary) -> None:
        self.pool = pool
        self.limits = limits
        self.canary = canary
        base = pool.config.slot_uid_base
        self.uids = frozenset(range(base, base + pool.size))
        isolation = pool.isolation
        # Slots run as their own host uids only when we are root and bubblewrap is used.
        self.tracks_processes = (
            os.geteuid() == 0 and isolation is not None and isolation.mode == "bubblewrap"
        )
        self._record_ids: set[uuid.UUID] = set()
        self._ids_lock = threading.Lock()
        self.zygotes = self._find_zygotes() if self.tracks_processes else {}
        assert len(self.zygotes) == (pool.size if self.tracks_processes else 0), self.zygotes
        self.run_on_every_slot(CONTROL_CODE)  # every slot in its steady state (spare, last init)

    # --- running programs -------------------------------------------------------------

    def request(self, code: str, **fields: Any) -> ExecutionRequest:
        return ExecutionRequest.model_validate({"code": code, "limits": self.limits, **fields})

    def run(self, code: str, **fields: Any) -> ExecutionRecord:
        """Run one program (``stdin``, ``files``, ``limits`` as in ExecutionRequest)."""
        return self.submit(self.request(code, **fields))

    def submit(self, request: ExecutionRequest) -> ExecutionRecord:
        record = self.pool.run(request)
        self.check_record(record, request.limits)
        return record

    def timed(self, request: ExecutionRequest) -> tuple[ExecutionRecord, float]:
        """The record and the seconds until the answer."""
        t0 = time.monotonic()
        record = self.submit(request)
        return record, time.monotonic() - t0

    def run_all(self, requests: list[ExecutionRequest]) -> list[ExecutionRecord]:
        """Run the requests at once, one thread each (more than the slots: they queue)."""
        with ThreadPoolExecutor(max_workers=len(requests)) as executor:
            return list(executor.map(self.submit, requests))

    def run_on_every_slot(self, code: str) -> list[ExecutionRecord]:
        """Run ``code`` once in each slot: all at once, each holding its slot a moment.

        ``code`` must run to its end (the hold is appended to it).
        """
        hold = f"\nimport time as _hold\n_hold.sleep({EVERY_SLOT_HOLD_S})\n"
        return self.run_all([self.request(code + hold)] * self.pool.size)

    # --- invariants D and S, on every record ------------------------------------------------

    def check_record(self, record: ExecutionRecord, limits: Limits) -> None:
        with self._ids_lock:
            assert record.id not in self._record_ids, "two answers carry the same record"
            self._record_ids.add(record.id)
        assert record.status in TERMINAL_STATUSES, record.status
        assert record.status != ExecutionStatus.INTERNAL_ERROR, (
            f"a program made the service fail: {record.stderr[-2000:]!r}"
        )
        for name, text in (("stdout", record.stdout), ("stderr", record.stderr)):
            assert "\x00" not in text, f"{name} holds a NUL"
            encoded = text.encode("utf-8")  # raises on lone surrogates
            assert len(encoded) <= limits.max_output_bytes, (
                f"{name} is {len(encoded)} bytes of UTF-8, over the cap"
            )
        assert self.canary.token not in record.model_dump_json(), "the canary secret leaked"

    # --- invariants P, H and F, after a case ----------------------------------------------

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Check P, H and F after the block, against the host as it was before it."""
        before = self.snapshot()
        yield
        self.check(before)

    def snapshot(self) -> HostSnapshot:
        entries = {d: frozenset(os.listdir(d)) for d in _host_dirs() if os.path.isdir(d)}
        return HostSnapshot(entries, _sysv_ipc_objects(), len(self._zombies()))

    def check(self, before: HostSnapshot) -> None:
        lingering = self._settled_processes()
        controls = self.run_on_every_slot(CONTROL_CODE)  # H; also uses up the spares seen now
        for record in controls:
            assert (record.status, record.stdout) == (ExecutionStatus.OK, "hello\n"), record
        if self.tracks_processes:
            assert self._find_zygotes(wait_s=0) == self.zygotes, "a slot's zygote was replaced"
            now = {p.key for p in self._slot_processes()}
            survivors = [p for p in lingering if p.key in now]
            assert not survivors, "job processes outlived their job:\n" + "\n".join(
                map(str, survivors)
            )
        after = self.snapshot()
        for directory, names in after.entries.items():
            new = names - before.entries.get(directory, frozenset())
            left = [name for name in sorted(new) if self._from_a_job(Path(directory, name))]
            assert not left, f"left in the host's {directory}: {left}"
        for kind, objects in after.ipc.items():
            created = objects - before.ipc[kind]
            leaked = [o for o in sorted(created) if {o[1], o[2]} & (self.uids | {OVERFLOW_UID})]
            assert not leaked, f"SysV IPC {kind} objects left on the host: {leaked}"
        assert after.zombies <= before.zombies, "zombies accumulate:\n" + "\n".join(
            map(str, self._zombies())
        )

    def _from_a_job(self, path: Path) -> bool:
        """Whether a new host file may come from a job or the engine.

        The host's /tmp is shared with everything else on the machine, so not everything
        new there is ours: a job can create files only as its slot's uid (or the overflow
        uid), and the engine's own would carry its name.
        """
        try:
            owner = path.lstat().st_uid
        except FileNotFoundError:
            return False
        return owner in self.uids | {OVERFLOW_UID} or path.name.startswith("exec-agent")

    def _slot_processes(self) -> list[HostProcess]:
        """Running processes of our slots' uids, other than the zygotes."""
        zygotes = set(self.zygotes.values())
        return [
            p
            for p in host_processes()
            if p.uid in self.uids and p.key not in zygotes and not p.zombie
        ]

    def _settled_processes(self) -> list[HostProcess]:
        """Wait (at most ``SETTLE_S``) until each slot runs nothing but a spare sandbox.

        A spare is one job namespace of at most ``SPARE_MAX_PROCESSES`` processes that never
        ran another program (the zygote's command line); it is returned, so that ``check``
        can tell whether it was used up by the next job, as a spare must be.
        """
        if not self.tracks_processes:
            return []
        deadline = time.monotonic() + SETTLE_S
        while True:
            processes = self._slot_processes()
            strays = self._strays(processes)
            if not strays or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not strays, f"{SETTLE_S} s after the answer, still running:\n" + "\n".join(
            map(str, strays)
        )
        return processes

    def _strays(self, processes: list[HostProcess]) -> list[HostProcess]:
        strays: list[HostProcess] = []
        for uid, (zygote_pid, _) in self.zygotes.items():
            zygote = _read_process(zygote_pid)
            mine = [p for p in processes if p.uid == uid]
            namespaces = {p.pid_namespace for p in mine}
            spare_like = (
                zygote is not None
                and len(namespaces) <= 1
                and zygote.pid_namespace not in namespaces
                and len(mine) <= SPARE_MAX_PROCESSES
                and all(p.cmdline == zygote.cmdline for p in mine)
            )
            if not spare_like:
                strays += mine
        return strays

    def _find_zygotes(self, wait_s: float = 5.0) -> dict[int, tuple[int, float]]:
        """Slot uid -> the zygote's (pid, start): its script, started by bwrap (or sh)."""
        deadline = time.monotonic() + wait_s
        while True:
            processes = host_processes()
            names = {p.pid: p.name for p in processes}
            zygotes = {
                p.uid: p.key
                for p in processes
                if p.uid in self.uids
                and ZYGOTE_SCRIPT in p.cmdline
                and names.get(p.ppid) in ("bwrap", "sh")
            }
            if len(zygotes) == len(self.uids) or time.monotonic() > deadline:
                return zygotes
            time.sleep(0.05)

    def _zombies(self) -> list[HostProcess]:
        """Zombies of our slots, and of this process (e.g. a slot's bubblewrap)."""
        me = os.getpid()
        return [p for p in host_processes() if p.zombie and (p.uid in self.uids or p.ppid == me)]

    def close(self) -> None:
        self.pool.close()


class PoolFactory:
    """Starts watched pools, each with slot uids of its own; closes them at the end."""

    def __init__(self, canary: Canary, limits: Limits) -> None:
        self.canary = canary
        self.limits = limits
        self._next_base = SLOT_UID_BASE
        self._pools: list[WatchedPool] = []

    def config(self, **overrides: Any) -> SandboxConfig:
        """A sandbox configuration with slot uids no other pool of the session uses."""
        base, self._next_base = self._next_base, self._next_base + POOL_UID_STRIDE
        return SandboxConfig.model_validate({"slot_uid_base": base, **overrides})

    def start(self, config: SandboxConfig, slots: int) -> SandboxPool:
        """Start a pool as the service does, with its secrets in the environment."""
        pool = SandboxPool(config, slots=slots)
        with self.canary.planted():
            pool.start()
        return pool

    def __call__(self, slots: int, **overrides: Any) -> WatchedPool:
        pool = self.start(self.config(**overrides), slots)
        try:
            watched = WatchedPool(pool, self.limits, self.canary)
        except BaseException:
            pool.close()
            raise
        self._pools.append(watched)
        return watched

    def close_all(self) -> None:
        for watched in self._pools:
            watched.close()


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    """A canary secret in the environment and in a file in $HOME, from the session's start."""
    token = f"canary-{secrets.token_hex(16)}"
    home_file = Path.home() / f".exec-agent-canary-{token[-12:]}"
    home_file.write_text(f"password={token}\n")
    saved = os.environ.get("CANARY_SECRET")
    os.environ["CANARY_SECRET"] = token
    try:
        yield Canary(token, home_file)
    finally:
        home_file.unlink(missing_ok=True)
        if saved is None:
            os.environ.pop("CANARY_SECRET", None)
        else:
            os.environ["CANARY_SECRET"] = saved


@pytest.fixture(scope="session")
def corpus_limits() -> Limits:
    """The corpus' symbols (README): WALL, CPU, MEM, PIDS, NOFILE, OUT and DISK."""
    return Limits(
        wall_timeout_s=5,
        cpu_time_s=5,
        memory_bytes=256 * MIB,
        max_processes=64,
        max_open_files=256,
        max_output_bytes=1 * MIB,
        disk_bytes=64 * MIB,
        max_file_bytes=16 * MIB,  # the service's default (DEFAULT_MAX_FILE_BYTES)
    )


@pytest.fixture(scope="session")
def pool_factory(canary: Canary, corpus_limits: Limits) -> Iterator[PoolFactory]:
    factory = PoolFactory(canary, corpus_limits)
    yield factory
    factory.close_all()


@pytest.fixture(scope="session")
def sandbox(pool_factory: PoolFactory) -> WatchedPool:
    """The session's 2-slot pool under watch, with the corpus limits as default."""
    return pool_factory(slots=2)


@pytest.fixture(scope="session")
def sandbox_pool(sandbox: WatchedPool) -> SandboxPool:
    """The session's 2-slot SandboxPool itself."""
    return sandbox.pool
