"""Unauthenticated load and disclosure (issue 10 item 4), and long ``Idempotency-Key``s.

The app is the real one (:func:`build_api` over a real :class:`ExecutionService`: SQLite, the
in-process limiter) served in-process through httpx's ASGI transport, which lets each client
come from an address of its own. The executor handle is a stand-in answering readiness'
``stats`` and ``isolation`` calls and counting them; nothing here runs code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from serve_app.db import Database, audit, keys
from serve_app.http import ExecutionService, build_api
from serve_app.http._health import Readiness
from serve_app.ratelimit import build_rate_limiter
from serve_app.settings import Settings
from tests.support.api import auth, error_code
from tests.support.settings import migrated_sqlite_settings

FAILURES_PER_MINUTE = 3
ATTACKER = "203.0.113.7"
NEIGHBOUR = "198.51.100.9"
ISOLATION = {"ok": True, "mode": "bubblewrap", "layers": ["pid", "user"], "uid": 60000}


class Remote:
    """``handle.method.remote()``: answers ``value`` and counts the calls."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self.calls = 0

    def remote(self, *_: Any, **__: Any) -> Any:
        self.calls += 1
        return self._answer()

    async def _answer(self) -> dict[str, Any]:
        await asyncio.sleep(0.01)  # a real round trip: concurrent callers overlap
        return self.value


class ExecutorStandIn:
    def __init__(self) -> None:
        self.stats = Remote({"alive_slots": 2, "slots": 2, "free_slots": 2, "busy_slots": 0})
        self.isolation = Remote(ISOLATION)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_sqlite_settings(tmp_path, auth_failures_per_minute=FAILURES_PER_MINUTE)


class App:
    def __init__(self, settings: Settings) -> None:
        self.database = Database.from_settings(settings)
        self.executor = ExecutorStandIn()
        self.service = ExecutionService(
            settings, self.database, build_rate_limiter(settings), self.executor
        )
        self.api = build_api(settings, self.service)
        self.key_lookups = 0

        @event.listens_for(self.database.engine, "before_cursor_execute")
        def count(_: Any, __: Any, statement: str, *___: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement:
                self.key_lookups += 1

    def key(self, name: str) -> str:
        with self.database.session() as session:
            return keys.create_key(session, self.service.settings.api_key_secret, name).plaintext

    @contextlib.asynccontextmanager
    async def client(self, address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.api, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client

    def audited(self) -> list[dict[str, Any]]:
        with self.database.session() as session:
            events = audit.list_events(session)
        return [
            {"address": e.source_address, **e.details}
            for e in reversed(events)
            if e.kind == "auth_failed"
        ]


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    served = App(settings)
    yield served
    served.database.dispose()


def bogus_key(app: App, n: int) -> str:
    """A well-formed key no one was given."""
    real = app.key(f"model-{n}")
    return real[:-6] + "AAAAAA"


def test_a_key_that_failed_is_refused_without_the_database(app: App) -> None:
    async def scenario() -> list[int]:
        wrong = bogus_key(app, 0)
        statuses = []
        async with app.client(NEIGHBOUR) as client:
            for _ in range(2):
                before = app.key_lookups
                response = await client.get("/v1/executions", headers=auth(wrong))
                statuses.append(response.status_code)
                statuses.append(app.key_lookups - before)
        await app.service.aclose(5.0)
        return statuses

    # The first failure looks the key up; the second is refused from the replica's memory.
    assert asyncio.run(scenario()) == [401, 1, 401, 0]


def test_an_address_with_too_many_failures_is_throttled(app: App) -> None:
    async def scenario() -> None:
        good = app.key("worker")
        fresh = app.key("fresh")
        async with app.client(NEIGHBOUR) as neighbour:
            # A key that worked lately passes even from a throttled address.
            assert (await neighbour.get("/v1/executions", headers=auth(good))).status_code == 200
        async with app.client(ATTACKER) as attacker:
            for n in range(FAILURES_PER_MINUTE):
                wrong = auth(bogus_key(app, n))
                assert (await attacker.get("/v1/executions", headers=wrong)).status_code == 401
            crossing = await attacker.get("/v1/executions", headers=auth(bogus_key(app, 99)))
            assert (crossing.status_code, error_code(crossing)) == (429, "rate_limited")
            assert int(crossing.headers["retry-after"]) >= 1
            lookups = app.key_lookups
            for headers in (auth(bogus_key(app, 100)), {}, auth(fresh)):
                refused = await attacker.get("/v1/executions", headers=headers)
                assert (refused.status_code, error_code(refused)) == (429, "rate_limited")
                assert int(refused.headers["retry-after"]) >= 1
            assert app.key_lookups == lookups  # refused before any lookup
            app.service._auth_cache.clear()  # past AUTH_CACHE_TTL_S: looked up again
            assert (await attacker.get("/v1/executions", headers=auth(good))).status_code == 200
        async with app.client(NEIGHBOUR) as neighbour:  # other addresses are unaffected
            assert (await neighbour.get("/v1/executions", headers=auth(fresh))).status_code == 200
        await app.service.aclose(5.0)

    asyncio.run(scenario())
    events = app.audited()
    # Every counted failure is audited, the one that used up the address's allowance marked;
    # the refusals while throttled are not written one by one (an attacker would want that).
    assert [e["address"] for e in events] == [ATTACKER] * FAILURES_PER_MINUTE
    assert [e.get("throttled", False) for e in events] == [False] * (FAILURES_PER_MINUTE - 1) + [
        True
    ]


def test_readiness_details_need_a_key(app: App) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        good = app.key("operator")
        async with app.client(NEIGHBOUR) as client:
            anonymous = await client.get("/health/ready")
            operator = await client.get("/health/ready", headers=auth(good))
            wrong = await client.get("/health/ready", headers=auth(bogus_key(app, 1)))
        await app.service.aclose(5.0)
        return anonymous, operator, wrong

    anonymous, operator, wrong = asyncio.run(scenario())
    assert anonymous.status_code == operator.status_code
    public = anonymous.json()
    assert public["status"] == operator.json()["status"]
    checks = {"database", "redis", "executors", "sandbox", "disk", "memory", "sessions"}
    assert set(public["checks"]) == checks
    assert all(set(check) == {"ok"} for check in public["checks"].values()), public
    for secret in ("layers", "60000", "free_bytes", "available_bytes", "busy_slots", "rtt_ms"):
        assert secret not in anonymous.text
    full = operator.json()["checks"]
    assert full["sandbox"]["layers"] == ["pid", "user"] and full["sandbox"]["uid"] == 60000
    assert full["executors"]["busy_slots"] == 0 and "available_bytes" in full["memory"]
    assert (wrong.status_code, error_code(wrong)) == (401, "unauthorized")


def test_readiness_is_computed_once_for_concurrent_callers(app: App) -> None:
    now = [100.0]
    readiness = Readiness(app.service, ttl_s=1.0, clock=lambda: now[0])

    async def scenario() -> None:
        answers = await asyncio.gather(*(readiness.get() for _ in range(20)))
        assert len({id(answer) for answer in answers}) == 1
        assert (readiness.computed, app.executor.stats.calls) == (1, 1)
        now[0] += 0.5
        await readiness.get()
        assert readiness.computed == 1  # still fresh
        now[0] += 0.5
        await readiness.get()
        assert (readiness.computed, app.executor.stats.calls) == (2, 2)
        await app.service.aclose(5.0)

    asyncio.run(scenario())


def test_the_route_shares_one_readiness_between_callers(app: App) -> None:
    async def scenario() -> None:
        async with app.client(NEIGHBOUR) as client:
            answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(10)))
        assert {answer.status_code for answer in answers} <= {200, 503}
        # Ten callers at once: the checks ran once, not ten times.
        assert app.executor.stats.calls == 1
        await app.service.aclose(5.0)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "header",
    [b"k" * 256, b"k" * 10_000, "caf\u00e9".encode("latin-1"), b"tab\there"],
    ids=["256", "10k", "latin", "tab"],
)
def test_an_idempotency_key_is_refused_rather_than_cut(app: App, header: bytes) -> None:
    """Issue 10 item 5: keys over 255 characters were cut, so two long keys sharing their first
    255 characters replayed each other's execution."""

    async def scenario() -> httpx.Response:
        key = app.key("idempotent")
        async with app.client(NEIGHBOUR) as client:
            response = await client.post(
                "/v1/executions",
                json={"code": "print(1)"},
                headers=[*auth(key).items(), ("Idempotency-Key", header)],
            )
        await app.service.aclose(5.0)
        return response

    response = asyncio.run(scenario())
    assert (response.status_code, error_code(response)) == (422, "invalid_request")
    assert response.json()["error"]["details"][0]["field"] == "header.Idempotency-Key"
    assert header.decode("latin-1") not in response.text
