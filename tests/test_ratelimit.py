"""Rate and concurrency limits: one suite over both backends, then Redis' failure paths.

Every behavioural test runs against the in-memory limiter and a real Redis (a unique key prefix
per test, deleted afterwards). Time is a fake clock where a test moves it, injected into both
backends (the Redis scripts then take it instead of ``TIME``), so nothing sleeps for a window.
The failure tests start a private ``redis-server`` and stop it under the limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis

import serve_app.ratelimit as ratelimit
from serve_app.ratelimit import (
    Lease,
    Limiter,
    MemoryLimiter,
    Reason,
    RedisLimiter,
    StoreUnavailableError,
    build_rate_limiter,
)
from serve_app.ratelimit._guard import StoreGuard
from serve_app.settings import Settings
from tests.support.listeners import loopback_listener
from tests.support.ports import free_port
from tests.support.private_servers import REDIS_SERVER, PrivateRedis
from tests.support.shared_redis import BACKENDS, REDIS_URL, SuiteBackend, used_then_cleaned

LEASE_TTL_S = 30.0
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


class FakeClock:
    """Seconds, moved by hand; kept in integer microseconds so that steps add up exactly."""

    def __init__(self) -> None:
        self.us = 1_750_000_000_123_457  # epoch-like: 16 digits in microseconds, not round

    def __call__(self) -> float:
        return self.us / 1_000_000

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1_000_000)


class Backend(SuiteBackend):
    """Builds limiters of one kind; for Redis, under a key prefix of the test's own."""

    KEY_PREFIX = "test-ratelimit"

    def make(self, clock: FakeClock | None = None) -> Limiter:
        if self.name == "memory":
            return MemoryLimiter(lease_ttl_s=LEASE_TTL_S, clock=clock or time.monotonic)
        return RedisLimiter.from_url(
            REDIS_URL, key_prefix=self.prefix, lease_ttl_s=LEASE_TTL_S, timeout_s=5.0, clock=clock
        )

    async def replicas(
        self, stack: contextlib.AsyncExitStack, count: int, clock: FakeClock
    ) -> list[Limiter]:
        """``count`` service replicas: separate Redis clients, or the one in-process limiter."""
        if self.name == "memory":
            return [await stack.enter_async_context(self.make(clock))] * count
        return [await stack.enter_async_context(self.make(clock)) for _ in range(count)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from used_then_cleaned(request, Backend(request.param))


# ------------------------------------------------------------------ rate


def test_a_burst_gets_exactly_the_limit(backend: Backend) -> None:
    async def scenario() -> list[ratelimit.RateDecision]:
        async with backend.make() as limiter:
            return [await limiter.hit("key", 10) for _ in range(15)]

    decisions = run(scenario())
    allowed, refused = decisions[:10], decisions[10:]
    assert all(d.reason is Reason.OK and d.allowed and d.retry_after_s is None for d in allowed)
    assert [d.remaining for d in allowed] == list(range(9, -1, -1))
    assert all(d.reason is Reason.LIMITED and not d.allowed and not d.degraded for d in refused)
    assert all(d.remaining == 0 and d.retry_after_s is not None for d in refused)
    assert all(0 < (d.retry_after_s or 0) <= 6 < d.reset_after_s <= 60 for d in refused)
    assert {d.limit for d in decisions} == {10}


def test_other_keys_are_unaffected(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            for _ in range(4):
                await limiter.hit("busy", 3)
            assert not (await limiter.hit("busy", 3)).allowed
            other = [await limiter.hit("other", 5) for _ in range(5)]
            assert [d.remaining for d in other] == [4, 3, 2, 1, 0]
            assert all(d.allowed for d in other)

    run(scenario())


def test_the_allowance_refills_at_the_limits_rate(backend: Backend) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            burst = [await limiter.hit("key", 6) for _ in range(6)]  # one hit per 10 s
            assert burst[-1].remaining == 0 and burst[-1].reset_after_s == 60
            refused = await limiter.hit("key", 6)
            assert (refused.retry_after_s, refused.reset_after_s) == (10, 60)
            clock.advance(9.999_999)
            assert (await limiter.hit("key", 6)).retry_after_s == pytest.approx(1e-6)
            clock.advance(0.000_001)
            assert (await limiter.hit("key", 6)).allowed
            assert not (await limiter.hit("key", 6)).allowed
            clock.advance(60)
            again = [await limiter.hit("key", 6) for _ in range(7)]
            assert [d.allowed for d in again] == [True] * 6 + [False]

    run(scenario())


def test_refused_hits_cost_nothing(backend: Backend) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            await limiter.hit("key", 2)
            await limiter.hit("key", 2)
            for _ in range(50):
                assert not (await limiter.hit("key", 2)).allowed
            clock.advance(30)
            assert (await limiter.hit("key", 2)).allowed

    run(scenario())


def test_a_hit_may_cost_several_within_the_burst(backend: Backend) -> None:
    """Issue 10 item 3: a batch of N executions costs N, not one request."""
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            batch = await limiter.hit("key", 6, cost=4)  # one hit per 10 s
            assert (batch.allowed, batch.remaining, batch.reset_after_s) == (True, 2, 40)
            refused = await limiter.hit("key", 6, cost=3)  # 2 left: refused whole...
            assert (refused.reason, refused.retry_after_s) == (Reason.LIMITED, 10)
            two = await limiter.hit("key", 6, cost=2)  # ...charging nothing
            assert (two.allowed, two.remaining) == (True, 0)
            assert not (await limiter.hit("key", 6)).allowed

    run(scenario())


def test_a_hit_over_the_limit_needs_the_whole_allowance_and_leaves_a_debt(
    backend: Backend,
) -> None:
    """A batch bigger than the burst is not refused for ever: it passes when the key is fully
    rested, and the key then waits until the executions it ran are paid for."""
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            await limiter.hit("key", 6)
            partial = await limiter.hit("key", 6, cost=10)
            assert (partial.allowed, partial.retry_after_s) == (False, 10)  # the full burst
            clock.advance(10)
            big = await limiter.hit("key", 6, cost=10)
            assert (big.allowed, big.remaining, big.reset_after_s) == (True, 0, 100)
            after = await limiter.hit("key", 6)
            assert (after.allowed, after.retry_after_s) == (False, 50)  # 100 s of debt - 60
            clock.advance(50)
            assert (await limiter.hit("key", 6)).allowed

    run(scenario())


def test_a_dry_run_says_without_charging(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            for _ in range(5):
                probe = await limiter.hit("key", 2, dry_run=True)
                assert (probe.allowed, probe.remaining) == (True, 2)
            await limiter.hit("key", 2, cost=2)
            probe = await limiter.hit("key", 2, dry_run=True)
            assert probe.reason is Reason.LIMITED and probe.retry_after_s

    run(scenario())


@pytest.mark.parametrize("cost", [0, -1])
def test_a_cost_must_be_positive(backend: Backend, cost: int) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            with pytest.raises(ValueError, match="cost"):
                await limiter.hit("key", 5, cost=cost)

    run(scenario())


def test_the_real_clock_counts_in_seconds(backend: Backend) -> None:
    """Without a fake clock: monotonic time in memory, Redis' TIME in Redis."""

    async def scenario() -> ratelimit.RateDecision:
        async with backend.make() as limiter:
            await limiter.hit("key", 2)
            await limiter.hit("key", 2)
            return await limiter.hit("key", 2)

    refused = run(scenario())
    assert refused.retry_after_s is not None and 25 < refused.retry_after_s <= 30
    assert 55 < refused.reset_after_s <= 60


def test_concurrent_hits_from_many_replicas_stay_exact(backend: Backend) -> None:
    clock = FakeClock()  # frozen: however long the burst takes, no allowance comes back

    async def scenario() -> list[ratelimit.RateDecision]:
        async with contextlib.AsyncExitStack() as stack:
            replicas = await backend.replicas(stack, 3, clock)
            hits = [replicas[i % 3].hit("key", 100) for i in range(300)]
            return await asyncio.gather(*hits)

    decisions = run(scenario())
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 100
    # Each allowed hit saw a distinct state: no two read the same count.
    assert sorted(d.remaining for d in allowed) == list(range(100))


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_must_be_positive(backend: Backend, limit: int) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            with pytest.raises(ValueError, match="limit_per_minute"):
                await limiter.hit("key", limit)
            with pytest.raises(ValueError, match="cap"):
                await limiter.acquire("key", limit)

    run(scenario())


# ------------------------------------------------------------------ concurrency


def test_the_concurrency_cap_holds_until_a_release(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            first, second = await limiter.acquire("key", 2), await limiter.acquire("key", 2)
            assert (first.reason, first.in_flight, second.in_flight) == (Reason.OK, 1, 2)
            refused = await limiter.acquire("key", 2)
            assert (refused.reason, refused.lease, refused.in_flight) == (Reason.LIMITED, None, 2)
            assert (await limiter.acquire("other", 2)).allowed
            assert first.lease is not None
            await limiter.release(first.lease)
            await limiter.release(first.lease)  # twice: harmless, frees nothing more
            assert await limiter.in_flight("key") == 1
            assert (await limiter.acquire("key", 2)).allowed
            assert not (await limiter.acquire("key", 2)).allowed

    run(scenario())


def test_leases_expire_so_a_dead_replica_frees_its_slots(backend: Backend) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            old = (await limiter.acquire("key", 2)).lease
            await limiter.acquire("key", 2, ttl_s=100)
            clock.advance(LEASE_TTL_S - 0.000_001)
            assert await limiter.in_flight("key") == 2
            clock.advance(0.000_001)  # to the microsecond
            assert await limiter.in_flight("key") == 1  # the 100 s lease is still live
            fresh = await limiter.acquire("key", 2)
            assert (fresh.allowed, fresh.in_flight) == (True, 2)
            assert old is not None
            await limiter.release(old)  # expired already: must not free someone else's slot
            assert await limiter.in_flight("key") == 2

    run(scenario())


def test_renew_keeps_a_long_execution_counted(backend: Backend) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with backend.make(clock) as limiter:
            lease = (await limiter.acquire("key", 1)).lease
            assert lease is not None
            clock.advance(20)
            assert await limiter.renew(lease)
            clock.advance(20)  # 40 s after acquire, 20 s after renewal
            assert not (await limiter.acquire("key", 1)).allowed
            assert await limiter.renew(lease, ttl_s=5)
            clock.advance(5)
            assert await limiter.in_flight("key") == 0
            assert not await limiter.renew(lease)
            gone = Lease("key", "never-acquired")
            assert not await limiter.renew(gone)

    run(scenario())


def test_concurrent_acquires_from_many_replicas_stay_exact(backend: Backend) -> None:
    async def scenario() -> tuple[list[ratelimit.ConcurrencyDecision], int]:
        async with contextlib.AsyncExitStack() as stack:
            replicas = await backend.replicas(stack, 3, FakeClock())
            decisions = await asyncio.gather(*(replicas[i % 3].acquire("k", 7) for i in range(60)))
            return decisions, await replicas[0].in_flight("k")

    decisions, in_flight = run(scenario())
    granted = [d for d in decisions if d.allowed]
    assert len(granted) == 7 == in_flight
    assert sorted(d.in_flight or 0 for d in granted) == list(range(1, 8))
    assert len({d.lease.lease_id for d in granted if d.lease}) == 7


def test_health_of_a_reachable_store(backend: Backend) -> None:
    async def scenario() -> None:
        async with backend.make() as limiter:
            health = await limiter.check()
            assert limiter.healthy and health.ok and health.backend == backend.name
            assert health.rtt_ms is not None and health.rtt_ms >= 0
            assert health.as_dict()["policy"] == "fail_open"
            assert "error" not in health.as_dict()

    run(scenario())


# ------------------------------------------------------------------ backend specifics


def test_memory_forgets_idle_keys() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        limiter = MemoryLimiter(lease_ttl_s=LEASE_TTL_S, clock=clock)
        for number in range(1000):
            await limiter.hit(f"key-{number}", 60)
            await limiter.acquire(f"key-{number}", 1)
        assert limiter.tracked_keys == 2000
        clock.advance(61)
        await limiter.hit("last", 60)
        assert limiter.tracked_keys == 1

    run(scenario())


def test_redis_keys_are_prefixed_and_expire(redis_client: redis.Redis) -> None:
    backend = Backend("redis")

    async def scenario() -> None:
        async with backend.make() as limiter:
            await limiter.hit("key", 60)
            await limiter.acquire("key", 1, ttl_s=10)

    try:
        run(scenario())
        rate_ttl = redis_client.pttl(backend.prefix + "rate:key")
        lease_ttl = redis_client.pttl(backend.prefix + "lease:key")
        assert 0 < rate_ttl <= 1000  # one hit of 60 per minute: full again after a second
        assert 9000 < lease_ttl <= 10_001
        assert len(list(redis_client.scan_iter(match=backend.prefix + "*"))) == 2
    finally:
        redis_client.delete(backend.prefix + "rate:key", backend.prefix + "lease:key")


def test_the_factory_follows_redis_url() -> None:
    embedded = build_rate_limiter(Settings(_env_file=None, redis_url=None))
    assert isinstance(embedded, MemoryLimiter)
    shared = build_rate_limiter(
        Settings(
            _env_file=None,
            redis_url=REDIS_URL,
            rate_limit_fail_closed=True,
            redis_timeout_s=0.1,
            concurrency_lease_ttl_s=60,
        )
    )
    assert isinstance(shared, RedisLimiter) and shared.fail_closed
    run(shared.aclose())


# ------------------------------------------------------------------ Redis down


class Store:
    """A fake store for the guard: counts calls; fails while ``down``; can hold a call open."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = True
        self.gate: asyncio.Event | None = None

    async def call(self) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("refused")
        return "answer"


def test_the_guard_backs_off_and_probes_one_at_a_time() -> None:
    clock, store = FakeClock(), Store()
    guard = StoreGuard(
        name="store",
        errors=(ConnectionError,),
        timeout_s=5,
        backoff_s=1,
        max_backoff_s=3,
        clock=clock,
    )

    async def fails_fast() -> float:
        with pytest.raises(StoreUnavailableError) as caught:
            await guard.call(store.call)
        return caught.value.retry_after_s

    async def scenario() -> None:
        assert await fails_fast() == 1 and not _healthy(guard) and store.calls == 1
        for _ in range(10):
            await fails_fast()
        assert store.calls == 1  # within the back-off: the store is left alone
        clock.advance(1)
        store.gate = asyncio.Event()
        probes = [asyncio.create_task(fails_fast()) for _ in range(10)]
        await asyncio.sleep(0)
        assert store.calls == 2  # one probe; the other nine failed without calling
        store.gate.set()
        await asyncio.gather(*probes)
        assert await fails_fast() == 2  # a failed probe doubles the back-off...
        clock.advance(2)
        await fails_fast()
        clock.advance(3)
        await fails_fast()
        assert await fails_fast() == 3  # ...up to its ceiling
        store.down, store.gate = False, None
        assert await guard.probe(store.call) >= 0  # a readiness probe ignores the back-off
        assert _healthy(guard) and await guard.call(store.call) == "answer"

    run(scenario())


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (tests/support/private_servers.py), to stop at will."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


async def _timed(call: Callable[[], Coroutine[Any, Any, _T]]) -> tuple[_T, float]:
    started = time.perf_counter()
    result = await call()
    return result, time.perf_counter() - started


def _healthy(subject: Limiter | StoreGuard) -> bool:
    """``subject.healthy``, read through a call so that type checkers do not narrow it."""
    return subject.healthy


async def _until_recovered(limiter: RedisLimiter, deadline_s: float) -> ratelimit.RateDecision:
    """Hit until the store answers again, as requests would (no check(), no rebuild)."""
    deadline = time.monotonic() + deadline_s
    while True:
        decision = await limiter.hit("key", 60)
        if decision.reason is Reason.OK or time.monotonic() > deadline:
            return decision
        await asyncio.sleep(0.02)


def test_redis_down_fails_open_then_recovers_by_itself(private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter.from_url(private_redis.url, timeout_s=0.5, backoff_s=0.05)
        async with limiter:
            assert (await limiter.hit("key", 60)).reason is Reason.OK
            private_redis.stop()
            decision, elapsed_s = await _timed(lambda: limiter.hit("key", 60))
            assert (decision.reason, decision.allowed, decision.degraded) == (
                Reason.FAIL_OPEN,
                True,
                True,
            )
            assert decision.retry_after_s is None and elapsed_s < 2
            assert not _healthy(limiter)
            slot = await limiter.acquire("key", 1)
            assert slot.reason is Reason.FAIL_OPEN and slot.lease and not slot.lease.stored
            await limiter.release(slot.lease)
            health = await limiter.check()
            assert not health.ok and health.error and health.down_for_s is not None
            assert health.as_dict()["ok"] is False
            with pytest.raises(StoreUnavailableError):
                await limiter.in_flight("key")

            private_redis.start()
            assert (await _until_recovered(limiter, deadline_s=10)).reason is Reason.OK
            assert _healthy(limiter) and (await limiter.check()).ok
            assert (await limiter.acquire("key", 1)).reason is Reason.OK

    run(scenario())


def test_redis_down_fails_closed_with_a_distinct_reason(private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter.from_url(
            private_redis.url, fail_closed=True, timeout_s=0.5, backoff_s=60
        )
        async with limiter:
            assert (await limiter.hit("key", 60)).allowed
            private_redis.stop()
            decision, elapsed_s = await _timed(lambda: limiter.hit("key", 60))
            assert (decision.reason, decision.allowed) == (Reason.UNAVAILABLE, False)
            assert decision.retry_after_s is not None and decision.retry_after_s > 0
            assert elapsed_s < 2
            slot = await limiter.acquire("key", 1)
            assert (slot.reason, slot.allowed, slot.lease) == (Reason.UNAVAILABLE, False, None)
            assert (await limiter.check()).as_dict()["policy"] == "fail_closed"

            private_redis.start()
            # Hits stay in the 60 s back-off, but a readiness check tries at once and heals.
            assert (await limiter.hit("key", 60)).reason is Reason.UNAVAILABLE
            assert (await limiter.check()).ok
            assert (await limiter.hit("key", 60)).reason is Reason.OK

    run(scenario())


def test_a_hanging_redis_costs_one_timeout_then_none() -> None:
    """A server that accepts connections but never answers: the first call waits out the
    timeout; later calls in the back-off neither wait nor connect."""
    with loopback_listener() as listener:
        url = f"redis://127.0.0.1:{listener.port}/0"

        async def scenario() -> tuple[float, list[float]]:
            async with RedisLimiter.from_url(url, timeout_s=0.5, backoff_s=60) as limiter:
                first, first_s = await _timed(lambda: limiter.hit("key", 60))
                assert first.reason is Reason.FAIL_OPEN
                later = [await _timed(lambda: limiter.hit("key", 60)) for _ in range(20)]
                assert all(decision.reason is Reason.FAIL_OPEN for decision, _ in later)
                return first_s, [elapsed_s for _, elapsed_s in later]

        first_s, later_s = run(scenario())
        connections = listener.connections()
    assert 0.4 < first_s < 3
    assert max(later_s) < 0.4
    assert connections == 1
