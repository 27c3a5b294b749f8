"""Fixtures shared by the whole suite; what they are made of is in tests/support/."""

# The shared helpers are marked for assertion rewriting before anything imports them:
# ruff: noqa: E402

from __future__ import annotations

import pytest

# tests/support/ asserts as the tests do (the corpus' checks, the watched pool's invariants):
# pytest rewrites its asserts too, so that a failure there explains itself.
pytest.register_assert_rewrite("tests.support")

import os
import signal
from collections.abc import Iterator

import redis

from executors import Limits, SandboxPool
from serve_app.db import Database
from tests.support.canary import Canary, planted_canary
from tests.support.databases import DATABASE_BACKENDS, delete_all_rows, migrated_database
from tests.support.limits import CORPUS_LIMITS, MIB
from tests.support.shared_redis import shared_redis_client
from tests.support.watched_pool import PoolFactory, WatchedPool


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as at a terminal, however the suite was started: a shell's background job (`&`
    without job control, as CI runners and `nohup` often start it) inherits SIGINT ignored, and
    an ignored signal stays ignored across exec, so the CLI tests' SIGINT would reach programs
    that cannot hear it. Python's own handler here makes the children's SIGINT the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


# --- databases (tests/test_db*.py, tests/test_cache.py) and the shared Redis


@pytest.fixture(scope="session", params=DATABASE_BACKENDS)
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per backend for the session (tests clean up after themselves)."""
    with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def database(migrated_url: str) -> Iterator[Database]:
    """The session's migrated database, emptied after the test."""
    database = Database.from_url(migrated_url)
    yield database
    delete_all_rows(database)
    database.dispose()


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the shared Redis (tests/support/shared_redis.py); fails if it is down."""
    client = shared_redis_client()
    yield client
    client.close()


# --- the sandbox engine under watch (tests/support/watched_pool.py)


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    """A canary secret in the environment and in a file in $HOME, from the session's start."""
    with planted_canary() as planted:
        yield planted


@pytest.fixture(scope="session")
def corpus_limits() -> Limits:
    """The corpus' symbols (README): WALL, CPU, MEM, PIDS, NOFILE, OUT and DISK."""
    return CORPUS_LIMITS


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
