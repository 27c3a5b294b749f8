"""``exec-agent serve`` at a terminal: the log format it chooses (``LOG_FORMAT``), its text
lines, the summary it shows a person once it serves; and, end to end, a real ``exec-agent
serve`` under a pseudo-terminal and without one.

The unit tests need no Ray. Two end-to-end tests join the session's Ray
(tests/support/live_server.py), which is why their summary names the cluster rather than a
dashboard of their own, and why the replicas' lines there follow that cluster's environment
(JSON); one starts its own Ray, as ``scripts/serve`` does, whose replicas write text too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from executors import JsonLogFormatter
from executors.telemetry import TextLogFormatter, configure_json_logging
from serve_app.observability import (
    QUIET_LOGGERS,
    browse_url,
    configure_driver_logging,
    configure_logging,
    installed_command,
    mask_database_url,
    print_summary,
    quiet_level,
    reset_request_id,
    resolve_log_format,
    serve_summary,
    set_request_id,
)
from serve_app.settings import Settings
from tests.support.live_server import copy_terminal, live_server
from tests.support.polling import polled
from tests.support.scripts import load_script

API_KEY = "ea_0123456789ab_" + "K" * 43
DATABASE_URL = "postgresql+psycopg://exec:hunter2@10.9.8.7:5432/exec_agent"
TEXT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +(\S+) (\S+): (.*)$"
)
"""A text log line: time, level, component, logger, then the event and its fields."""

logger = logging.getLogger("tests.serve_terminal")


@pytest.fixture(autouse=True)
def root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The root logger and the quieted loggers as they were, after each test; no LOG_FORMAT
    from the environment running the tests."""
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quiet.items():
        logging.getLogger(name).setLevel(was)


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    """A real terminal (a pseudo-terminal's end), as a text stream."""
    master, child = pty.openpty()
    stream = open(child, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": DATABASE_URL,
        "api_key_secret": "api-key-secret-0123456789abcdef-XYZ",
        "ray_address": None,
    }
    return Settings(**{**values, **overrides})


# --------------------------------------------------------------------------- the format


def test_auto_is_text_at_a_terminal_and_json_elsewhere(terminal: io.TextIOWrapper) -> None:
    assert terminal.isatty()
    assert resolve_log_format("auto", terminal) == "text"
    assert resolve_log_format("auto", io.StringIO()) == "json"
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        assert resolve_log_format("auto", devnull) == "json"


def test_json_and_text_are_taken_as_asked(terminal: io.TextIOWrapper) -> None:
    assert resolve_log_format("json", terminal) == "json"
    assert resolve_log_format("text", io.StringIO()) == "text"
    assert resolve_log_format("TEXT", io.StringIO()) == "text"


def test_auto_follows_the_format_passed_down(
    monkeypatch: pytest.MonkeyPatch, terminal: io.TextIOWrapper
) -> None:
    """A replica's standard error is a file: ``auto`` there takes the LOG_FORMAT that
    ``exec-agent serve`` resolved and put in the environment of the Ray it started."""
    monkeypatch.setenv("LOG_FORMAT", "text")
    assert resolve_log_format("auto", io.StringIO()) == "text"
    assert resolve_log_format(None, io.StringIO()) == "text"
    assert resolve_log_format("json", io.StringIO()) == "json"  # asked wins
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert resolve_log_format("auto", terminal) == "json"
    monkeypatch.setenv("LOG_FORMAT", "auto")
    assert resolve_log_format("auto", terminal) == "text"


def test_the_executor_replicas_take_the_format_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As an executor replica configures itself (``configure_json_logging(component=...)``):
    LOG_FORMAT, which ``exec-agent serve`` puts in the environment of the Ray it starts."""
    monkeypatch.setenv("LOG_FORMAT", "text")
    handler = configure_json_logging(component="executor")
    assert type(handler.formatter) is TextLogFormatter
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert type(configure_json_logging(component="executor").formatter) is JsonLogFormatter


def test_the_driver_passes_its_resolved_format_on(root_logger: logging.Logger) -> None:
    environ = {"LOG_FORMAT": "auto"}
    assert configure_driver_logging("INFO", environ, "text") == "text"
    assert environ["LOG_FORMAT"] == "text" and environ["LOG_LEVEL"] == "INFO"
    assert logging.getLogger("alembic").level == logging.WARNING
    # Under pytest standard error is captured, not a terminal: auto is json.
    environ = {}
    assert configure_driver_logging("INFO", environ, "auto") == "json"
    assert environ["LOG_FORMAT"] == "json"


def test_json_mode_leaves_ray_and_alembic_alone(root_logger: logging.Logger) -> None:
    logging.getLogger("alembic").setLevel(logging.NOTSET)
    configure_driver_logging("INFO", {}, "json")
    assert logging.getLogger("alembic").level == logging.NOTSET
    assert quiet_level("INFO", "json") is None


def test_text_mode_quiets_only_below_warning() -> None:
    assert quiet_level("INFO", "text") == logging.WARNING
    assert quiet_level("ERROR", "text") == logging.WARNING  # Ray's warnings stay
    assert quiet_level("DEBUG", "text") == logging.DEBUG  # everything, when asked
    assert quiet_level(logging.INFO, "text") == logging.WARNING


# --------------------------------------------------------------------------- text lines


def test_text_lines_carry_time_level_component_logger_and_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", component="ingress", log_format="text")
    logger.info("plain %s", "message", extra={"execution_id": "e-7", "code": "secret()"})
    token = set_request_id("req-text-1")
    try:
        logger.warning("inside a request")
    finally:
        reset_request_id(token)
    logger.debug("below the level")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    first, second = (TEXT_LINE.match(line) for line in lines)
    assert first is not None and second is not None, lines
    assert first.groups()[:3] == ("INFO", "ingress", "tests.serve_terminal")
    assert first.group(4) == "plain message execution_id=e-7"  # no other extra
    assert "request_id" not in lines[0] and "secret()" not in lines[0]
    assert second.group(1) == "WARNING"
    assert second.group(4) == "inside a request request_id=req-text-1"


def test_text_lines_cannot_be_forged_and_mask_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="driver", log_format="text")
    logger.info('first\n{"level":"ERROR"}\r\x1b[2Jend\u2028')
    logger.info("key %s at %s", API_KEY, DATABASE_URL)
    try:
        raise ValueError(f"connecting to {DATABASE_URL}\nparameters: secret")
    except ValueError:
        logger.exception("failed")
    lines = capsys.readouterr().err.split("\n")
    assert lines[-1] == "" and len(lines) == 4, lines
    assert lines[0].endswith(r'first\x0a{"level":"ERROR"}\x0d\x1b[2Jend\u2028')
    assert API_KEY not in lines[1] and "hunter2" not in lines[1] and "ea_[redacted]" in lines[1]
    failed = TEXT_LINE.match(lines[2])
    assert failed is not None and failed.group(1) == "ERROR"
    assert "failed | ValueError: connecting to postgresql+psycopg://[redacted]@" in lines[2]
    assert "parameters" not in lines[2] and "(at test_serve_terminal.py:" in lines[2]


def test_json_stays_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", component="driver", log_format="json")
    logger.info("machine")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "machine"


# --------------------------------------------------------------------------- the summary


def rows(summary: Any) -> dict[str, str]:
    return dict(summary.rows)


def test_the_summary_says_where_everything_is() -> None:
    summary = serve_summary(
        settings(),
        api_url="http://127.0.0.1:8000",
        command=".venv/bin/exec-agent",
        ingress="proxy",
        dashboard_url="http://127.0.0.1:8265",
        dashboard_token=".venv/bin/ray get-auth-token",
        metrics_url="http://127.0.0.1:8080/metrics",
    )
    assert (
        summary.title == "exec-agent is serving the API at http://127.0.0.1:8000 (ingress: proxy)"
    )
    assert rows(summary) == {
        "API key": ".venv/bin/exec-agent keys create --name NAME",
        "Docs": "http://127.0.0.1:8000/docs",
        "Playground": "http://127.0.0.1:8000/",
        "Ray dashboard": "http://127.0.0.1:8265 (its token: .venv/bin/ray get-auth-token)",
        "Metrics": "http://127.0.0.1:8080/metrics (Prometheus)",
        "Database": "postgresql+psycopg://exec:***@10.9.8.7:5432/exec_agent",
        "Stop": "Ctrl-C (drains: running requests finish first)",
    }
    assert "hunter2" not in repr(summary)
    assert len(summary.rows) <= 10


def test_the_summary_of_a_joined_server_without_docs_or_playground() -> None:
    summary = serve_summary(
        settings(api_docs=False, playground=False, ray_address="10.0.0.5:6379"),
        api_url="http://127.0.0.1:8000",
        command="exec-agent",
    )
    assert summary.title == "exec-agent is serving the API at http://127.0.0.1:8000"
    assert rows(summary) == {
        "API key": "exec-agent keys create --name NAME",
        "Docs": "off (API_DOCS=false)",
        "Playground": "off (PLAYGROUND=false)",
        "Ray cluster": "10.0.0.5:6379",
        "Database": "postgresql+psycopg://exec:***@10.9.8.7:5432/exec_agent",
        "Stop": "Ctrl-C (drains: running requests finish first)",
    }


def test_the_summary_prints_as_plain_lines_off_a_terminal() -> None:
    summary = serve_summary(
        settings(database_url="sqlite:///./data/exec_agent.db"),
        api_url="http://127.0.0.1:8000",
        command="exec-agent",
    )
    out = io.StringIO()
    print_summary(summary, out)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0] == "" and lines[-1] == ""
    assert lines[1] == summary.title
    assert lines[2] == "  API key     exec-agent keys create --name NAME"
    assert "  Database    sqlite:///./data/exec_agent.db" in lines
    assert all(line == line.rstrip() for line in lines)


def test_database_urls_are_masked() -> None:
    assert mask_database_url("sqlite:///./data/x.db") == "sqlite:///./data/x.db"
    assert mask_database_url("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"
    assert "s3cret" not in mask_database_url("not a url://u:s3cret@host")


def test_browse_urls_name_a_reachable_host() -> None:
    assert browse_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert browse_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"  # noqa: S104
    assert browse_url("::", 8000) == "http://[::1]:8000"
    assert browse_url("::1", 8000) == "http://[::1]:8000"
    assert browse_url("example.internal", 80) == "http://example.internal:80"


def test_the_command_is_the_one_that_works_from_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tmp_path / ".venv" / "bin" / "exec-agent"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert installed_command("exec-agent", tmp_path, str(tool)) == ".venv/bin/exec-agent"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert installed_command("exec-agent", elsewhere, str(tool)) == str(tool)
    assert installed_command("exec-agent", tool.parent, str(tool)) == "./exec-agent"
    monkeypatch.setenv("PATH", str(tool.parent))
    assert installed_command("exec-agent", elsewhere, str(tool)) == "exec-agent"


# --------------------------------------------------------------------------- end to end


@pytest.mark.ray
@pytest.mark.slow
def test_a_person_at_a_terminal_sees_the_summary_and_text_lines(
    ray_session: None, tmp_path: Path
) -> None:
    with live_server(tmp_path, terminal=True) as server:
        pass
    # What the terminal showed, from the start to the drain, without rich's colours.
    shown = server.stdout.read_text(errors="replace")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown).replace("\r\n", "\n")
    assert f"exec-agent is serving the API at {server.url}" in plain, plain[-3000:]
    summary = plain[plain.index("exec-agent is serving the API") :].splitlines()
    labelled = {line.split()[0] for line in summary[1:9] if line.startswith("  ")}
    assert {"API", "Docs", "Playground", "Ray", "Database", "Stop"} <= labelled, summary
    assert re.search(rf"^  Docs +{re.escape(server.url)}/docs$", plain, re.MULTILINE)
    assert re.search(rf"^  Playground +{re.escape(server.url)}/$", plain, re.MULTILINE)
    # Joined: the cluster's address, no dashboard of its own.
    assert re.search(r"^  Ray cluster +\S+:\d+$", plain, re.MULTILINE), summary
    assert "keys create --name NAME" in plain and "sqlite:///" in plain
    assert "exec-agent: serving the API on" not in plain  # the scripts' line: not for people
    driver = [line for line in plain.splitlines() if " driver serve_app." in line]
    assert any(line.endswith("database at revision " + _head()) for line in driver), driver
    assert all(TEXT_LINE.match(line) for line in driver), driver
    # No JSON line of its own; Alembic's dozen lines are gone.
    assert not [
        line for line in plain.splitlines() if line.startswith('{"ts"') and '"driver"' in line
    ]
    assert "alembic" not in plain and server.stderr.read_text() == ""


@pytest.mark.ray
@pytest.mark.slow
def test_without_a_terminal_the_lines_stay_for_machines(ray_session: None, tmp_path: Path) -> None:
    with live_server(tmp_path) as server:
        pass
    out, err = server.stdout.read_text(), server.stderr.read_text()
    assert f"exec-agent: serving the API on {server.url}\n" in out
    assert "exec-agent is serving the API" not in out + err
    records = [json.loads(line) for line in err.splitlines() if line.startswith('{"ts"')]
    driver = [record for record in records if record["component"] == "driver"]
    assert {"database at revision " + _head()} <= {record["event"] for record in driver}
    assert not [line for line in err.splitlines() if TEXT_LINE.match(line)]


@pytest.mark.slow
@pytest.mark.sandbox
def test_with_its_own_ray_every_line_on_the_terminal_is_for_people(tmp_path: Path) -> None:
    """``exec-agent serve`` as ``scripts/serve`` runs it (its own Ray, embedded, free ports)
    under a pseudo-terminal: the summary with the dashboard, and not one JSON line: the
    replicas' lines are text too (LOG_FORMAT passed on), Alembic's and Ray's INFO lines gone."""
    service = load_script("serve_process").ServeProcess(tmp_path, slots=1, executor_queue=None)
    terminal = tmp_path / "terminal.log"
    master, child = pty.openpty()
    service.process = subprocess.Popen(
        [service.exec_agent, "serve"],
        cwd=tmp_path,
        env={name: value for name, value in service.env.items() if name != "LOG_FORMAT"},
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,  # its own group: what Ray leaves is killed whole
    )
    os.close(child)
    copier = threading.Thread(target=copy_terminal, args=(master, terminal), daemon=True)
    copier.start()
    try:
        up = polled(lambda: service.process.poll() is not None or _ready(service.url), 240.0)
        assert up and service.process.poll() is None, terminal.read_text(errors="replace")
    finally:
        service.stop(drain_signal=signal.SIGINT)
        service.kill_group()
        copier.join(60.0)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal.read_text(errors="replace"))
    lines = plain.splitlines()
    assert f"exec-agent is serving the API at {service.url} (ingress: proxy)" in lines, plain
    assert re.search(r"^  Ray dashboard +http://127\.0\.0\.1:\d+", plain, re.MULTILINE), plain
    assert re.search(
        rf"^  Metrics +http://127\.0\.0\.1:{service.env['METRICS_PORT']}/metrics",
        plain,
        re.MULTILINE,
    )
    assert not [line for line in lines if line.lstrip().startswith("{")], plain
    assert any(" executor executors." in line and TEXT_LINE.match(line) for line in lines), plain
    assert "alembic" not in plain and "Started a local Ray instance" not in plain
    assert "Token authentication is enabled" not in plain  # said explicitly: no warning
    assert "exec-agent serve: SIGINT, draining" in lines and service.exit_code == 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _head() -> str:
    from serve_app.db.migrate import head_revision

    return head_revision()
