"""Session hosts on Ray (the session's own Ray): hosts start as they fill up and retire once
empty, so that their reservations go back to Ray (and an autoscaler may remove their nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from executors import (
    EndReason,
    ExecutionRequest,
    Limits,
    SandboxConfig,
    SessionHostOptions,
    SessionHosts,
    SessionSpec,
    SessionStatus,
)
from tests.support.limits import MIB
from tests.support.polling import eventually

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

LIMITS = Limits(
    wall_timeout_s=5.0,
    cpu_time_s=5.0,
    memory_bytes=128 * MIB,
    max_output_bytes=65536,
    max_processes=16,
    max_file_bytes=MIB,
)


@pytest.fixture
def hosts(ray_session: None) -> Iterator[SessionHosts]:
    options = SessionHostOptions(
        namespace="exec-agent-tests-retire",
        capacity=1,
        min_hosts=0,
        retire_after_s=1.0,
        memory_bytes_per_session=0,
    )
    hosts = SessionHosts(SandboxConfig(default_runtime="minimal"), options)
    yield hosts
    asyncio.run(hosts.shutdown())


def names(hosts: SessionHosts) -> list[str]:
    return asyncio.run(hosts.host_names())


def test_hosts_start_as_they_fill_and_retire_once_empty(hosts: SessionHosts) -> None:
    spec = {"runtime": "minimal", "limits": LIMITS, "idle_timeout_s": 60.0, "ttl_s": 60.0}

    async def start_two() -> list[tuple[str, str | None]]:
        placed = []
        for number in range(2):
            state = await hosts.create(SessionSpec.model_validate(spec))
            request = ExecutionRequest(code=f"n = {number}\nn", limits=LIMITS, runtime="minimal")
            answer = await hosts.call(state.host, state.id, request)
            placed.append((state.host, answer.record.result))
            if number == 1:
                ended = await hosts.end(state.host, state.id, EndReason.DELETED)
                assert ended.status == SessionStatus.TERMINATED
        return placed

    placed = asyncio.run(start_two())
    assert [result for _, result in placed] == ["0", "1"]
    first, second = (host for host, _ in placed)
    assert first != second  # one place each: the second session needed a second host
    # The emptied host retires; the one still holding a session stays.
    eventually(lambda: names(hosts) == [first], 30.0, "the empty host retired")
