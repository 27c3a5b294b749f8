"""The Python client (:mod:`serve_app.client`), sync and asyncio, against the real service.

First what needs no server (retries of a connection that fails, the typed errors); then one
deployment for the module (ingress + executor, real sandboxes, SQLite) with ``MAX_BATCH_ITEMS``
at 3 so that batches are chunked, and ``ctypes`` denied so that a policy refusal can be seen.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import serve_app.client
from executors import TERMINAL_STATUSES
from serve_app.client import (
    AsyncClient,
    BatchAnswer,
    Client,
    ExecutionRecord,
    InvalidRequestResponse,
    NotFoundResponse,
    OutputEvent,
    PolicyViolationResponse,
    RateLimitedResponse,
    RecordEvent,
    RetryPolicy,
    ServerUnreachableError,
    SessionInfo,
    SessionTerminatedResponse,
    UnauthorizedResponse,
)
from tests.support.examples import docstring_example
from tests.support.service import DeployedService, deployed_service, service_settings

APP_NAME = "exec-agent-client-test"
SECRET = SecretStr("client-test-api-key-secret-0123456789abcdef")
MAX_BATCH_ITEMS = 3
EXAMPLE_SERVER = "http://127.0.0.1:8000"


def closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- without a server


def test_a_failed_connection_is_retried_only_where_sending_twice_is_safe() -> None:
    retry = RetryPolicy(max_attempts=3, backoff_s=0.3)
    with Client(f"http://127.0.0.1:{closed_port()}", "key", retry=retry) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError):
            client.runtimes()  # a GET: tried 3 times, 0.3 s then 0.6 s apart
        assert time.monotonic() - started >= 0.85
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError):
            client.create_session()  # a POST without Idempotency-Key: tried once
        with pytest.raises(ServerUnreachableError):
            client.submit_batch([{"code": "1"}])
        assert time.monotonic() - started < 0.3


def test_a_url_that_is_not_http_is_refused_at_once() -> None:
    for server in ("127.0.0.1:8000", "ftp://127.0.0.1"):
        with pytest.raises(ServerUnreachableError):
            Client(server, "key")
        with pytest.raises(ServerUnreachableError):
            AsyncClient(server, "key")


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(serve_app.client.KEY_ENV_VAR, "from-env")
    with Client("http://127.0.0.1:1") as client:
        assert client.http.headers["Authorization"] == "Bearer from-env"
    with Client("http://127.0.0.1:1", "given") as client:
        assert client.http.headers["Authorization"] == "Bearer given"


# --- one deployment for the rest


@pytest.fixture(scope="module")
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployedService]:
    directory: Path = tmp_path_factory.mktemp("client")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        max_batch_items=MAX_BATCH_ITEMS,
        denied_imports=["ctypes"],
    )
    try:
        with deployed_service(settings, APP_NAME) as database:
            yield DeployedService(database, settings)
    finally:
        from executors import SessionHosts

        hosts = SessionHosts(settings.sandbox_config(), settings.session_host_options())
        asyncio.run(hosts.shutdown())


@pytest.fixture
def key_name(request: pytest.FixtureRequest) -> str:
    return str(request.node.name[:60])


@pytest.fixture
def key(server: DeployedService, key_name: str) -> str:
    return server.new_key(key_name)


@pytest.fixture
def client(server: DeployedService, key: str) -> Iterator[Client]:
    with Client(server.url, key, max_batch_items=MAX_BATCH_ITEMS) as client:
        yield client


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_docstring_example_runs(
    server: DeployedService, key: str, key_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = docstring_example(serve_app.client.__doc__)
    assert EXAMPLE_SERVER in example and "Client(" in example
    monkeypatch.setenv(serve_app.client.KEY_ENV_VAR, key)
    program = example.replace(EXAMPLE_SERVER, server.url)
    exec(compile(program, "serve_app.client example", "exec"), {})  # noqa: S102 - our own text
    assert len(server.stored(key_name)) >= 10


@pytest.mark.ray
@pytest.mark.sandbox
def test_run_submit_wait_and_get(client: Client) -> None:
    record = client.run("print(input() * 2)", stdin="ab\n", runtime="minimal")
    assert isinstance(record, ExecutionRecord)
    assert (record.status, record.stdout, record.runtime) == ("ok", "abab\n", "minimal")
    queued = client.submit("import time; time.sleep(1); print(1)", runtime="minimal")
    assert queued.status in ("queued", "running")
    done = client.wait(queued.id)
    assert (done.id, done.status, done.stdout) == (queued.id, "ok", "1\n")
    assert client.get(str(queued.id)) == done
    judged = client.run(
        "print(int(input()) + 1)",
        runtime="minimal",
        cases=[{"stdin": "1", "expected_stdout": "2"}, {"stdin": "2", "expected_stdout": "4"}],
    )
    assert judged.passed is False and [case.passed for case in judged.cases or []] == [True, False]


@pytest.mark.ray
@pytest.mark.sandbox
def test_an_idempotency_key_runs_once(client: Client) -> None:
    given = str(uuid.uuid4())
    first = client.run("import random; print(random.random())", idempotency_key=given)
    again = client.run("import random; print(random.random())", idempotency_key=given)
    assert (again.id, again.stdout) == (first.id, first.stdout)


@pytest.mark.ray
@pytest.mark.sandbox
def test_listing_reads_every_page(client: Client) -> None:
    ids = [client.submit(f"print({i})", runtime="minimal").id for i in range(5)]
    page = client.executions_page(limit=2)
    assert len(page.items) == 2 and page.next_cursor is not None
    listed = [record.id for record in client.executions(page_size=2)]
    assert listed == ids[::-1]  # newest first, every page


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_batch_past_max_batch_items_is_sent_in_chunks_its_records_in_order(
    client: Client, server: DeployedService, key: str
) -> None:
    items = [{"code": f"print({i})", "runtime": "minimal"} for i in range(7)]
    records = client.batch(items)
    assert [record.stdout for record in records] == [f"{i}\n" for i in range(7)]
    assert all(record.status == "ok" for record in records)
    # Why the chunks: the server takes at most MAX_BATCH_ITEMS at once.
    with Client(server.url, key) as unchunked, pytest.raises(InvalidRequestResponse) as over:
        unchunked.batch(items)
    assert (over.value.http_status, over.value.code) == (422, "invalid_request")
    accepted = client.submit_batch(items[:2])
    answer = client.wait_batch(accepted.id)
    assert isinstance(answer, BatchAnswer)
    assert (answer.status, answer.total, answer.done) == ("done", 2, 2)


@pytest.mark.ray
@pytest.mark.sandbox
def test_sessions(client: Client) -> None:
    with client.create_session(runtime="minimal") as session:
        assert isinstance(session.info, SessionInfo) and session.info.status == "active"
        session.run("x = 20")
        assert session.run("x + 22").result == "42"
        *chunks, last = session.stream("print(x)")
        assert "".join(e.text for e in chunks if isinstance(e, OutputEvent)) == "20\n"
        assert isinstance(last, RecordEvent) and last.record.session_id == session.info.id
        assert client.get_session(session.id).calls == 3
        items, _ = client.sessions_page(limit=10)
        assert session.id in {str(item.id) for item in items}
    assert session.refresh().status == "terminated"
    with pytest.raises(SessionTerminatedResponse) as ended:
        session.run("x")
    assert (ended.value.http_status, ended.value.code) == (410, "session_terminated")


@pytest.mark.ray
@pytest.mark.sandbox
def test_streaming_artifacts_runtimes_and_health(client: Client) -> None:
    events = list(client.stream("import sys\nprint('a')\nprint('b', file=sys.stderr)"))
    *chunks, last = events
    shown = {"stdout": "", "stderr": ""}
    for event in chunks:
        assert isinstance(event, OutputEvent)
        shown[event.stream] += event.text  # chunks as the program wrote them
    assert shown == {"stdout": "a\n", "stderr": "b\n"}
    assert isinstance(last, RecordEvent) and last.record.status == "ok"
    code = "open('out/x.bin', 'wb').write(bytes(range(256)))"
    record = client.run(code, runtime="minimal")
    assert client.artifact(record.id, "out/x.bin") == bytes(range(256))
    with pytest.raises(NotFoundResponse):
        client.artifact(record.id, "out/absent.txt")
    assert {runtime.name for runtime in client.runtimes()} >= {"minimal", "scientific"}
    assert client.health() == {"status": "ok"}
    assert "checks" in client.health(ready=True)


@pytest.mark.ray
@pytest.mark.sandbox
def test_error_answers_are_typed_with_their_codes(server: DeployedService, client: Client) -> None:
    with pytest.raises(NotFoundResponse) as missing:
        client.get(str(uuid.uuid4()))
    assert (missing.value.http_status, missing.value.code) == (404, "not_found")
    with pytest.raises(InvalidRequestResponse) as invalid:
        client.run("print(1)", limits={"wall_timeout_s": -1})
    assert invalid.value.code == "invalid_request"
    assert any("wall_timeout_s" in detail["field"] for detail in invalid.value.details)
    with pytest.raises(PolicyViolationResponse) as denied:
        client.run("import ctypes")
    assert (denied.value.http_status, denied.value.code) == (422, "policy_violation")
    with Client(server.url, "not-a-key") as stranger, pytest.raises(UnauthorizedResponse) as who:
        stranger.runtimes()
    assert (who.value.http_status, who.value.code) == (401, "unauthorized")


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_429_is_retried_after_its_retry_after(server: DeployedService) -> None:
    key = server.new_key("retried-after", rate_limit_per_minute=60)  # a burst of 60, 1 a second
    with Client(server.url, key, retry=RetryPolicy(max_attempts=1)) as once:
        with pytest.raises(RateLimitedResponse) as limited:
            for _ in range(61):
                once.runtimes()
        assert limited.value.retry_after_s is not None and limited.value.retry_after_s >= 1
    with Client(server.url, key) as client:
        started = time.monotonic()
        assert client.runtimes()  # refused, then after Retry-After (1 s) answered
        assert time.monotonic() - started >= 0.9


@pytest.mark.ray
@pytest.mark.sandbox
def test_retries_stop_at_their_cap(server: DeployedService) -> None:
    key = server.new_key("retries-capped", rate_limit_per_minute=2)  # then 1 every 30 s
    with Client(server.url, key, retry=RetryPolicy(max_wait_s=5.0)) as client:
        client.runtimes()
        client.runtimes()
        started = time.monotonic()
        with pytest.raises(RateLimitedResponse) as limited:
            client.runtimes()  # Retry-After is past the 5 s budget: not waited for at all
        assert time.monotonic() - started < 5.0
    assert limited.value.code == "rate_limited" and (limited.value.retry_after_s or 0) > 5


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_async_client(server: DeployedService, key: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with AsyncClient(server.url, key, max_batch_items=MAX_BATCH_ITEMS) as client:
            runs = await asyncio.gather(
                *(client.run(f"print({i})", runtime="minimal") for i in range(3))
            )
            queued = await client.submit("print('later')", runtime="minimal")
            waited = await client.wait(queued.id)
            batch = await client.batch({"code": f"print({i})"} for i in range(5))
            listed = [record.id async for record in client.executions(page_size=3)]
            events = [event async for event in client.stream("print('s')", runtime="minimal")]
            async with await client.create_session(runtime="minimal") as session:
                await session.run("y = 2")
                result = (await session.run("y * 21")).result
            async with client.interactive("print(int(input()) * 2)", runtime="minimal") as run:
                await run.send_stdin("21\n")
                interactive = (await run.wait()).record.stdout
            with pytest.raises(NotFoundResponse):
                await client.get(str(uuid.uuid4()))
            async with AsyncClient(server.url, "not-a-key") as stranger:
                with pytest.raises(UnauthorizedResponse):
                    async with stranger.interactive("print(1)") as refused:
                        await refused.wait()
            return {
                "interactive": interactive,
                "runs": [record.stdout for record in runs],
                "waited": (waited.status, waited.stdout),
                "batch": [record.stdout for record in batch],
                "listed": len(listed),
                "events": events,
                "result": result,
                "health": await client.health(),
            }

    got = asyncio.run(scenario())
    assert got["runs"] == ["0\n", "1\n", "2\n"]
    assert got["waited"] == ("ok", "later\n")
    assert got["batch"] == [f"{i}\n" for i in range(5)]
    assert got["listed"] == 3 + 1 + 5  # every record of the key until then, all pages
    *chunks, last = got["events"]
    assert "".join(e.text for e in chunks if isinstance(e, OutputEvent)) == "s\n"
    assert isinstance(last, RecordEvent) and last.record.status in TERMINAL_STATUSES
    assert (got["result"], got["health"]) == ("42", {"status": "ok"})
    assert got["interactive"] == "42\n"
