"""Streaming in the engine: a run's output leaves the sandbox as the program writes it, whole
characters, within the caps, in order; interactive standard input reaches a running program as
it is given; the bounded buffer drops what a slow reader cannot take and says how much. On the
session's sandbox pool and a session host of its own (no Ray for these)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Iterator

import pytest

from executors import (
    EndReason,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionStatus,
    Limits,
    SandboxConfig,
    SandboxPool,
    SessionHost,
    SessionSpec,
    StdinOverflowError,
    StreamBuffer,
    buffered,
    output_event,
)
from executors._sandbox import LiveIO, StdinFeed
from tests.support.limits import MIB

pytestmark = pytest.mark.sandbox

LIMITS = Limits(
    wall_timeout_s=10.0,
    cpu_time_s=10.0,
    memory_bytes=256 * MIB,
    max_output_bytes=64 * 1024,
    max_processes=16,
    max_file_bytes=8 * MIB,
)


class Collected:
    """What a run streamed, with when each piece arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def __call__(self, stream: str, text: str) -> None:
        with self.lock:
            self.events.append((stream, text, time.monotonic()))

    def text(self, stream: str) -> str:
        return "".join(text for name, text, _ in self.events if name == stream)


def run_live(
    pool: SandboxPool, code: str, *, stdin: StdinFeed | None = None, **limits: float
) -> tuple[ExecutionRecord, Collected]:
    collected = Collected()
    request = ExecutionRequest(
        code=code, runtime="minimal", limits=LIMITS.model_copy(update=limits)
    )
    record = pool.run(request, live=LiveIO(on_output=collected, stdin=stdin))
    return record, collected


def test_output_streams_in_order_and_equals_the_record(sandbox_pool: SandboxPool) -> None:
    code = (
        "import sys\n"
        "for i in range(200):\n"
        "    print('out', i)\n"
        "    if i % 50 == 0: print('err', i, file=sys.stderr)\n"
    )
    record, got = run_live(sandbox_pool, code)
    assert record.status == ExecutionStatus.OK
    assert got.text("stdout") == record.stdout
    assert got.text("stderr") == record.stderr
    assert record.stdout.splitlines()[-1] == "out 199"


def test_first_chunk_arrives_while_the_program_still_runs(sandbox_pool: SandboxPool) -> None:
    started = time.monotonic()
    record, got = run_live(sandbox_pool, "import time\nprint('first')\ntime.sleep(2)\nprint('end')")
    ended = time.monotonic()
    assert record.status == ExecutionStatus.OK
    first = next(at for stream, text, at in got.events if "first" in text)
    last = next(at for stream, text, at in got.events if "end" in text)
    # Loose on purpose: only "before the program ends", with the 2 s sleep between them.
    assert first < last and first < ended and last - first > 1.0
    assert started < first


def test_characters_split_across_writes_arrive_whole(sandbox_pool: SandboxPool) -> None:
    code = (
        "import sys\n"
        "data = 'é€😀 ok'.encode() + b'\\xff'\n"
        "for i in range(len(data)):\n"
        "    sys.stdout.buffer.write(data[i:i+1]); sys.stdout.buffer.flush()\n"
    )
    record, got = run_live(sandbox_pool, code)
    assert record.status == ExecutionStatus.OK
    assert [text for _, text, _ in got.events if "\ufffd" in text[:-1]] == []
    assert got.text("stdout") == record.stdout == "é€😀 ok\ufffd"


def test_output_past_the_cap_streams_up_to_it(sandbox_pool: SandboxPool) -> None:
    record, got = run_live(sandbox_pool, "while True: print('x' * 999)", max_output_bytes=100_000)
    assert record.status == ExecutionStatus.OUTPUT_LIMIT
    assert record.stdout_truncated
    assert got.text("stdout") == record.stdout
    assert len(got.text("stdout").encode()) == 100_000


def test_interactive_input_is_read_as_it_comes(sandbox_pool: SandboxPool) -> None:
    feed = StdinFeed()
    code = (
        "import sys\n"
        "first = sys.stdin.readline()\n"
        "for q in ('name', 'age'):\n"
        "    print(q + '?', flush=True)\n"
        "    print('got', input())\n"
        "try:\n"
        "    input()\n"
        "except EOFError:\n"
        "    print('eof')\n"
        "print('first was', first.strip())\n"
    )
    result: list[tuple[ExecutionRecord, Collected]] = []
    collected = Collected()
    request = ExecutionRequest(code=code, stdin="hello\n", runtime="minimal", limits=LIMITS)

    def run() -> None:
        record = sandbox_pool.run(request, live=LiveIO(on_output=collected, stdin=feed))
        result.append((record, collected))

    worker = threading.Thread(target=run)
    worker.start()
    for question, answer in (("name?", "Ada"), ("age?", "36")):
        deadline = time.monotonic() + 8
        while question not in collected.text("stdout") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert question in collected.text("stdout")
        feed.put(answer.encode() + b"\n")
    feed.end()
    worker.join(15)
    record, _ = result[0]
    assert record.status == ExecutionStatus.OK, record
    assert record.stdout == "name?\ngot Ada\nage?\ngot 36\neof\nfirst was hello\n"
    assert collected.text("stdout") == record.stdout


def test_a_program_that_never_reads_its_input_cannot_fill_memory(
    sandbox_pool: SandboxPool,
) -> None:
    feed = StdinFeed(max_pending_bytes=256 * 1024)
    chunk = b"y" * 65536
    done = threading.Event()

    def run() -> None:
        run_live(sandbox_pool, "import time\ntime.sleep(1.5)", stdin=feed)
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    refused = False
    for _ in range(64):  # 4 MiB offered: the pipe takes 64 KiB, the feed its cap, no more
        try:
            feed.put(chunk)
        except StdinOverflowError:
            refused = True
            break
    assert refused
    worker.join(15)
    assert done.is_set()


def test_input_left_when_the_program_ends_is_dropped(sandbox_pool: SandboxPool) -> None:
    feed = StdinFeed()
    feed.put(b"unread\n" * 100)
    record, _ = run_live(sandbox_pool, "print('bye')", stdin=feed)
    assert record.status == ExecutionStatus.OK
    assert record.stdout == "bye\n"
    feed.put(b"after the end\n")  # ignored, no error


# --- the buffer


def test_buffer_merges_and_drops_past_its_bound_and_counts_it() -> None:
    async def scenario() -> list[dict[str, object]]:
        buffer = StreamBuffer(max_bytes=10)
        buffer.put_output("stdout", "abc")
        buffer.put_output("stdout", "def")
        buffer.put_output("stderr", "12345")  # 11 bytes: dropped
        buffer.put_output("stderr", "1")
        buffer.finish({"type": "record", "record": {"stdout": "abcdef"}})
        return [event async for event in buffer.events()]

    events = asyncio.run(scenario())
    assert events == [
        output_event("stdout", "abcdef"),
        output_event("stderr", "1"),
        {"type": "record", "record": {"stdout": "abcdef", "stream_dropped_bytes": 5}},
    ]


def test_buffer_never_merges_chunks_across_a_gap() -> None:
    async def scenario() -> list[dict[str, object]]:
        buffer = StreamBuffer(max_bytes=30)
        buffer.put_output("stdout", "A" * 10)
        buffer.put_output("stdout", "B" * 5000)  # dropped
        buffer.put_output("stdout", "C" * 10)
        buffer.finish({"type": "record", "record": {}})
        return [event async for event in buffer.events()]

    events = asyncio.run(scenario())
    assert events[:2] == [output_event("stdout", "A" * 10), output_event("stdout", "C" * 10)]
    assert events[2] == {"type": "record", "record": {"stream_dropped_bytes": 5000}}


def test_buffered_reads_upstream_while_its_reader_waits() -> None:
    async def scenario() -> tuple[list[dict[str, object]], int]:
        produced = 0

        async def upstream() -> AsyncGenerator[dict[str, object]]:
            nonlocal produced
            for i in range(1000):
                produced += 1
                yield output_event("stdout", f"{i:04d}\n")
            yield {"type": "record", "record": {"stream_dropped_bytes": 2}}

        stream = buffered(upstream(), max_bytes=1000)
        first = await stream.__anext__()
        await asyncio.sleep(0.2)  # a slow reader: upstream goes on regardless
        produced_while_waiting = produced
        rest = [event async for event in stream]
        return [first, *rest], produced_while_waiting

    events, produced = asyncio.run(scenario())
    assert produced == 1000
    record = events[-1]["record"]
    assert isinstance(record, dict)
    text = "".join(str(event.get("text", "")) for event in events[:-1])
    # Whatever was delivered is whole chunks in order; what was not is counted, with upstream's.
    numbers = [int(line) for line in text.splitlines()]
    assert numbers == sorted(set(numbers)) and len(numbers) < 1000
    assert text == "".join(f"{i:04d}\n" for i in numbers)
    assert record["stream_dropped_bytes"] == 2 + 5000 - len(text.encode())


def test_buffered_closes_upstream_when_its_reader_leaves() -> None:
    closed = asyncio.Event()

    async def scenario() -> bool:
        async def upstream() -> AsyncGenerator[dict[str, object]]:
            try:
                while True:
                    yield output_event("stdout", "x")
                    await asyncio.sleep(0.01)
            finally:
                closed.set()

        stream = buffered(upstream())
        await stream.__anext__()
        await stream.aclose()
        return closed.is_set()

    assert asyncio.run(scenario())


# --- sessions


@pytest.fixture(scope="module")
def host() -> Iterator[SessionHost]:
    host = SessionHost(SandboxConfig(default_runtime="minimal"), name="stream-tests", capacity=8)
    host.start()
    yield host
    host.close()


def test_a_session_call_streams_and_reads_interactive_input(host: SessionHost) -> None:
    spec = SessionSpec(runtime="minimal", limits=LIMITS, idle_timeout_s=60.0, ttl_s=600.0)
    session = host.create(spec).id
    collected = Collected()
    feed = StdinFeed()
    request = ExecutionRequest(
        code="x = input('who? ')\nprint('hi', x)\nx", runtime="minimal", limits=LIMITS
    )
    result: list[ExecutionRecord] = []

    def call() -> None:
        record, _ = host.call(session, request, LiveIO(on_output=collected, stdin=feed))
        result.append(record)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 8
    while "who?" not in collected.text("stdout") and time.monotonic() < deadline:
        time.sleep(0.01)
    feed.put(b"Grace\n")
    feed.end()
    worker.join(15)
    (record,) = result
    assert record.status == ExecutionStatus.OK, record
    assert record.stdout == "who? hi Grace\n" == collected.text("stdout")
    assert record.result == "'Grace'"
    again, _ = host.call(
        session, ExecutionRequest(code="print(x)", runtime="minimal", limits=LIMITS)
    )
    assert again.stdout == "Grace\n"
    host.end(session, EndReason.DELETED)
