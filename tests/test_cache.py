"""The result cache: one suite over both backends, then each backend's specifics.

Every behavioural test runs against the in-process LRU and a real Redis (127.0.0.1:6379, a
unique key prefix per test, deleted afterwards). Redis' failure paths use a closed port and a
listener that never answers, so no server is stopped under other tests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis

from executors import ExecutionRecord, ExecutionRequest, ExecutionStatus
from serve_app.cache import (
    CachedResult,
    MemoryResultCache,
    RedisResultCache,
    ResultCache,
    build_result_cache,
    cache_fingerprint,
)
from serve_app.db.executions import request_fingerprint
from serve_app.settings import Settings
from tests.support.limits import MIB, SMALL_LIMITS
from tests.support.listeners import loopback_listener
from tests.support.shared_redis import (
    BACKENDS,
    REDIS_URL,
    SuiteBackend,
    delete_prefix,
    used_then_cleaned,
)

CLOSED_URL = "redis://127.0.0.1:1/0"

TTL_S = 60.0
LIMITS = SMALL_LIMITS
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


def record(status: str = "ok", **fields: Any) -> ExecutionRecord:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    values: dict[str, Any] = {
        "status": status,
        "exit_code": 0 if status == "ok" else None,
        "stdout": "42\n",
        "stderr": "warning: é\n",
        "wall_time_s": 0.012,
        "cpu_time_s": 0.01,
        "peak_memory_bytes": 9 * MIB,
        "limits": LIMITS.to_api(),
        "created_at": moment,
        "started_at": moment,
        "finished_at": moment,
        "passed": True,
        "runtime": "scientific",
        "artifacts": [
            {
                "path": "out/plot.png",
                "size_bytes": 3,
                "media_type": "image/png",
                "base64": "AP8A",
            }
        ],
        "artifacts_truncated": True,
    }
    return ExecutionRecord.model_validate({**values, **fields})


def fingerprint(code: str = "print(42)") -> str:
    return cache_fingerprint(ExecutionRequest(code=code, limits=LIMITS))


class Backend(SuiteBackend):
    """Builds caches of one kind; for Redis, under a key prefix of the test's own."""

    KEY_PREFIX = "test-result-cache"

    def make(self, **options: Any) -> ResultCache:
        options.setdefault("ttl_s", TTL_S)
        if self.name == "memory":
            return MemoryResultCache(**options)
        return RedisResultCache.from_url(
            REDIS_URL, key_prefix=self.prefix, timeout_s=5.0, **options
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from used_then_cleaned(request, Backend(request.param))


# ------------------------------------------------------------------ both backends


def test_a_stored_result_comes_back_as_it_was(backend: Backend) -> None:
    original, execution_id = record(), uuid.uuid4()

    async def scenario() -> tuple[CachedResult | None, CachedResult | None]:
        async with backend.make() as results:
            assert await results.get(1, fingerprint()) is None
            await results.put(1, fingerprint(), execution_id, original)
            first = await results.get(1, fingerprint())
            assert first is not None
            first.record.stdout = "changed by the caller"
            return first, await results.get(1, fingerprint())

    first, second = run(scenario())
    assert first is not None and second is not None
    assert second == CachedResult(execution_id, original)
    assert second.record.artifacts[0].content() == b"\x00\xff\x00"  # artifacts kept whole
    assert (second.record.runtime, second.record.artifacts_truncated) == ("scientific", True)
    assert first.record is not second.record  # each hit is a copy of its own
    assert second.record.created_at == original.created_at  # microseconds and zone kept


def test_entries_are_scoped_to_the_key_and_the_request(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as results:
            await results.put(1, fingerprint(), uuid.uuid4(), record())
            assert await results.get(1, fingerprint()) is not None
            assert await results.get(2, fingerprint()) is None
            assert await results.get(1, fingerprint("print(43)")) is None

    run(scenario())


def test_a_newer_result_replaces_the_entry(backend: Backend) -> None:
    newer = uuid.uuid4()

    async def scenario() -> CachedResult | None:
        async with backend.make() as results:
            await results.put(1, fingerprint(), uuid.uuid4(), record(stdout="old\n"))
            await results.put(1, fingerprint(), newer, record(stdout="new\n"))
            return await results.get(1, fingerprint())

    hit = run(scenario())
    assert hit is not None and (hit.execution_id, hit.record.stdout) == (newer, "new\n")


def test_entries_expire_after_the_ttl(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make(ttl_s=0.5) as results:
            await results.put(1, fingerprint(), uuid.uuid4(), record())
            assert await results.get(1, fingerprint()) is not None
            await asyncio.sleep(0.7)
            assert await results.get(1, fingerprint()) is None

    run(scenario())


@pytest.mark.parametrize(
    "status", [s for s in ExecutionStatus if s not in ("queued", "running", "internal_error")]
)
def test_every_result_of_the_program_is_cached(backend: Backend, status: ExecutionStatus) -> None:
    async def scenario() -> CachedResult | None:
        async with backend.make() as results:
            await results.put(1, fingerprint(), uuid.uuid4(), record(status, passed=None))
            return await results.get(1, fingerprint())

    hit = run(scenario())
    assert hit is not None and hit.record.status == status


def test_internal_errors_and_copies_are_never_cached(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as results:
            failed = record("internal_error", passed=None)
            await results.put(1, fingerprint(), uuid.uuid4(), failed)
            assert await results.get(1, fingerprint()) is None
            copy = record(cached=True, cached_from=uuid.uuid4())
            await results.put(1, fingerprint(), uuid.uuid4(), copy)
            assert await results.get(1, fingerprint()) is None

    run(scenario())


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_unfinished_record_is_a_callers_bug(backend: Backend, status: str) -> None:
    async def scenario() -> None:
        async with backend.make() as results:
            with pytest.raises(ValueError, match="only finished results"):
                await results.put(1, fingerprint(), uuid.uuid4(), record(status))

    run(scenario())


def test_oversized_results_are_not_cached(backend: Backend) -> None:
    small, big = record(stdout="x" * 1000), record(stdout="x" * 5000)

    async def scenario() -> None:
        async with backend.make(max_record_bytes=4096) as results:
            await results.put(1, fingerprint("small"), uuid.uuid4(), small)
            await results.put(1, fingerprint("big"), uuid.uuid4(), big)
            assert await results.get(1, fingerprint("small")) is not None
            assert await results.get(1, fingerprint("big")) is None

    run(scenario())


def test_concurrent_use_from_many_tasks(backend: Backend) -> None:
    async def scenario() -> list[CachedResult | None]:
        async with backend.make() as results:
            ids = [uuid.uuid4() for _ in range(50)]
            await asyncio.gather(
                *(results.put(n, fingerprint(), ids[n], record()) for n in range(50))
            )
            hits = await asyncio.gather(*(results.get(n, fingerprint()) for n in range(50)))
            assert [hit.execution_id if hit else None for hit in hits] == ids
            return hits

    assert all(run(scenario()))


def test_a_reachable_store_is_healthy(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as results:
            await results.get(1, fingerprint())
            assert results.healthy
            assert results.backend == backend.name

    run(scenario())


# ------------------------------------------------------------------ fingerprints


def test_equal_requests_have_equal_fingerprints() -> None:
    files_a: dict[str, str | bytes] = {"a.py": "A", "b.txt": "B", "c.bin": b"\xff"}
    files_b: dict[str, str | bytes] = {"c.bin": b"\xff", "b.txt": "B", "a.py": "A"}
    cases = [{"stdin": "1", "expected_stdout": "2"}]
    same = LIMITS.model_copy()
    first = cache_fingerprint(
        ExecutionRequest(
            code="print(1)",
            stdin="in",
            files=files_a,
            runtime="minimal",
            test_code="check()",
            cases=cases,
            limits=LIMITS,
        )
    )
    assert first == cache_fingerprint(
        ExecutionRequest(
            code="print(1)",
            stdin="in",
            files=files_b,
            runtime="minimal",
            test_code="check()",
            cases=list(cases),
            limits=same,
        )
    )
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"code": "print(2)"},
        {"stdin": "other"},
        {"files": {"a.py": "changed"}},
        {"files": {}},
        {"files": {"a.py": "A", "blob.bin": b"\x00\xff\xfe"}},
        {"files": {"a.py": "A", "blob.bin": b"\x00\xff\xfd"}},
        {"files": {"a.py": b"A"}},  # the same bytes, but sent as binary: another request
        {"runtime": "minimal"},
        {"runtime": None},
        {"test_code": None},
        {"test_code": "check2()"},
        {"cases": None},
        {"cases": [{"stdin": "1", "expected_stdout": "3"}]},
        {"limits": LIMITS.model_copy(update={"wall_timeout_s": 3.0})},
        {"limits": LIMITS.model_copy(update={"disk_bytes": 32 * MIB})},
    ],
)
def test_any_difference_changes_the_fingerprint(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "code": "print(1)",
        "stdin": "in",
        "files": {"a.py": "A", "blob.bin": b"\x00\xff\xff"},
        "runtime": "scientific",
        "test_code": "check()",
        "cases": [{"stdin": "1", "expected_stdout": "2"}],
        "limits": LIMITS,
    }
    assert cache_fingerprint(ExecutionRequest(**base)) != cache_fingerprint(
        ExecutionRequest(**{**base, **change})
    )


def test_fingerprints_differ_from_idempotency_fingerprints_of_the_same_fields() -> None:
    # Versioned: a change to what goes in can make every old entry miss.
    body: dict[str, Any] = {"code": "x", "stdin": "", "files": {}, "test_code": None, "cases": None}
    request = ExecutionRequest(**body, limits=LIMITS)
    assert cache_fingerprint(request) != request_fingerprint(request.model_dump(mode="json"))


# ------------------------------------------------------------------ memory specifics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_evicts_the_least_recently_used() -> None:
    async def scenario() -> None:
        results = MemoryResultCache(ttl_s=TTL_S, max_entries=3)
        for n in range(3):
            await results.put(1, fingerprint(str(n)), uuid.uuid4(), record())
        assert await results.get(1, fingerprint("0")) is not None  # 0 is now the most recent
        await results.put(1, fingerprint("3"), uuid.uuid4(), record())
        assert results.entries == 3
        assert await results.get(1, fingerprint("1")) is None  # the least recently used
        for kept in ("0", "2", "3"):
            assert await results.get(1, fingerprint(kept)) is not None

    run(scenario())


def test_memory_is_bounded_by_bytes_too() -> None:
    async def scenario() -> None:
        results = MemoryResultCache(ttl_s=TTL_S, max_record_bytes=4096, max_total_bytes=10_000)
        for n in range(10):
            await results.put(1, fingerprint(str(n)), uuid.uuid4(), record(stdout="x" * 2000))
        assert results.total_bytes <= 10_000 and results.entries == 3
        assert await results.get(1, fingerprint("9")) is not None
        assert await results.get(1, fingerprint("0")) is None
        await results.aclose()
        assert (results.entries, results.total_bytes) == (0, 0)

    run(scenario())


def test_memory_expiry_follows_its_clock_and_a_hit_does_not_extend_it() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        results = MemoryResultCache(ttl_s=10, clock=clock)
        await results.put(1, fingerprint(), uuid.uuid4(), record())
        clock.now += 9.999
        assert await results.get(1, fingerprint()) is not None
        clock.now += 0.001
        assert await results.get(1, fingerprint()) is None
        assert results.entries == 0 and results.total_bytes == 0

    run(scenario())


@pytest.mark.parametrize(
    "options",
    [{"ttl_s": 0}, {"ttl_s": -1}, {"ttl_s": float("nan")}, {"max_entries": 0}],
)
def test_memory_refuses_nonsense_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryResultCache(**{"ttl_s": TTL_S, **options})


# ------------------------------------------------------------------ Redis specifics


def test_redis_entries_are_prefixed_and_expire(redis_client: redis.Redis) -> None:
    backend = Backend("redis")

    async def scenario() -> None:
        async with backend.make(ttl_s=30) as results:
            await results.put(7, fingerprint(), uuid.uuid4(), record())

    try:
        run(scenario())
        key = f"{backend.prefix}7:{fingerprint()}"
        assert list(redis_client.scan_iter(match=backend.prefix + "*")) == [key.encode()]
        assert 29_000 < redis_client.pttl(key) <= 30_000
    finally:
        delete_prefix(redis_client, backend.prefix)


def test_redis_unreadable_entries_are_misses(redis_client: redis.Redis) -> None:
    backend = Backend("redis")
    try:
        redis_client.set(f"{backend.prefix}1:{fingerprint()}", b'{"not": "an entry"}', ex=60)

        async def scenario() -> None:
            async with backend.make() as results:
                assert await results.get(1, fingerprint()) is None
                assert results.healthy  # a bad entry says nothing about the store
                await results.put(1, fingerprint(), uuid.uuid4(), record())
                assert await results.get(1, fingerprint()) is not None

        run(scenario())
    finally:
        delete_prefix(redis_client, backend.prefix)


def test_redis_down_is_a_miss_and_puts_are_dropped() -> None:
    async def scenario() -> None:
        async with RedisResultCache.from_url(CLOSED_URL, ttl_s=TTL_S, timeout_s=0.5) as results:
            started = time.perf_counter()
            assert await results.get(1, fingerprint()) is None
            await results.put(1, fingerprint(), uuid.uuid4(), record())  # does not raise
            assert await results.get(1, fingerprint()) is None
            assert not results.healthy
            assert time.perf_counter() - started < 2

    run(scenario())


def test_a_hanging_redis_costs_one_timeout_then_none() -> None:
    """A server that accepts connections but never answers: the first call waits out the
    timeout; later calls, during the back-off, neither wait nor connect."""
    with loopback_listener() as listener:
        url = f"redis://127.0.0.1:{listener.port}/0"

        async def scenario() -> tuple[float, float]:
            async with RedisResultCache.from_url(
                url, ttl_s=TTL_S, timeout_s=0.3, backoff_s=60
            ) as results:
                started = time.perf_counter()
                assert await results.get(1, fingerprint()) is None
                first_s = time.perf_counter() - started
                started = time.perf_counter()
                for _ in range(10):
                    assert await results.get(1, fingerprint()) is None
                    await results.put(1, fingerprint(), uuid.uuid4(), record())
                return first_s, time.perf_counter() - started

        first_s, later_s = run(scenario())
        connections = listener.connections()
    assert 0.2 < first_s < 3
    assert later_s < 0.2
    assert connections == 1


# ------------------------------------------------------------------ the factory


def test_the_factory_follows_redis_url() -> None:
    embedded = build_result_cache(
        Settings(_env_file=None, redis_url=None, result_cache_max_entries=5)
    )
    assert isinstance(embedded, MemoryResultCache) and embedded.backend == "memory"
    shared = build_result_cache(
        Settings(_env_file=None, redis_url=REDIS_URL, redis_timeout_s=0.1, result_cache_ttl_s=9)
    )
    assert isinstance(shared, RedisResultCache) and shared.backend == "redis"
    run(shared.aclose())


def test_the_factorys_settings_take_effect() -> None:
    settings = Settings(
        _env_file=None,
        redis_url=None,
        result_cache_ttl_s=5,
        result_cache_max_entries=2,
        result_cache_max_record_bytes=3000,
    )

    async def scenario() -> None:
        async with build_result_cache(settings) as results:
            await results.put(1, fingerprint("big"), uuid.uuid4(), record(stdout="x" * 3000))
            assert await results.get(1, fingerprint("big")) is None
            for n in range(3):
                await results.put(1, fingerprint(str(n)), uuid.uuid4(), record())
            assert await results.get(1, fingerprint("0")) is None
            assert await results.get(1, fingerprint("2")) is not None

    run(scenario())
