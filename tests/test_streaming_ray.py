"""Streaming on Ray: the executor deployment's ``run_stream`` through a Serve handle, a session
host's ``call_stream`` through :class:`SessionHosts`, and interactive standard input from a
:class:`StdinRelays` actor to both (real Serve, real session host actors, real sandboxes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from executors import (
    EndReason,
    ExecutionRequest,
    Limits,
    SandboxConfig,
    SessionBusyError,
    SessionHostOptions,
    SessionHosts,
    SessionSpec,
    StdinOverflowError,
    StdinRelays,
    build_executor_app,
)
from tests.support.limits import MIB

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

LIMITS = Limits(
    wall_timeout_s=20,
    cpu_time_s=20,
    memory_bytes=128 * MIB,
    max_output_bytes=64 * 1024,
    max_processes=16,
    max_file_bytes=MIB,
)
APP = "exec-agent-test-streaming"
DIALOGUE = (
    "for q in ('name', 'city'):\n"
    "    print(q + '?', flush=True)\n"
    "    print('got', input())\n"
    "try:\n"
    "    input()\n"
    "except EOFError:\n"
    "    print('eof')\n"
)


@pytest.fixture(scope="module")
def executor(ray_session: None) -> Iterator[Any]:
    """A one-slot executor deployment (one slot: a run that holds it shows at once)."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    app = build_executor_app(
        SandboxConfig(default_runtime="minimal"), 1, min_replicas=1, max_replicas=1, num_cpus=0.5
    )
    handle = serve.run(app, name=APP, route_prefix=None)
    yield handle
    serve.delete(APP)
    serve.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def relays(ray_session: None) -> Iterator[StdinRelays]:
    relays = StdinRelays(max_pending_bytes=64 * 1024)
    yield relays
    relays.shutdown()


def request(code: str, **fields: Any) -> ExecutionRequest:
    return ExecutionRequest(code=code, limits=LIMITS, runtime="minimal", **fields)


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event async for event in events]


def text_of(events: list[dict[str, Any]], stream: str) -> str:
    return "".join(event["text"] for event in events if event["type"] == stream)


def test_a_streamed_run_yields_its_output_then_its_record(executor: Any) -> None:
    code = "import sys, time\nprint('a')\ntime.sleep(1)\nprint('b', file=sys.stderr)\nprint('c')"

    async def scenario() -> list[tuple[float, dict[str, Any]]]:
        stream = executor.options(stream=True).run_stream.remote(request(code))
        return [(time.monotonic(), event) async for event in stream]

    timed = asyncio.run(scenario())
    events = [event for _, event in timed]
    assert events[-1]["type"] == "record"
    record = events[-1]["record"]
    assert record["status"] == "ok" and record["stream_dropped_bytes"] == 0
    assert text_of(events, "stdout") == record["stdout"] == "a\nc\n"
    assert text_of(events, "stderr") == record["stderr"] == "b\n"
    # Chunks follow the program's writes (print writes "a", then its "\n", perhaps apart).
    first_at = next(at for at, event in timed if event.get("text", "").startswith("a"))
    assert timed[-1][0] - first_at > 0.5  # "a" came while the program slept


def test_a_closed_stream_kills_its_run(executor: Any) -> None:
    async def scenario() -> dict[str, Any]:
        stream = executor.options(stream=True).run_stream.remote(
            request("import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)")
        )
        async for event in stream:
            assert event["type"] == "stdout"
            break
        stream.cancel()
        # One slot: the next run gets it only once the first was killed.
        started = time.monotonic()
        record: dict[str, Any] = await executor.run.remote(request("print('next')"))
        record["waited_s"] = time.monotonic() - started
        return record

    record = asyncio.run(scenario())
    assert record["status"] == "ok" and record["stdout"] == "next\n"
    assert record["waited_s"] < LIMITS.wall_timeout_s  # not held until the first's wall limit


def test_interactive_input_reaches_a_running_program(executor: Any, relays: StdinRelays) -> None:
    async def scenario() -> list[dict[str, Any]]:
        channel = await relays.open()
        events: list[dict[str, Any]] = []
        try:
            stream = executor.options(stream=True).run_stream.remote(
                request(DIALOGUE), stdin=channel
            )
            answers = iter(["Ada", "Paris"])
            async for event in stream:
                events.append(event)
                if event["type"] == "stdout" and event["text"].rstrip().endswith("?"):
                    answer = next(answers, None)
                    if answer is not None:
                        await relays.send(channel, answer + "\n")
                    if answer == "Paris":
                        await relays.end(channel)
        finally:
            await relays.close(channel)
        return events

    events = asyncio.run(scenario())
    record = events[-1]["record"]
    assert record["status"] == "ok", record
    assert record["stdout"] == "name?\ngot Ada\ncity?\ngot Paris\neof\n"
    assert text_of(events, "stdout") == record["stdout"]


def test_input_nobody_reads_is_refused_not_kept(relays: StdinRelays) -> None:
    async def scenario() -> bool:
        channel = await relays.open()
        try:
            for _ in range(100):
                await relays.send(channel, "z" * 8192)
        except StdinOverflowError:
            return True
        finally:
            await relays.close(channel)
        return False

    assert asyncio.run(scenario())


@pytest.fixture(scope="module")
def hosts(ray_session: None) -> Iterator[SessionHosts]:
    options = SessionHostOptions(
        namespace="exec-agent-tests-streaming", capacity=4, min_hosts=0, memory_bytes_per_session=0
    )
    hosts = SessionHosts(SandboxConfig(default_runtime="minimal"), options)
    yield hosts
    asyncio.run(hosts.shutdown())


def test_a_session_call_streams_with_interactive_input(
    hosts: SessionHosts, relays: StdinRelays
) -> None:
    spec = SessionSpec(runtime="minimal", limits=LIMITS, idle_timeout_s=60.0, ttl_s=600.0)

    async def scenario() -> tuple[list[dict[str, Any]], str | None, bool]:
        state = await hosts.create(spec)
        channel = await relays.open()
        events: list[dict[str, Any]] = []
        try:
            stream = hosts.call_stream(
                state.host,
                state.id,
                request("x = input('who? ')\nprint('hi', x)\nx"),
                stdin=channel,
            )
            async for event in stream:
                events.append(event)
                if event["type"] == "stdout" and "who?" in event["text"]:
                    await relays.send(channel, "Grace\n")
        finally:
            await relays.close(channel)
        # The state stays; and a second call while one runs is refused before any event.
        slow = hosts.call_stream(state.host, state.id, request("import time; time.sleep(2); x"))
        first = asyncio.ensure_future(collect(slow))
        await asyncio.sleep(0.5)
        busy = False
        try:
            await collect(hosts.call_stream(state.host, state.id, request("x")))
        except SessionBusyError:
            busy = True
        later = await first
        await hosts.end(state.host, state.id, EndReason.DELETED)
        return events, later[-1]["record"]["result"], busy

    events, result, busy = asyncio.run(scenario())
    last = events[-1]
    assert last["type"] == "record" and last["state"].status == "active"
    assert last["record"]["stdout"] == "who? hi Grace\n" == text_of(events, "stdout")
    assert last["record"]["result"] == "'Grace'"
    assert result == "'Grace'"
    assert busy


def test_output_past_the_executors_buffer_is_dropped_and_counted_never_waited_for(
    executor: Any,
) -> None:
    """The executor holds at most ``buffer_bytes`` of output for its reader: a chunk that does
    not fit is dropped and counted, the program never waits for the reader, and its record
    keeps the whole output.

    The overflow is made all but certain rather than raced for: Ray's streaming generators have
    no backpressure, so a reader that sleeps does not reliably slow the executor's hop (CI once
    saw nothing dropped with many small writes). Here one write is 16 times the buffer: the
    executor reads a pipe in chunks of whole pages (4 KiB) or more, and none of those fits."""
    code = (
        "import os\n"
        "for i in range(200):\n"
        "    print(f'{i:07d}', flush=True)\n"
        "os.write(1, b'#' * 16000)\n"
        "print('end', flush=True)"
    )

    async def scenario() -> list[dict[str, Any]]:
        stream = executor.options(stream=True).run_stream.remote(request(code), buffer_bytes=1024)
        events: list[dict[str, Any]] = []
        async for event in stream:
            events.append(event)
            if len(events) == 1:
                await asyncio.sleep(0.5)  # a slow reader, as well
        return events

    events = asyncio.run(scenario())
    record = events[-1]["record"]
    assert record["status"] == "ok"
    expected = "".join(f"{i:07d}\n" for i in range(200)) + "#" * 16000 + "end\n"
    assert record["stdout"] == expected
    received = text_of(events, "stdout")
    assert record["stream_dropped_bytes"] > 0
    assert len(received) + record["stream_dropped_bytes"] == len(record["stdout"])
    assert all(len(e["text"].encode()) <= 1024 for e in events if e["type"] == "stdout")
    lines = [line for line in received.splitlines() if line.isdigit()]
    assert lines == sorted(set(lines))  # what arrived is in order, nothing twice
