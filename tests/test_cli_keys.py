"""``exec-agent keys create/list/revoke`` and ``exec-agent db upgrade`` on an embedded database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from serve_app import _exit
from serve_app.db import Database, keys, migrate
from serve_app.settings import Settings, get_settings
from tests.support.cli import run_cli
from tests.support.settings import use_settings_environment

SECRET = "cli-test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """Settings from the environment only: a temporary SQLite file, a known key secret."""
    database_url = f"sqlite:///{tmp_path / 'state' / 'keys.db'}"
    use_settings_environment(
        monkeypatch, tmp_path, {"DATABASE_URL": database_url, "API_KEY_SECRET": SECRET}
    )
    yield get_settings()
    get_settings.cache_clear()


def authenticate(settings: Settings, presented: str) -> str | None:
    database = Database.from_settings(settings)
    try:
        with database.session() as session:
            key = keys.authenticate(session, presented, SecretStr(SECRET))
            return None if key is None else key.name
    finally:
        database.dispose()


@pytest.fixture
def upgraded(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "db", "upgrade")[0] == 0


def test_db_upgrade_creates_the_schema_once(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "db", "upgrade")
    assert status == 0 and migrate.head_revision() in out
    assert run_cli(capsys, "db", "upgrade")[0] == 0  # nothing left to do
    database = Database.from_settings(settings)
    migrate.check_schema(database.engine)
    database.dispose()


def test_default_database_is_sqlite_under_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    get_settings.cache_clear()
    assert run_cli(capsys, "db", "upgrade")[0] == 0
    assert (tmp_path / "data" / "exec_agent.db").is_file()


@pytest.mark.parametrize("argv", [["list"], ["create", "--name", "ci"], ["revoke", "ci"]])
def test_keys_need_an_upgraded_database(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "keys", *argv)
    assert status == 1 and out == ""
    assert "no database at" in err and "exec-agent db upgrade" in err
    assert not any(tmp_path.rglob("*.db"))  # asking created no database


def test_keys_need_a_schema(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    Database.from_settings(settings).dispose()  # what opening does: an empty file
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as connection:
        connection.execute("PRAGMA user_version = 1")  # make sure the file is written
    status, _, err = run_cli(capsys, "keys", "list")
    assert status == 1 and "no schema yet: run `exec-agent db upgrade`" in err


@pytest.mark.usefixtures("upgraded")
def test_create_prints_the_key_as_the_last_line(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(
        capsys, "keys", "create", "--name", "ci", "--rate-limit-per-minute", "30"
    )
    assert status == 0
    *before, key = out.splitlines()
    assert key == key.strip() and key.startswith("ea_")
    assert all(key not in line for line in before) and key not in err
    assert authenticate(settings, key) == "ci"


@pytest.mark.usefixtures("upgraded")
def test_create_refuses_a_taken_name_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "keys", "create", "--name", "ci")[0] == 0
    status, _, err = run_cli(capsys, "keys", "create", "--name", "ci")
    assert status == 1 and "exists" in err
    assert run_cli(capsys, "keys", "create", "--name", "a b")[0] == _exit.EX_USAGE
    assert run_cli(capsys, "keys", "create", "--name", "x", "--rate-limit-per-minute", "0")[0] == 2
    assert run_cli(capsys, "keys", "create", "--name", "x", "--max-concurrent", "0")[0] == 2
    assert run_cli(capsys, "keys", "create")[0] == _exit.EX_USAGE  # --name is required


@pytest.mark.usefixtures("upgraded")
def test_list_shows_keys_but_never_their_secrets(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_cli(
        capsys,
        *("keys", "create", "--name", "ci", "--rate-limit-per-minute", "30"),
        *("--max-concurrent", "64"),
    )[1]
    assert "at most 64 in flight" in first
    second = run_cli(capsys, "keys", "create", "--name", "ops")[1]
    assert "at most 8 (default) in flight" in second
    assert run_cli(capsys, "keys", "revoke", "ops")[0] == 0
    status, out, _ = run_cli(capsys, "keys", "list")
    assert status == 0
    header, ci, ops = out.splitlines()
    assert header.split() == ["NAME", "CREATED", "REVOKED", "RATE", "LIMIT", "IN", "FLIGHT"]
    assert ci.split()[0] == "ci" and ci.split()[2] == "-" and "30/min" in ci
    assert ci.split()[-1] == "64"
    assert ops.split()[0] == "ops" and ops.split()[2].endswith("Z") and "60/min (default)" in ops
    assert ops.split()[-2:] == ["8", "(default)"]
    for created in (first, second):
        key = created.splitlines()[-1]
        assert key not in out and key[3:15] not in out
        assert keys.hash_key(key, SecretStr(SECRET)) not in out


@pytest.mark.usefixtures("upgraded")
def test_revoke_takes_effect_at_once(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    key = run_cli(capsys, "keys", "create", "--name", "ci")[1].splitlines()[-1]
    assert authenticate(settings, key) == "ci"
    status, out, _ = run_cli(capsys, "keys", "revoke", "ci")
    assert status == 0 and "revoked" in out
    assert authenticate(settings, key) is None
    status, _, err = run_cli(capsys, "keys", "revoke", "nobody")
    assert status == 1 and "no key named 'nobody'" in err


def test_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:1/test")
    get_settings.cache_clear()
    for argv in (["keys", "list"], ["db", "upgrade"]):
        status, _, err = run_cli(capsys, *argv)
        assert status == _exit.EX_UNAVAILABLE
        assert "database unavailable" in err and len(err.splitlines()) == 1
        assert "hunter2" not in err


@pytest.mark.parametrize("url", ["nonsense:secret@host", "mysql://u:secret@db/x"])
def test_other_database_urls_are_a_configuration_error(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    for argv in (["keys", "list"], ["db", "upgrade"]):
        status, _, err = run_cli(capsys, *argv)
        assert status == _exit.EX_CONFIG and "DATABASE_URL" in err
        assert "secret" not in err and "Traceback" not in err


def test_help_says_how_to_prepare_the_database(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys", "--help"], ["keys", "create", "--help"], ["db", "upgrade", "--help"]):
        status, out, _ = run_cli(capsys, *argv)
        assert status == 0
        assert "exec-agent db upgrade" in out or "migrations" in out


def test_cli_imports_no_database_code_until_needed() -> None:
    # `exec-agent run` starts faster without SQLAlchemy and Alembic, which only these commands use.
    probe = "import sys, serve_app.cli; print(sorted(m for m in ('sqlalchemy', 'alembic') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
