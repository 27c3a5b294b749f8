"""``exec-agent audit``: the security events, on embedded SQLite and on real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serve_app import _exit
from serve_app._cli_audit import parse_since
from serve_app.db import Database, audit
from serve_app.db.models import AuditEvent
from serve_app.settings import Settings, get_settings
from tests.support.cli import run_cli
from tests.support.databases import DATABASE_BACKENDS, empty_database
from tests.support.settings import use_settings_environment

SECRET = "cli-audit-secret-0123456789abcdef"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Settings from the environment only: no .env, no inherited variables."""
    use_settings_environment(monkeypatch, tmp_path, {"API_KEY_SECRET": SECRET})
    yield
    get_settings.cache_clear()


@pytest.fixture(params=DATABASE_BACKENDS)
def settings(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Settings]:
    """The settings of a fresh database of each backend."""
    with empty_database(request.param, tmp_path) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        yield get_settings()
        get_settings.cache_clear()


def events(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    status, out, err = run_cli(capsys, "audit", "--json", *argv)
    assert status == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def upgraded(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "db", "upgrade")[0] == 0


def add_events(settings: Settings, *rows: AuditEvent) -> None:
    database = Database.from_settings(settings)
    try:
        with database.session() as session:
            session.add_all(rows)
    finally:
        database.dispose()


def event(
    kind: audit.AuditKind, at: datetime, key_name: str | None = None, **fields: object
) -> AuditEvent:
    details = fields.pop("details", {})
    return AuditEvent(at=at, kind=kind.value, key_name=key_name, details=details, **fields)


# --------------------------------------------------------------------------- the command


@pytest.mark.usefixtures("upgraded")
def test_keys_created_and_revoked_show_up_newest_first(capsys: pytest.CaptureFixture[str]) -> None:
    created = run_cli(capsys, "keys", "create", "--name", "ci")[1].splitlines()[-1]
    assert run_cli(capsys, "keys", "create", "--name", "ops")[0] == 0
    assert run_cli(capsys, "keys", "revoke", "ci")[0] == 0

    listed = events(capsys)
    assert [(e["kind"], e["key_name"]) for e in listed] == [
        ("key_revoked", "ci"),
        ("key_created", "ops"),
        ("key_created", "ci"),
    ]
    assert all(e["source_address"] == "cli" and e["request_id"] is None for e in listed)
    times = [datetime.fromisoformat(str(e["at"])) for e in listed]
    assert times == sorted(times, reverse=True) and all(t.tzinfo == UTC for t in times)
    assert str(listed[0]["at"]).endswith("Z")

    status, out, err = run_cli(capsys, "audit")
    assert status == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "KIND", "KEY", "SOURCE", "REQUEST", "ID", "DETAILS"]
    assert [row.split()[1:4] for row in rows] == [
        ["key_revoked", "ci", "cli"],
        ["key_created", "ops", "cli"],
        ["key_created", "ci", "cli"],
    ]
    assert rows[0].split()[0].endswith("Z")
    assert created not in out and created[3:15] not in out  # never the key, nor its lookup id


@pytest.mark.usefixtures("upgraded")
def test_filters_by_key_since_and_limit(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    add_events(
        settings,
        event(audit.AuditKind.AUTH_FAILED, now - timedelta(days=3), details={"reason": "missing"}),
        event(
            audit.AuditKind.RATE_LIMITED, now - timedelta(hours=5), "ci", details={"limit": "rate"}
        ),
        event(
            audit.AuditKind.POLICY_REFUSED,
            now - timedelta(minutes=20),
            "ci",
            details={"modules": ["socket"]},
        ),
        event(audit.AuditKind.RATE_LIMITED, now - timedelta(minutes=10), "ops"),
    )

    def kinds(*argv: str) -> list[tuple[object, object]]:
        return [(e["kind"], e["key_name"]) for e in events(capsys, *argv)]

    assert kinds() == [
        ("rate_limited", "ops"),
        ("policy_refused", "ci"),
        ("rate_limited", "ci"),
        ("auth_failed", None),
    ]
    assert kinds("--key", "ci") == [("policy_refused", "ci"), ("rate_limited", "ci")]
    assert kinds("--key", "nobody") == []
    assert kinds("--since", "30m") == [("rate_limited", "ops"), ("policy_refused", "ci")]
    assert kinds("--since", "1h", "--key", "ci") == [("policy_refused", "ci")]
    assert kinds("--since", "2d") == kinds()[:3]
    iso = (now - timedelta(hours=6)).isoformat()
    assert kinds("--since", iso) == kinds()[:3]
    naive_utc = (now - timedelta(minutes=15)).replace(tzinfo=None).isoformat()
    assert kinds("--since", naive_utc) == [("rate_limited", "ops")]

    status, out, err = run_cli(capsys, "audit", "--json", "--limit", "2")
    assert status == 0 and len(out.splitlines()) == 2
    assert "showing the 2 newest events" in err
    assert run_cli(capsys, "audit", "--limit", "4")[2] == ""  # exactly all: no note

    refused = events(capsys, "--key", "ci")[0]
    assert refused["details"] == {"modules": ["socket"]}


@pytest.mark.usefixtures("upgraded")
def test_stored_text_cannot_forge_output(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    forged = "10.0.0.1\r\nkey_created  admin\x1b[2J\u2028"
    add_events(
        settings,
        event(
            audit.AuditKind.AUTH_FAILED,
            datetime.now(UTC),
            source_address=forged,
            request_id="req 1",
            details={"reason": "unknown_or_revoked\nkey_revoked"},
        ),
    )
    status, out, _ = run_cli(capsys, "audit")
    assert status == 0
    _header, row = out.splitlines()  # one event, one line
    assert "\x1b" not in out and "\u2028" not in out and "\r" not in out
    assert "10.0.0.1\\r\\nkey_created\\x20\\x20admin\\x1b[2J\\u2028" in row
    assert "req\\x201" in row and '"reason":"unknown_or_revoked\\nkey_revoked"' in row

    (line,) = run_cli(capsys, "audit", "--json")[1].splitlines()
    assert json.loads(line)["source_address"] == forged


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "neither an ISO 8601 time nor relative"),
        (["--since", "5y"], "neither an ISO 8601 time nor relative"),
        (["--since=-1h"], "neither an ISO 8601 time nor relative"),
        (["--since", "2025-13-01"], "neither an ISO 8601 time nor relative"),
        (["--since", "999999999w"], "before the year 1"),
        (["--limit", "0"], "at least 1"),
        (["--limit", "many"], "at least 1"),
    ],
)
def test_bad_arguments_are_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "audit", *argv)
    assert status == _exit.EX_USAGE == 2
    assert out == "" and message in err


def test_needs_an_upgraded_database(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "audit")
    assert status == 1 and out == ""
    assert "exec-agent db upgrade" in err


def test_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:1/test")
    get_settings.cache_clear()
    status, _, err = run_cli(capsys, "audit")
    assert status == _exit.EX_UNAVAILABLE
    assert "database unavailable" in err and len(err.splitlines()) == 1
    assert "hunter2" not in err


def test_help_lists_the_forms_of_since(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "audit", "--help")
    assert status == 0
    for text in ("--since", "--key", "--limit", "--json", "30m", "ISO 8601", "Newest first"):
        assert text in out


# --------------------------------------------------------------------------- --since


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", NOW - timedelta(seconds=45)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("2D", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2025-05-01", datetime(2025, 5, 1, tzinfo=UTC)),
        ("2025-05-01T10:30:00Z", datetime(2025, 5, 1, 10, 30, tzinfo=UTC)),
        ("2025-05-01t10:30z", datetime(2025, 5, 1, 10, 30, tzinfo=UTC)),
        ("2025-05-01T12:30:00+02:00", datetime(2025, 5, 1, 10, 30, tzinfo=UTC)),
        (" 2025-05-01 10:30 ", datetime(2025, 5, 1, 10, 30, tzinfo=UTC)),
    ],
)
def test_since_forms(text: str, expected: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == expected and parsed.tzinfo == UTC
