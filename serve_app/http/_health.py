"""``GET /health/ready``: one check per dependency, each ``{"ok": bool, ...details}``.

``database`` and ``executors`` are required: without one, nothing can run (``unavailable``).
``redis``, ``sandbox``, ``disk`` and ``memory`` are not: the service still runs, with the
limiter's failure policy, fewer isolation layers (the engine's loud warning; production refuses
to start instead) or less headroom (``degraded``). Either way the answer is 503; 200 only
when every check passes.

Details: ``database`` and ``redis`` their round-trip (``rtt_ms``); ``executors`` the slots of
the executor replica that answered (``slots``, ``free_slots``, ``busy_slots``, ``alive_slots``)
and how many replicas Serve runs (``replicas``, from ``serve.status()``, asked at the same time;
``null`` when unknown), and with runtimes on executors of their own (``runtime_executors``)
the same of each under ``runtimes`` (runtime: check; the ``executors`` check fails if one
does); ``sandbox`` the isolation layers in force; ``disk`` and ``memory`` the
headroom (``free_bytes``, ``available_bytes``); ``sessions`` the session hosts (``hosts``: each
one's name, node, active sessions and capacity) and the sessions active on them (``active``).
A failing ``sessions`` check degrades, never makes the service unavailable: executions go on.

The details are for callers with a valid API key (issue 10 item 4: isolation layers, uids, busy
slots and free memory help an attacker); anyone else, Kubernetes' probes included, gets the
status, the HTTP code and each check's ``ok`` (:func:`public_view`). The checks run at most once
per ``READINESS_TTL_S`` per replica, their result shared by every caller meanwhile
(:class:`Readiness`): a flood of probes costs no more database, Redis or executor work.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from serve_app.http.service import ExecutionService

__all__ = ["CHECK_TIMEOUT_S", "READINESS_TTL_S", "Readiness", "public_view", "readiness"]

CHECK_TIMEOUT_S = 2.0
READINESS_TTL_S = 1.0
MIN_FREE_DISK_BYTES = 256 * 1024 * 1024
MIN_AVAILABLE_MEMORY_BYTES = 256 * 1024 * 1024
REQUIRED = ("database", "executors")

Check = dict[str, Any]


async def readiness(
    service: ExecutionService, isolation_cache: dict[str, Any]
) -> tuple[int, Check]:
    """The HTTP status and body of ``/health/ready``.

    ``isolation_cache`` keeps the executors' isolation summary once read: it does not change
    while a replica lives, and asking again would queue behind running jobs.
    """
    database, redis, executors, sessions = await asyncio.gather(
        _database(service), _redis(service), _executors(service), _sessions(service)
    )
    sandbox = await _sandbox(service, isolation_cache)
    checks = {
        "database": database,
        "redis": redis,
        "executors": executors,
        "sandbox": sandbox,
        "disk": _disk(),
        "memory": _memory(),
        "sessions": sessions,
    }
    if all(check["ok"] for check in checks.values()):
        return 200, {"status": "ready", "checks": checks}
    required_ok = all(checks[name]["ok"] for name in REQUIRED)
    return 503, {"status": "degraded" if required_ok else "unavailable", "checks": checks}


class Readiness:
    """:func:`readiness`, computed at most once per ``ttl_s``: callers meanwhile get the last
    answer, and callers while it is computed wait for that one computation."""

    def __init__(
        self,
        service: ExecutionService,
        *,
        ttl_s: float = READINESS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._ttl_s = ttl_s
        self._clock = clock
        self._isolation: dict[str, Any] = {}
        self._answer: tuple[float, tuple[int, Check]] | None = None
        self._computing: asyncio.Future[tuple[int, Check]] | None = None
        self.computed = 0
        """How many times the checks ran (for tests and curiosity)."""

    async def get(self) -> tuple[int, Check]:
        """The HTTP status and full body of ``/health/ready``, at most ``ttl_s`` old."""
        if self._answer is not None and self._clock() - self._answer[0] < self._ttl_s:
            return self._answer[1]
        if self._computing is None:
            self._computing = asyncio.ensure_future(self._compute())
        # Shielded: a caller that goes away does not cancel the others' computation.
        return await asyncio.shield(self._computing)

    async def _compute(self) -> tuple[int, Check]:
        try:
            answer = await readiness(self._service, self._isolation)
            self.computed += 1
            self._answer = (self._clock(), answer)
            return answer
        finally:
            self._computing = None


def public_view(body: Check) -> Check:
    """What an unauthenticated caller sees of ``/health/ready``: the status and each check's
    ``ok``, no detail."""
    checks = body.get("checks", {})
    return {
        "status": body["status"],
        "checks": {name: {"ok": bool(check.get("ok"))} for name, check in checks.items()},
    }


async def _timed(work: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await asyncio.wait_for(work, CHECK_TIMEOUT_S)
    return result, round((time.perf_counter() - started) * 1000, 2)


def _failure(exc: BaseException) -> Check:
    # The class only: a message may hold a DSN or an internal address.
    name = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return {"ok": False, "error": name}


async def _database(service: ExecutionService) -> Check:
    try:
        _, rtt_ms = await _timed(asyncio.to_thread(service.database.ping))
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        return _failure(exc)
    return {"ok": True, "backend": service.database.backend, "rtt_ms": rtt_ms}


async def _redis(service: ExecutionService) -> Check:
    try:
        health, _ = await _timed(service.limiter.check())
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        return _failure(exc)
    return health.as_dict()  # type: ignore[no-any-return]


async def _executors(service: ExecutionService) -> Check:
    """The main executors' check; with runtimes on executors of their own, each one's too
    (``runtimes``), all of them required."""
    runtimes = service.runtime_executors
    main, *own = await asyncio.gather(
        _executor(service.executor), *(_executor(runtimes[name]) for name in runtimes)
    )
    if not own:
        return main
    checks = dict(zip(runtimes, own, strict=True))
    ok = main["ok"] and all(check["ok"] for check in own)
    return {**main, "ok": ok, "runtimes": checks}


async def _executor(executor: Any) -> Check:
    replicas = asyncio.ensure_future(_running_replicas(executor))
    try:
        stats, rtt_ms = await _timed(executor.stats.remote())
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        replicas.cancel()
        return _failure(exc)
    ok = bool(stats.get("alive_slots")) and not stats.get("closed")
    details = {name: stats.get(name) for name in ("slots", "free_slots", "busy_slots")}
    return {
        "ok": ok,
        **details,
        "alive_slots": stats.get("alive_slots"),
        "replicas": await replicas,
        "rtt_ms": rtt_ms,
    }


async def _running_replicas(executor: Any) -> int | None:
    """How many replicas of the executor deployment Serve runs; None if it cannot say."""
    app_name = getattr(executor, "app_name", None)
    deployment_name = getattr(executor, "deployment_name", None)
    if not isinstance(app_name, str) or not isinstance(deployment_name, str):
        return None  # not a DeploymentHandle (a Ray actor, a test's stand-in)

    def running() -> int:
        from ray import serve

        deployment = serve.status().applications[app_name].deployments[deployment_name]
        return sum(n for state, n in deployment.replica_states.items() if state == "RUNNING")

    try:
        count, _ = await _timed(asyncio.to_thread(running))
    except Exception:  # noqa: BLE001 - a detail, not the check: the stats call decides
        return None
    return int(count)


async def _sandbox(service: ExecutionService, cache: dict[str, Any]) -> Check:
    if not cache:
        try:
            summary, _ = await _timed(service.executor.isolation.remote())
        except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
            return _failure(exc)
        cache.update(summary)
    return dict(cache)


async def _sessions(service: ExecutionService) -> Check:
    if service.sessions is None:
        return {"ok": False, "error": "no session hosts"}
    try:
        overview, rtt_ms = await _timed(service.sessions.hosts.overview())
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        return _failure(exc)
    fields = ("name", "node_id", "active", "capacity")
    hosts = [{name: host.get(name) for name in fields} for host in overview.hosts]
    return {"ok": True, "active": overview.active, "hosts": hosts, "rtt_ms": rtt_ms}


def _disk() -> Check:
    try:
        usage = shutil.disk_usage(Path.cwd())  # where the embedded database and logs live
    except OSError as exc:
        return _failure(exc)
    return {"ok": usage.free >= MIN_FREE_DISK_BYTES, "free_bytes": usage.free}


def _memory() -> Check:
    try:
        available = psutil.virtual_memory().available  # MemAvailable of /proc/meminfo on Linux
    except OSError as exc:
        return _failure(exc)
    return {"ok": available >= MIN_AVAILABLE_MEMORY_BYTES, "available_bytes": available}
