"""JSON logs (one format for every process) and Sentry reports, without Ray.

Sentry is the real sentry-sdk, sending to a local HTTP server that stands in for the DSN's
ingestion endpoint; the app is a small FastAPI app with the service's edge installed.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI, Request

from executors import JsonLogFormatter, configure_json_logging
from executors._logging import JsonLogHandler, redact
from serve_app.api import current_request_id, install_edge
from serve_app.observability import (
    RAY_DRIVER_LOG_DEFAULTS,
    capture_internal_error,
    configure_driver_logging,
    configure_logging,
    init_sentry,
    scrub_event,
)
from serve_app.settings import Settings
from tests.support.asgi import served_call

API_KEY = "ea_0123456789ab_" + "K" * 43
DATABASE_URL = "postgresql://exec:hunter2@10.9.8.7:5432/exec_agent"
KEY_SECRET = "api-key-secret-0123456789abcdef-XYZ"
CODE = "import os; print('CODE-MARKER-31337')"
STDOUT = "STDOUT-MARKER-4242"
LOCAL_SECRET = "LOCAL-VARIABLE-MARKER-777"

logger = logging.getLogger("tests.observability")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """The root logger as it was, after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "staging",
        "database_url": DATABASE_URL,
        "api_key_secret": KEY_SECRET,
        "cors_origins": [],
    }
    return Settings(**{**values, **overrides})


def lines(text: str) -> list[dict[str, Any]]:
    # Split on \n only: a record that produced any other line break would be caught below.
    raw = [line for line in text.split("\n") if line]
    return [json.loads(line) for line in raw]


class EdgeApp:
    """A FastAPI app with the service's edge; its routes log and fail on purpose."""

    def __init__(self, settings: Settings) -> None:
        self.app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        install_edge(self.app, settings)
        app = self.app

        @app.post("/v1/boom")
        async def boom(request: Request) -> None:
            body = await request.json()
            code = body["code"]  # a local variable: never sent, never logged
            stdout = STDOUT
            secret = LOCAL_SECRET
            logger.info("running %s", "e-1", extra={"execution_id": "e-1", "stdout": stdout})
            raise RuntimeError(
                f"connection to {DATABASE_URL} failed for {API_KEY}\n[parameters: {code} {secret}]"
            )

        @app.get("/v1/logged")
        async def logged() -> dict[str, str]:
            logger.info("inside the request", extra={"key_name": "ci", "code": CODE})
            logger.error("slot failed for key %s at %s", API_KEY, DATABASE_URL)
            return {"request_id": current_request_id() or "-"}


# --------------------------------------------------------------------------- JSON log lines


def test_one_json_line_per_record_with_the_fields(
    capsys: pytest.CaptureFixture[str], root_logger: logging.Logger
) -> None:
    configure_logging("INFO", component="ingress")
    before = datetime.now(UTC)
    logger.info("plain %s", "message", extra={"execution_id": "e-7", "key_name": "ci"})
    logger.debug("below the level")
    out = capsys.readouterr().err
    (line,) = lines(out)
    assert list(line)[:5] == ["ts", "level", "component", "logger", "event"]
    assert line["level"] == "INFO" and line["component"] == "ingress"
    assert line["logger"] == "tests.observability" and line["event"] == "plain message"
    assert line["execution_id"] == "e-7" and line["key_name"] == "ci"
    assert "request_id" not in line  # outside a request
    assert line["ts"].endswith("Z")
    ts = datetime.fromisoformat(line["ts"])
    assert ts.tzinfo is not None and abs(ts - before) < timedelta(seconds=5)


def test_control_characters_cannot_forge_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", component="ingress")
    forged = '{"level": "INFO", "event": "forged"}'
    hostile = f"a\r\n{forged}\nb\x1b[2J\x00\x85\u2028\u2029\x7f"
    logger.warning("user said %s", hostile, extra={"execution_id": f"x\n{forged}"})
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and out.isascii()
    assert len(out.splitlines()) == 1  # no \r, \x85, \u2028, ... either
    (line,) = lines(out)
    assert line["event"] == f"user said {hostile}"  # escaped, not lost
    assert line["execution_id"] == f"x\n{forged}"


def test_only_known_extras_are_written(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="executor")
    logger.info("done", extra={"execution_id": "e-1", "code": CODE, "stdout": STDOUT})
    out = capsys.readouterr().err
    assert "CODE-MARKER" not in out and STDOUT not in out
    assert lines(out)[0]["execution_id"] == "e-1"


def test_exceptions_are_a_type_and_a_short_first_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="ingress")

    def fail(code: str) -> None:
        secret = LOCAL_SECRET  # noqa: F841 - a local the log must not show
        raise ValueError(f"bad input at {DATABASE_URL}\n[parameters: {code}]" + "x" * 1000)

    try:
        fail(CODE)
    except ValueError:
        logger.exception("request failed")
    out = capsys.readouterr().err
    (line,) = lines(out)
    assert line["exc_type"] == "ValueError"
    assert line["exc_message"] == "bad input at postgresql://[redacted]@10.9.8.7:5432/exec_agent"
    assert line["exc_at"][-1].startswith("test_observability.py:") and "fail" in line["exc_at"][-1]
    for leak in ("CODE-MARKER", LOCAL_SECRET, "hunter2", "Traceback", "raise ValueError"):
        assert leak not in out


def test_keys_and_credentials_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="driver")
    logger.warning("key %s, database %s, dsn %s", API_KEY, DATABASE_URL, "https://abc@o1.ingest/1")
    out = capsys.readouterr().err
    assert API_KEY not in out and "hunter2" not in out and "abc@" not in out
    assert lines(out)[0]["event"] == (
        "key ea_[redacted], database postgresql://[redacted]@10.9.8.7:5432/exec_agent, "
        "dsn https://[redacted]@o1.ingest/1"
    )
    assert redact("idea_without_a_key_shape area_51") == "idea_without_a_key_shape area_51"
    assert redact("redis://:pw@h:6379/0") == "redis://[redacted]@h:6379/0"


def test_long_events_are_cut(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="ingress")
    logger.info("%s", "y" * 100_000)
    (line,) = lines(capsys.readouterr().err)
    assert len(line["event"]) < 5000 and line["event"].endswith("[truncated]")


def test_request_id_inside_a_request(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="ingress")
    app = EdgeApp(settings()).app
    response = served_call(app, "GET", "/v1/logged", headers={"X-Request-ID": "req-log-1"})
    assert response.status_code == 200 and response.json() == {"request_id": "req-log-1"}
    logger.info("after the request")
    records = lines(capsys.readouterr().err)
    inside = [line for line in records if line["logger"] == "tests.observability"]
    assert [line.get("request_id") for line in inside] == ["req-log-1", "req-log-1", None]
    assert inside[0]["key_name"] == "ci" and "CODE-MARKER" not in json.dumps(records)


def test_configuring_again_keeps_one_handler(
    root_logger: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console = logging.StreamHandler(sys.stderr)  # basicConfig's: would print every line twice
    to_file = logging.FileHandler(tmp_path / "app.log")
    root_logger.addHandler(console)
    root_logger.addHandler(to_file)
    try:
        first = configure_logging("INFO", component="ingress")
        second = configure_logging("WARNING", component="ingress")
        third = configure_json_logging("WARNING", component="executor")
        assert first is second is third
        ours = [h for h in root_logger.handlers if isinstance(h, JsonLogHandler)]
        assert ours == [first] and console not in root_logger.handlers
        assert to_file in root_logger.handlers  # not a console: kept
        assert root_logger.level == logging.WARNING
        logger.warning("once")
        (line,) = lines(capsys.readouterr().err)
        assert line["component"] == "executor"
    finally:
        to_file.close()


def test_executor_side_reads_log_level_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, root_logger: logging.Logger
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    handler = configure_json_logging(component="executor")
    assert handler.level == logging.DEBUG == root_logger.level
    monkeypatch.setenv("LOG_LEVEL", "nonsense")
    assert configure_json_logging(component="executor").level == logging.INFO
    assert isinstance(handler.formatter, JsonLogFormatter)


def test_driver_logging_prepares_rays_forwarding(root_logger: logging.Logger) -> None:
    environ = {"RAY_DEDUP_LOGS": "1"}
    assert configure_driver_logging("WARNING", environ, "json") == "json"
    assert environ == {
        **RAY_DRIVER_LOG_DEFAULTS,
        "RAY_DEDUP_LOGS": "1",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",  # resolved, for the replicas (tests/test_serve_terminal.py)
    }
    assert root_logger.level == logging.WARNING


def test_executors_log_format_does_not_import_serve_app() -> None:
    probe = (
        "import sys, executors._logging, executors._deployment; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('serve_app', 'ray')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- Sentry


class Ingestion:
    """A local HTTP server standing in for Sentry's ingestion: keeps every envelope."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[dict[str, str], bytes]] = []
        received = self.envelopes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[tuple[dict[str, str], bytes, dict[str, Any]]]:
        found = []
        for headers, body in self.envelopes:
            items = body.split(b"\n")
            for index, item in enumerate(items[1:-1], start=1):
                if json.loads(item).get("type") == "event":
                    found.append((headers, body, json.loads(items[index + 1])))
        return found

    def item_types(self) -> set[str]:
        """The type of every item of every envelope (``event``, ``log``, ``session``...)."""
        types: set[str] = set()
        for _, body in self.envelopes:
            for line in body.split(b"\n")[1:]:
                if line.startswith(b"{") and "type" in (header := json.loads(line)):
                    types.add(header["type"])
        return types

    def wait_for_events(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events()) < count and time.monotonic() < deadline:
            sentry_sdk.flush(timeout=1.0)
            time.sleep(0.05)


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ingestion]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = Ingestion()
    server.thread.start()
    try:
        yield server
    finally:
        client = sentry_sdk.get_client()
        client.close(timeout=2.0)
        sentry_sdk.get_global_scope().set_client(None)
        sentry_sdk.get_global_scope().remove_tag("component")
        sentry_sdk.get_isolation_scope().clear_breadcrumbs()
        server.server.shutdown()
        server.server.server_close()


def test_without_a_dsn_sentry_stays_off() -> None:
    assert init_sentry(settings(sentry_dsn=None), component="ingress") is False
    assert not sentry_sdk.is_initialized()
    capture_internal_error(RuntimeError("nowhere to go"))  # a no-op, not an error


def test_an_internal_error_reaches_sentry_scrubbed(ingestion: Ingestion) -> None:
    configured = settings(sentry_dsn=ingestion.dsn)
    assert init_sentry(configured, component="ingress") is True
    assert init_sentry(configured, component="ingress") is True  # idempotent
    app = EdgeApp(configured).app
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "X-Request-ID": "req-sentry-1",
        "Cookie": "session=COOKIE-MARKER",
    }
    body = json.dumps({"code": CODE, "stdin": "STDIN-MARKER"})
    response = served_call(
        app, "POST", "/v1/boom?token=QUERY-MARKER", content=body, headers=headers
    )
    assert response.status_code == 500
    assert response.json()["error"]["request_id"] == "req-sentry-1"
    assert served_call(app, "GET", "/no-such-route", headers=headers).status_code == 404  # not sent
    ingestion.wait_for_events(1)
    time.sleep(0.3)  # a duplicate (the log record of the same exception) would arrive now
    sentry_sdk.flush(timeout=2.0)

    (event_headers, raw, event) = ingestion.events()[0]
    assert len(ingestion.events()) == 1, [e[2].get("logentry") for e in ingestion.events()]
    assert event["tags"]["request_id"] == "req-sentry-1"
    assert event["tags"]["component"] == "ingress"
    assert event["environment"] == "staging" and event["release"].startswith("exec-agent@")
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == (
        "connection to postgresql://[redacted]@10.9.8.7:5432/exec_agent failed for ea_[redacted]"
    )
    frames = exception["stacktrace"]["frames"]
    assert frames and frames[-1]["function"] == "boom"
    assert all(
        set(frame) <= {"filename", "abs_path", "module", "function", "lineno", "in_app"}
        for frame in frames
    )
    assert "request" not in event and "user" not in event
    for crumb in event.get("breadcrumbs", {}).get("values", []):
        assert "data" not in crumb
    text = raw.decode()
    for leak in (
        "CODE-MARKER",
        "STDIN-MARKER",
        STDOUT,
        LOCAL_SECRET,
        API_KEY,
        API_KEY[3:15],
        "hunter2",
        KEY_SECRET,
        "COOKIE-MARKER",
        "QUERY-MARKER",
        "public@",
        "Bearer",
    ):
        assert leak not in text, leak
    assert event_headers["x-sentry-auth"].count("sentry_key=public") == 1


def test_error_logs_in_a_request_are_tagged(ingestion: Ingestion) -> None:
    configure_logging("INFO", component="ingress")  # as the replica does: INFO becomes crumbs
    init_sentry(settings(sentry_dsn=ingestion.dsn), component="ingress")
    app = EdgeApp(settings()).app
    response = served_call(app, "GET", "/v1/logged", headers={"X-Request-ID": "req-sentry-2"})
    assert response.status_code == 200
    ingestion.wait_for_events(1)
    (_, raw, event) = ingestion.events()[0]
    assert event["tags"]["request_id"] == "req-sentry-2"
    assert event["logentry"]["message"] == (
        "slot failed for key ea_[redacted] at postgresql://[redacted]@10.9.8.7:5432/exec_agent"
    )
    assert event["logentry"]["params"] == []
    crumbs = event["breadcrumbs"]["values"]
    assert "inside the request" in [crumb["message"] for crumb in crumbs]
    assert all("data" not in crumb for crumb in crumbs)
    assert "CODE-MARKER" not in raw.decode() and API_KEY not in raw.decode()
    # Log lines reach Sentry only as crumbs of an event, scrubbed, never as Sentry logs
    # (sentry-sdk 3 sends every record at LoggingIntegration's ``level`` as one).
    sentry_sdk.flush(timeout=2.0)
    assert "log" not in ingestion.item_types()


def test_scrub_event_keeps_only_what_may_leave() -> None:
    event: Any = {
        "request": {"data": CODE, "headers": {"Authorization": f"Bearer {API_KEY}"}},
        "user": {"ip_address": "10.0.0.1"},
        "extra": {"sys.argv": ["ray", "--redis-password=pw"], "execution_id": "e-1"},
        "contexts": {"runtime": {"name": "CPython"}, "response": {"body": STDOUT}},
        "logentry": {"message": "ran %s", "params": ["e-1"], "formatted": "ran e-1\nline 2"},
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": f"first {API_KEY}\nsecond {CODE}",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "f",
                                "lineno": 3,
                                "vars": {"code": CODE},
                                "context_line": "secret = 1",
                                "pre_context": ["a"],
                            }
                        ]
                    },
                }
            ]
        },
        "breadcrumbs": {"values": [{"message": "m\nsecond", "data": {"stdout": STDOUT}}]},
        "tags": {"component": "ingress"},
    }
    scrubbed: Any = scrub_event(event, {})
    assert scrubbed["extra"] == {"execution_id": "e-1"}
    assert scrubbed["contexts"] == {"runtime": {"name": "CPython"}}
    assert scrubbed["logentry"] == {"message": "ran e-1", "params": []}
    assert scrubbed["exception"]["values"][0]["value"] == "first ea_[redacted]"
    assert scrubbed["exception"]["values"][0]["stacktrace"]["frames"] == [
        {"function": "f", "lineno": 3}
    ]
    assert scrubbed["breadcrumbs"]["values"] == [{"message": "m"}]
    assert "request" not in scrubbed and "user" not in scrubbed
    text = json.dumps(scrubbed)
    for leak in (STDOUT, API_KEY, "CODE-MARKER", "redis-password", "10.0.0.1", "secret = 1"):
        assert leak not in text
