"""Streaming output over HTTP (API.md, "Streaming output"): Server-Sent Events of single
executions and session calls, through Serve's proxy, one deployment per database backend.

Real Ray Serve (ingress + executor), real sandboxes and session hosts, a temporary SQLite
database, then a PostgreSQL schema of its own. A key per test keeps the rate and the in-flight
cap apart. What a stream says is checked against the record stored (``GET``), never against
timings: a chunk "arrived before the program ended" is shown by the execution still being
``running`` when it arrived.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from tests.support.api import auth, error_code
from tests.support.databases import DATABASE_BACKENDS, empty_database
from tests.support.polling import eventually
from tests.support.service import DeployedService, deployed_service, service_settings

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

APP_NAME = "exec-agent-streaming-test"
SECRET = SecretStr("streaming-test-api-key-secret-0123456789abcdef")
MIB = 1024 * 1024
MAX_OUTPUT_BYTES = 32 * MIB
"""The server's maximum, raised for the slow-reader test's 20 MiB of output."""
QUEUED = 2
"""Runs waiting at the executors' handle beyond its replica's (2 slots + 2): then 503."""
EVENT_STREAM = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[DeployedService]:
    directory: Path = tmp_path_factory.mktemp("streaming")
    settings_of = {
        "max_output_bytes": MAX_OUTPUT_BYTES,
        "max_record_bytes": 4 * MAX_OUTPUT_BYTES,
        "session_hosts_min": 0,
        "sessions_per_host": 2,
        "session_reserved_memory_mb": 16,
        "session_placement_timeout_s": 60.0,
        "executor_max_queued_requests": QUEUED,
    }
    with empty_database(request.param, directory) as url:
        settings = service_settings(url, SECRET, **settings_of)
        try:
            with deployed_service(settings, APP_NAME) as database:
                yield DeployedService(database, settings)
        finally:
            _shut_down_hosts(settings)


def _shut_down_hosts(settings: Any) -> None:
    import asyncio

    from executors import SessionHosts

    asyncio.run(SessionHosts(settings.sandbox_config(), settings.session_host_options()).shutdown())


@pytest.fixture
def key(server: DeployedService, request: pytest.FixtureRequest) -> str:
    return server.new_key(f"{request.node.originalname[:40]}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(server: DeployedService) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


# --- reading a stream


@dataclass
class Streamed:
    """What one stream said: its answer's headers and its events, in order."""

    headers: httpx.Headers
    events: list[tuple[str, Any]] = field(default_factory=list)

    def output(self, name: str) -> str:
        return "".join(data["text"] for kind, data in self.events if kind == name)

    def chunks(self, name: str) -> list[str]:
        return [data["text"] for kind, data in self.events if kind == name]

    @property
    def record(self) -> dict[str, Any]:
        kinds = [kind for kind, _ in self.events]
        assert kinds.count("record") == 1 and kinds[-1] == "record", kinds
        record: dict[str, Any] = self.events[-1][1]
        return record


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """The events of a ``text/event-stream`` answer as they arrive, each checked to be one
    ``event`` line and one ``data`` line of JSON."""
    pending = b""
    for chunk in response.iter_raw():
        pending += chunk
        while b"\n\n" in pending:
            block, pending = pending.split(b"\n\n", 1)
            kind_line, data_line = block.decode("utf-8").split("\n")
            assert kind_line.startswith("event: ") and data_line.startswith("data: "), block
            yield kind_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
    assert pending == b"", pending


def open_stream(
    client: httpx.Client, key: str, path: str, body: dict[str, Any], **headers: str
) -> Any:
    return client.stream("POST", path, json=body, headers={**auth(key), **EVENT_STREAM, **headers})


def stream(
    client: httpx.Client,
    key: str,
    code: str,
    *,
    path: str = "/v1/executions",
    headers: dict[str, str] | None = None,
    **body: Any,
) -> Streamed:
    """POST ``code`` asking for events; the whole stream, checked to be one."""
    with open_stream(client, key, path, {"code": code, **body}, **(headers or {})) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        streamed = Streamed(response.headers)
        streamed.events.extend(sse_events(response))
    return streamed


def stored(client: httpx.Client, key: str, execution_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/executions/{execution_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


# --- order, completeness, the record


INTERLEAVED = """
import sys
for i in range(200):
    print(f"out {i}", flush=True)
    if i % 10 == 0:
        print(f"err {i}", file=sys.stderr, flush=True)
"""


def test_chunks_come_in_order_whole_and_the_record_is_the_stored_one(
    client: httpx.Client, key: str
) -> None:
    streamed = stream(client, key, INTERLEAVED)

    record = streamed.record
    assert record["status"] == "ok"
    assert (
        streamed.output("stdout") == record["stdout"] == "".join(f"out {i}\n" for i in range(200))
    )
    assert streamed.output("stderr") == record["stderr"]
    assert record["stderr"] == "".join(f"err {i}\n" for i in range(0, 200, 10))
    assert record["stream_dropped_bytes"] == 0
    assert {kind for kind, _ in streamed.events} == {"stdout", "stderr", "record"}
    assert stored(client, key, record["id"]) == record
    headers = streamed.headers
    assert headers["location"] == f"/v1/executions/{record['id']}"
    assert headers["x-accel-buffering"] == "no"
    assert "no-store" in headers["cache-control"]
    assert headers["x-request-id"]
    assert int(headers["ratelimit-limit"]) > 0


def test_a_plain_request_still_answers_json_and_is_not_streamed(
    client: httpx.Client, key: str
) -> None:
    response = client.post(
        "/v1/executions", json={"code": "print(1)"}, headers={**auth(key), "Accept": "*/*"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["stream_dropped_bytes"] is None


def test_the_first_chunk_arrives_while_the_program_still_runs(
    client: httpx.Client, key: str
) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('last')"
    with open_stream(client, key, "/v1/executions", {"code": code}) as response:
        assert response.status_code == 200
        events = sse_events(response)
        kind, data = next(events)
        assert kind == "stdout" and "first\n".startswith(data["text"]), (kind, data)
        execution_id = response.headers["location"].rsplit("/", 1)[1]
        assert stored(client, key, execution_id)["status"] == "running"
        rest = list(events)
    assert rest[-1][1]["stdout"] == "first\nlast\n"
    assert rest[-1][1]["status"] == "ok"


def test_a_wait_false_body_streams_all_the_same(client: httpx.Client, key: str) -> None:
    streamed = stream(client, key, "print('hi')", wait=False)
    assert streamed.output("stdout") == "hi\n"
    assert streamed.record["status"] == "ok"


def test_a_request_with_cases_streams_only_its_record(client: httpx.Client, key: str) -> None:
    code = "print(input())"
    cases = [{"stdin": "a\n", "expected_stdout": "a\n"}, {"stdin": "b\n", "expected_stdout": "b\n"}]
    streamed = stream(client, key, code, cases=cases)
    assert [kind for kind, _ in streamed.events] == ["record"]
    assert streamed.record["passed"] is True
    assert stored(client, key, streamed.record["id"]) == streamed.record


# --- output: its size, its caps, its characters


def test_large_output_within_its_cap_streams_whole(client: httpx.Client, key: str) -> None:
    code = "import sys\nfor i in range(8192):\n    sys.stdout.write(f'{i:063d}\\n')"
    streamed = stream(client, key, code, limits={"max_output_bytes": MIB})
    record = streamed.record
    assert record["status"] == "ok" and not record["stdout_truncated"]
    assert len(record["stdout"]) == 8192 * 64
    assert streamed.output("stdout") == record["stdout"]
    assert record["stream_dropped_bytes"] == 0
    assert stored(client, key, record["id"]) == record


def test_output_past_its_cap_stops_at_the_cap(client: httpx.Client, key: str) -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('y' * 1023 + '\\n')"
    cap = 64 * 1024
    streamed = stream(client, key, code, limits={"max_output_bytes": cap, "wall_timeout_s": 20})
    record = streamed.record
    assert record["status"] == "output_limit"
    assert record["stdout_truncated"] is True
    assert len(record["stdout"].encode()) <= cap
    assert streamed.output("stdout") == record["stdout"]
    assert record["stream_dropped_bytes"] == 0


def test_characters_written_a_byte_at_a_time_arrive_whole(client: httpx.Client, key: str) -> None:
    text = "é€😀"
    code = (
        "import sys, time\n"
        f"for byte in {text.encode()!r}:\n"
        "    sys.stdout.buffer.write(bytes([byte]))\n"
        "    sys.stdout.buffer.flush()\n"
        "    time.sleep(0.05)\n"
    )
    streamed = stream(client, key, code)
    assert streamed.output("stdout") == streamed.record["stdout"] == text
    for chunk in streamed.chunks("stdout"):
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")  # whole characters: no lone surrogate either


# --- a client that does not read


def _replica_processes(server: DeployedService) -> list[psutil.Process]:
    """The processes of this service's Serve replicas (ingress, executor) and Serve's proxy."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if f"ServeReplica:{APP_NAME}:" in command or "ray::ProxyActor" in command:
            found.append(process)
    return found


def _rss(processes: list[psutil.Process]) -> dict[int, int]:
    sizes = {}
    for process in processes:
        try:
            sizes[process.pid] = process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return sizes


def test_a_client_that_reads_nothing_neither_holds_the_run_nor_grows_memory(
    server: DeployedService, client: httpx.Client, key: str
) -> None:
    processes = _replica_processes(server)
    assert len(processes) >= 3  # the ingress, the executor, the proxy
    before = _rss(processes)
    written = 20 * MIB
    code = (
        f"import sys\nfor i in range({written // 1024}):\n    sys.stdout.write('z' * 1023 + '\\n')"
    )
    body = {"code": code, "limits": {"max_output_bytes": MAX_OUTPUT_BYTES, "wall_timeout_s": 30}}
    peak: dict[int, int] = dict(before)
    with open_stream(client, key, "/v1/executions", body) as response:
        assert response.status_code == 200
        execution_id = response.headers["location"].rsplit("/", 1)[1]

        def ended() -> dict[str, Any] | None:
            for pid, rss in _rss(processes).items():
                peak[pid] = max(peak.get(pid, 0), rss)
            record = stored(client, key, execution_id)
            return record if record["status"] != "running" else None

        finished = eventually(ended, 90, "the run ended while its client read nothing")
        streamed = Streamed(response.headers)
        streamed.events.extend(sse_events(response))
    record = streamed.record
    assert record == finished
    assert record["status"] == "ok"
    received = len(streamed.output("stdout").encode())
    assert received + record["stream_dropped_bytes"] == len(record["stdout"].encode()) == written
    growth = {pid: peak[pid] - before.get(pid, peak[pid]) for pid in peak}
    assert max(growth.values()) < 300 * MIB, growth


# --- disconnects


def _raw_request(server: DeployedService, key: str, code: str) -> socket.socket:
    """A streamed execution asked for on a socket of our own, to drop whenever we like."""
    body = json.dumps({"code": code}).encode()
    connection = socket.create_connection(("127.0.0.1", server.settings.port))
    head = (
        "POST /v1/executions HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


def _running(server: DeployedService, key_name: str) -> list[Any]:
    return [row for row in server.stored(key_name) if row.status.value == "running"]


def _cancelled_promptly(
    server: DeployedService, client: httpx.Client, key: str, key_name: str, dropped_at: float
) -> None:
    """The dropped stream's execution ends ``internal_error``, and its slot is free again: two
    runs (the executor's two slots) finish before its program's 30 s would have."""
    rows = eventually(
        lambda: [row for row in server.stored(key_name) if row.status.value != "running"],
        25,
        "the dropped stream's execution ended",
    )
    assert [row.status.value for row in rows] == ["internal_error"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda _: client.post(
                    "/v1/executions", json={"code": "print(2)"}, headers=auth(key)
                ),
                range(2),
            )
        )
    assert [answer.json()["status"] for answer in answers] == ["ok", "ok"]
    assert time.monotonic() - dropped_at < 25  # the 30 s program did not keep its slot


def test_a_disconnect_before_the_first_chunk_cancels_the_run(
    server: DeployedService, client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    key_name = f"drop-early-{uuid.uuid4().hex[:8]}"
    key = server.new_key(key_name)
    connection = _raw_request(server, key, "import time\ntime.sleep(30)")
    eventually(lambda: _running(server, key_name), 20, "the run started")
    time.sleep(1)
    connection.close()
    _cancelled_promptly(server, client, key, key_name, time.monotonic())


def test_a_disconnect_after_some_chunks_cancels_the_run(
    server: DeployedService, client: httpx.Client
) -> None:
    key_name = f"drop-late-{uuid.uuid4().hex[:8]}"
    key = server.new_key(key_name)
    code = "import time\nfor i in range(300):\n    print(i, flush=True)\n    time.sleep(0.1)"
    connection = _raw_request(server, key, code)
    received = b""
    while received.count(b"event: stdout") < 3:
        received += connection.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    connection.close()
    _cancelled_promptly(server, client, key, key_name, time.monotonic())


# --- refused before it runs: JSON, not events


def test_a_refused_request_gets_its_json_error(
    server: DeployedService, client: httpx.Client, key: str
) -> None:
    invalid = client.post("/v1/executions", json={"code": 1}, headers={**auth(key), **EVENT_STREAM})
    assert invalid.status_code == 422 and error_code(invalid) == "invalid_request"
    assert invalid.headers["content-type"] == "application/json"
    anonymous = client.post("/v1/executions", json={"code": "print(1)"}, headers=EVENT_STREAM)
    assert anonymous.status_code == 401 and error_code(anonymous) == "unauthorized"
    assert anonymous.headers["content-type"] == "application/json"
    limited = server.new_key(f"limited-{uuid.uuid4().hex[:8]}", rate_limit_per_minute=1)
    assert stream(client, limited, "print(1)").record["status"] == "ok"
    refused = client.post(
        "/v1/executions", json={"code": "print(1)"}, headers={**auth(limited), **EVENT_STREAM}
    )
    assert refused.status_code == 429 and error_code(refused) == "rate_limited"
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"]


def test_a_burst_beyond_the_executors_queue_is_refused_with_json_503(
    server: DeployedService,
) -> None:
    key_name = f"burst-{uuid.uuid4().hex[:8]}"
    key = server.new_key(key_name, max_concurrency=20)
    code = "import time\nprint('going', flush=True)\ntime.sleep(2)"

    def one(_: int) -> tuple[int, str, Any]:
        with server.client() as http, open_stream(http, key, "/v1/executions", {"code": code}) as r:
            kind = r.headers["content-type"]
            said = list(sse_events(r)) if r.status_code == 200 else json.loads(r.read())
            return r.status_code, kind, said

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    refused = [said for status, _, said in answers if status == 503]
    streamed = [said for status, _, said in answers if status == 200]
    assert refused and streamed, [status for status, _, _ in answers]
    assert len(refused) + len(streamed) == len(answers)
    for status, kind, _ in answers:
        assert kind.startswith("text/event-stream" if status == 200 else "application/json")
    assert {said["error"]["code"] for said in refused} == {"overloaded"}
    records = [events[-1][1] for events in streamed]
    assert {record["status"] for record in records} == {"ok"}
    outputs = {"".join(data["text"] for kind, data in events[:-1]) for events in streamed}
    assert outputs == {"going\n"}
    # A refused run was never accepted: only the streamed ones are stored.
    rows = server.stored(key_name)
    assert sorted(str(row.id) for row in rows) == sorted(record["id"] for record in records)


# --- no run: replays and cache hits


def test_an_idempotent_replay_streams_the_first_execution(client: httpx.Client, key: str) -> None:
    code = "import sys\nprint('once')\nprint('warned', file=sys.stderr)"
    header = {"Idempotency-Key": f"stream-{uuid.uuid4()}"}
    first = stream(client, key, code, headers=header)
    again = stream(client, key, code, headers=header)
    assert again.record == first.record == stored(client, key, first.record["id"])
    assert again.events == [
        ("stdout", {"text": "once\n"}),
        ("stderr", {"text": "warned\n"}),
        ("record", first.record),
    ]


def test_a_cache_hit_streams_the_cached_output(client: httpx.Client, key: str) -> None:
    code = f"print('cached {uuid.uuid4()}')"
    first = stream(client, key, code, cache=True)
    hit = stream(client, key, code, cache=True)
    record = hit.record
    assert record["cached"] is True and record["cached_from"] == first.record["id"]
    assert record["id"] != first.record["id"]
    assert hit.events[:-1] == [("stdout", {"text": first.record["stdout"]})]
    assert record["stream_dropped_bytes"] == 0
    assert stored(client, key, record["id"]) == record


# --- sessions


def test_a_session_call_streams_and_keeps_the_session_state(client: httpx.Client, key: str) -> None:
    created = client.post("/v1/sessions", json={"runtime": "minimal"}, headers=auth(key))
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    path = f"/v1/sessions/{session_id}/executions"
    try:
        streamed = stream(client, key, "x = 41\nprint('hi', flush=True)\nx + 1", path=path)
        record = streamed.record
        assert streamed.output("stdout") == record["stdout"] == "hi\n"
        assert record["result"] == "42" and record["session_id"] == session_id
        assert record["stream_dropped_bytes"] == 0
        assert streamed.headers["location"] == f"/v1/executions/{record['id']}"
        assert stored(client, key, record["id"]) == record
        again = client.post(path, json={"code": "x"}, headers=auth(key))
        assert again.status_code == 200 and again.json()["result"] == "41"
        missing = client.post(
            "/v1/sessions/00000000-0000-0000-0000-000000000000/executions",
            json={"code": "x"},
            headers={**auth(key), **EVENT_STREAM},
        )
        assert missing.status_code == 404 and error_code(missing) == "not_found"
    finally:
        client.delete(f"/v1/sessions/{session_id}", headers=auth(key))
    ended = client.post(path, json={"code": "x"}, headers={**auth(key), **EVENT_STREAM})
    assert ended.status_code == 410 and error_code(ended) == "session_terminated"


# --- the executor lost mid-stream (last: Serve replaces the replica meanwhile)


def _executor_pids() -> list[int]:
    title = f"ray::ServeReplica:{APP_NAME}:SandboxExecutor"
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or ())
        if command.startswith(title) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


def test_an_executor_lost_mid_stream_ends_it_with_an_internal_error_record(
    server: DeployedService, client: httpx.Client, key: str
) -> None:
    if not server.settings.database_url.startswith("sqlite"):
        pytest.skip("the executors' side: once is enough, on the first backend")
    [victim] = _executor_pids()
    code = "import time\nfor i in range(300):\n    print(i, flush=True)\n    time.sleep(0.1)"
    with open_stream(client, key, "/v1/executions", {"code": code}) as response:
        events = sse_events(response)
        received = [next(events) for _ in range(3)]
        os.kill(victim, signal.SIGKILL)  # as the OOM killer or a crash would end it
        received += list(events)
    kind, record = received[-1]
    assert kind == "record" and record["status"] == "internal_error"
    assert [kind for kind, _ in received[:-1]] == ["stdout"] * (len(received) - 1)
    assert stored(client, key, record["id"]) == record
    eventually(
        lambda: [pid for pid in _executor_pids() if pid != victim],
        90,
        "Serve starts a new executor replica",
    )
    after = stream(client, key, "print('after the loss')")
    assert after.record["status"] == "ok"
