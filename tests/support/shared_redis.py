"""The machine's shared Redis (127.0.0.1:6379, or ``TEST_REDIS_URL``): tests use key prefixes of
their own there and delete them afterwards; they never stop it."""

from __future__ import annotations

import os

import pytest
import redis

__all__ = ["REDIS_URL", "delete_prefix", "shared_redis_answers", "shared_redis_client"]

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
