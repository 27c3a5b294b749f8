"""Streaming as clients see it (API.md, "Streaming output"): ``exec-agent run --server``
showing output as it comes (over SSE; over the WebSocket with a terminal's typed input), and
the Python client beneath it (``Client.stream``, ``Client.interactive``, ``Session.stream``).

The SSE parser alone first (the wire format, cut at every byte); then one Serve deployment
for the module (ingress + executor, real sandboxes, SQLite), and the command line as a user
runs it: a subprocess, under a pseudo-terminal for the interactive runs.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from executors import TERMINAL_STATUSES
from serve_app._cli_stream import Echo
from serve_app._sse import ServerSentEvent, SseParser
from serve_app.client import (
    Client,
    ExecutionSocket,
    OutputEvent,
    RecordEvent,
    RefusalEvent,
    execution_body,
)
from serve_app.errors import ApiErrorResponse, ServerUnreachableError
from tests.support.api import auth
from tests.support.polling import eventually
from tests.support.service import DeployedService, deployed_service, service_settings

EXEC_AGENT = Path(sys.executable).with_name("exec-agent")
APP_NAME = "exec-agent-cli-streaming-test"
SECRET = SecretStr("cli-streaming-test-api-key-secret-0123456789")
MAX_STDIN_BYTES = 4096
WAIT_S = 60.0
"""How long a test waits for what must come (a safety net, not a speed goal)."""

# --- the SSE parser, on the wire format alone

WIRE = (
    b"\xef\xbb\xbf: a comment, as servers send to keep a connection open\r\n"
    b'event: stdout\r\ndata: {"text": "\xe2\x9c\x93"}\r\n\r\n'
    b"data:first\rdata: second\r\r"
    b"id: 7\nevent: record\ndata:  two spaces\nretry: 10\nunknown\n\n"
    b"event: stderr\n\n"  # no data: nothing dispatched
    b"data: cut off by the stream's end\n"
)
EVENTS = [
    ServerSentEvent("stdout", '{"text": "✓"}'),
    ServerSentEvent("message", "first\nsecond"),
    ServerSentEvent("record", " two spaces", "7"),
]


def parse(chunks: list[bytes]) -> list[ServerSentEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_sse_parser_reads_the_standards_format() -> None:
    assert parse([WIRE]) == EVENTS


def test_sse_parser_takes_chunks_cut_anywhere() -> None:
    for cut in range(len(WIRE) + 1):
        assert parse([WIRE[:cut], WIRE[cut:]]) == EVENTS, cut
    assert parse([WIRE[i : i + 1] for i in range(len(WIRE))]) == EVENTS


def test_sse_parser_dispatches_at_a_cr_without_waiting_for_lf() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\r\r") == [ServerSentEvent("message", "x")]
    assert parser.feed(b"\ndata: y\r\n\r\n") == [ServerSentEvent("message", "y")]


def test_echo_completes_each_stream_from_the_record() -> None:
    """What the stream left out at the end (or all of it, from a server that does not stream)
    is written from the record; a gap in the middle cannot be, and is said."""
    written: list[tuple[str, str]] = []
    echo = Echo(lambda stream, text: written.append((stream, text)))
    echo.output(OutputEvent("stdout", "a\n"))
    echo.finish({"stdout": "a\nb\n", "stderr": "e\n", "stream_dropped_bytes": 2})
    assert written == [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "e\n")]
    written.clear()
    echo = Echo(lambda stream, text: written.append((stream, text)))
    echo.output(OutputEvent("stdout", "a\n"))
    echo.output(OutputEvent("stdout", "c\n"))
    echo.finish({"stdout": "a\nb\nc\n", "stderr": "", "stream_dropped_bytes": 2})
    assert written[:2] == [("stdout", "a\n"), ("stdout", "c\n")]
    [(stream, note)] = written[2:]
    assert stream == "stderr" and "2 bytes of output were not shown" in note


@pytest.mark.parametrize("where", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://127.0.0.1:{port}"])
def test_a_server_out_of_reach_is_the_clients_error(where: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = where.format(port=port)
    with pytest.raises(ServerUnreachableError):
        ExecutionSocket.connect(address, "key")
    with pytest.raises(ServerUnreachableError), Client(address, "key") as client:
        next(client.stream("print(1)"))


# --- one deployment for the rest


@pytest.fixture(scope="module")
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeployedService]:
    directory: Path = tmp_path_factory.mktemp("cli-streaming")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}", SECRET, ws_max_stdin_bytes=MAX_STDIN_BYTES
    )
    try:
        with deployed_service(settings, APP_NAME) as database:
            yield DeployedService(database, settings)
    finally:
        from executors import SessionHosts

        hosts = SessionHosts(settings.sandbox_config(), settings.session_host_options())
        asyncio.run(hosts.shutdown())


@pytest.fixture
def key(server: DeployedService, request: pytest.FixtureRequest) -> str:
    return server.new_key(request.node.name[:60])


def program(tmp_path: Path, code: str) -> str:
    path = tmp_path / "prog.py"
    path.write_text(code)
    return str(path)


def command(server: DeployedService, key: str, path: str, *options: str) -> list[str]:
    return [str(EXEC_AGENT), "run", path, "--server", server.url, "--key", key, *options]


def read_until(fd: int, wanted: str, seen: str = "") -> str:
    """What ``fd`` gives until ``wanted`` is in it (all of it: ``seen`` too)."""
    deadline = time.monotonic() + WAIT_S
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {wanted!r} within {WAIT_S} s; got {seen!r}")
        try:
            data = os.read(fd, 4096)
        except OSError:  # a pseudo-terminal whose other end closed
            data = b""
        if not data:
            raise AssertionError(f"the stream ended before {wanted!r}; got {seen!r}")
        seen += data.decode("utf-8", "replace")
    return seen


# --- exec-agent run --server: over SSE


@pytest.mark.ray
@pytest.mark.sandbox
def test_run_shows_output_in_order_and_mirrors_the_exit_status(
    server: DeployedService, key: str, tmp_path: Path
) -> None:
    code = (
        "import sys, time\nprint('a')\ntime.sleep(0.5)\nprint('b', file=sys.stderr)\n"
        "print(input())\nsys.exit(3)\n"
    )
    done = subprocess.run(
        command(server, key, program(tmp_path, code), "--runtime", "minimal"),
        input="piped ✓\n",
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "a\npiped ✓\n", "b\n")


@pytest.mark.ray
@pytest.mark.sandbox
def test_run_shows_output_before_the_program_ends(server: DeployedService, tmp_path: Path) -> None:
    """The first line arrives while the program still sleeps (20 s); Ctrl-C then
    stops the command, and the server cancels the run: it never ends ``ok``."""
    key = server.new_key("cli-interrupted")
    code = "import time\nprint('early', flush=True)\ntime.sleep(20)\nprint('late')\n"
    path = program(tmp_path, code)
    options = ("--runtime", "minimal", "--stdin", "", "--wall-timeout-s", "30")
    with subprocess.Popen(
        command(server, key, path, *options), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert read_until(process.stdout.fileno(), "early\n") == "early\n"
        assert process.poll() is None  # the program sleeps: its record cannot have come
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT_S) == 130

    def ended() -> list[str] | None:
        statuses = [str(row.status) for row in server.stored("cli-interrupted")]
        return statuses if statuses and set(statuses) <= TERMINAL_STATUSES else None

    [status] = eventually(ended, WAIT_S, "the interrupted run's record")
    assert status != "ok"


@pytest.mark.ray
@pytest.mark.sandbox
def test_run_with_json_prints_one_record(server: DeployedService, key: str, tmp_path: Path) -> None:
    path = program(tmp_path, "print('x')\n")
    done = subprocess.run(
        command(server, key, path, "--json", "--stdin", ""),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"stdout": "x\\n"' in done.stdout and done.stdout.count("\n") == 1


# --- exec-agent run --server from a terminal: over the WebSocket


@pytest.mark.ray
@pytest.mark.sandbox
def test_run_from_a_terminal_answers_input_as_typed(
    server: DeployedService, key: str, tmp_path: Path
) -> None:
    code = (
        "import sys\nname = input('name? ')\nprint(f'hello {name}')\n"
        "rest = sys.stdin.read()\nprint(f'rest {rest!r}')\nsys.exit(5)\n"
    )
    path = program(tmp_path, code)
    main_fd, terminal = pty.openpty()
    process = subprocess.Popen(
        command(server, key, path, "--runtime", "minimal", "--wall-timeout-s", "30"),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    try:
        seen = read_until(main_fd, "name? ")
        os.write(main_fd, "wörld\n".encode())
        seen = read_until(main_fd, "hello wörld", seen)
        os.write(main_fd, b"more\n\x04")  # a line, then Ctrl-D: end of input
        seen = read_until(main_fd, "rest 'more\\n'", seen)
        assert process.wait(timeout=WAIT_S) == 5, seen
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main_fd)


# --- the Python client


def output_until(events: Iterator[Any], wanted: str) -> str:
    """The stdout of ``events`` read until it ends with ``wanted`` (chunks fall where they
    may: ``print`` writes its text and its newline apart)."""
    text = ""
    while not text.endswith(wanted):
        event = next(events)
        assert isinstance(event, OutputEvent) and event.stream == "stdout", event
        text += event.text
    return text


@pytest.mark.ray
@pytest.mark.sandbox
def test_client_stream_gives_chunks_then_the_stored_record(
    server: DeployedService, key: str
) -> None:
    code = "import sys\nfor i in range(50):\n    print(i)\n    print(-i, file=sys.stderr)\n"
    with Client(server.url, key) as client:
        events = list(client.stream(code, runtime="minimal"))
    *chunks, last = events
    assert isinstance(last, RecordEvent) and all(isinstance(e, OutputEvent) for e in chunks)
    record = last.record
    for stream in ("stdout", "stderr"):
        text = "".join(e.text for e in chunks if isinstance(e, OutputEvent) and e.stream == stream)
        assert text == getattr(record, stream)
    assert record.stdout == "".join(f"{i}\n" for i in range(50))
    assert record.stream_dropped_bytes == 0
    with server.client() as http:
        stored = http.get(f"/v1/executions/{record.id}", headers=auth(key)).json()
    assert stored == last.data


@pytest.mark.ray
@pytest.mark.sandbox
def test_client_stream_yields_output_while_the_program_runs(
    server: DeployedService, key: str
) -> None:
    code = "import time\nprint('early', flush=True)\ntime.sleep(30)\n"
    with Client(server.url, key) as client:
        events = client.stream(code, runtime="minimal")
        assert output_until(events, "early\n") == "early\n"  # the program still sleeps
        events.close()  # cancels the run


@pytest.mark.ray
@pytest.mark.sandbox
def test_refusals_before_the_stream_raise_the_clients_error(
    server: DeployedService, key: str
) -> None:
    with pytest.raises(ApiErrorResponse) as refused, Client(server.url, key) as client:
        next(iter(client.stream("print(1)", limits={"wall_timeout_s": -1})))
    assert (refused.value.http_status, refused.value.code) == (422, "invalid_request")
    with pytest.raises(ApiErrorResponse) as unknown, Client(server.url, "not-a-key") as client:
        next(iter(client.stream("print(1)")))
    assert (unknown.value.http_status, unknown.value.code) == (401, "unauthorized")
    with (
        pytest.raises(ApiErrorResponse) as over_ws,
        Client(server.url, "x") as client,
        client.interactive("print(1)") as run,
    ):
        run.wait()
    assert (over_ws.value.http_status, over_ws.value.code) == (401, "unauthorized")


@pytest.mark.ray
@pytest.mark.sandbox
def test_client_interactive_answers_input_and_ends_stdin(server: DeployedService, key: str) -> None:
    code = "import sys\nprint(int(input('n? ')) * 2)\nprint(repr(sys.stdin.read()))\n"
    with (
        Client(server.url, key) as client,
        client.interactive(code, runtime="minimal", limits={"wall_timeout_s": 30}) as run,
    ):
        events = iter(run)
        assert output_until(events, "n? ") == "n? "  # asked, and waiting
        run.send_stdin("21\n")
        assert output_until(events, "42\n") == "42\n"
        run.send_stdin("tail")
        run.end_stdin()
        record = run.wait().record
    assert record.stdout == "n? 42\n'tail'\n"


@pytest.mark.ray
@pytest.mark.sandbox
def test_one_socket_runs_one_program_after_another(server: DeployedService, key: str) -> None:
    with Client(server.url, key) as client, client.socket() as connection:
        first = connection.run(execution_body("print(1)", runtime="minimal")).wait().record
        second = connection.run(execution_body("print(input())", stdin="2\n")).wait().record
    assert (first.stdout, second.stdout) == ("1\n", "2\n")
    assert first.id != second.id


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_refused_run_or_input_leaves_the_socket_usable(server: DeployedService, key: str) -> None:
    """A refused run raises (no record follows) and the next run goes; refused input is an
    event, and the run goes on without it."""
    with Client(server.url, key) as client, client.socket() as connection:
        with pytest.raises(ApiErrorResponse) as refused:
            connection.run(execution_body("print(1)", limits={"wall_timeout_s": -1})).wait()
        assert (refused.value.http_status, refused.value.code) == (422, "invalid_request")
        body = execution_body("print(input())", runtime="minimal", limits={"wall_timeout_s": 30})
        run = connection.run(body)
        run.send_stdin("x" * (MAX_STDIN_BYTES + 1))
        run.send_stdin("taken\n")
        events = list(run)
    [refusal] = [event for event in events if isinstance(event, RefusalEvent)]
    assert (refusal.in_reply_to, refusal.error.code) == ("stdin", "payload_too_large")
    assert run.record_event is not None and run.record_event.data["stdout"] == "taken\n"


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_session_streams_and_answers_input(server: DeployedService, key: str) -> None:
    with Client(server.url, key) as client, client.create_session(runtime="minimal") as session:
        session.run("x = 20")
        *chunks, last = session.stream("print(x)\nprint(x + 1)")
        assert "".join(e.text for e in chunks if isinstance(e, OutputEvent)) == "20\n21\n"
        assert isinstance(last, RecordEvent) and last.record.stdout == "20\n21\n"
        with session.interactive("print(x + int(input()))") as run:
            run.send_stdin("2\n")
            assert run.wait().record.stdout == "22\n"
