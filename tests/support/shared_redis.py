"""The machine's shared Redis (127.0.0.1:6379, or ``TEST_REDIS_URL``): tests use key prefixes of
their own there and delete them afterwards; they never stop it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import ClassVar, TypeVar

import pytest
import redis

__all__ = [
    "BACKENDS",
    "REDIS_URL",
    "SuiteBackend",
    "delete_prefix",
    "shared_redis_answers",
    "shared_redis_client",
    "used_then_cleaned",
]

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def shared_redis_client() -> redis.Redis:
    """A client of the shared Redis; the test fails (never skips) if it does not answer."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {REDIS_URL} ({exc}); scripts/test starts one")
    return client


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def shared_redis_answers() -> bool:
    """Whether the shared Redis answers a PING now (tests that can do without it ask)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


BACKENDS = ["memory", "redis"]
"""The backends a suite over both runs against: in-process, and the shared Redis."""


class SuiteBackend:
    """One backend of a suite over both (``name`` in ``BACKENDS``): in Redis, under a key
    prefix of the test's own."""

    KEY_PREFIX: ClassVar[str] = "test"

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = f"{self.KEY_PREFIX}:{uuid.uuid4().hex}:"


B = TypeVar("B", bound=SuiteBackend)


def used_then_cleaned(request: pytest.FixtureRequest, backend: B) -> Iterator[B]:
    """A fixture's ``backend`` (``yield from`` it): Redis' needs the shared Redis (the
    ``redis_client`` fixture), and its keys are deleted after the test."""
    if backend.name == "memory":
        yield backend
        return
    client = request.getfixturevalue("redis_client")
    yield backend
    delete_prefix(client, backend.prefix)
