"""Secret settings: read from ``SECRETS_DIR``'s files, never held by :class:`PublicSettings`
(what the application builder binds), and joined again by :func:`with_secrets` (the ingress)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from serve_app.deployment import INGRESS_SECRETS, private_secrets, scrub_secret_environment
from serve_app.errors import ConfigurationError
from serve_app.settings import (
    PLACEHOLDER_SECRET,
    PublicSettings,
    Settings,
    env_name,
    get_settings,
    load_settings,
    secret_settings,
    with_secrets,
)
from tests.support.settings import use_settings_environment

SECRET = "file-secret-0123456789abcdef0123456789"
DATABASE = "postgresql+psycopg://agent:db-password-in-a-file@db:5432/agent"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    use_settings_environment(monkeypatch, tmp_path)
    yield
    get_settings.cache_clear()


def secrets_dir(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value + "\n")
    return directory


def test_the_secret_settings() -> None:
    assert set(secret_settings()) == {
        "api_key_secret",
        "database_url",
        "redis_url",
        "sentry_dsn",
        "exec_agent_api_key",
    }
    assert "exec_agent_api_key" not in INGRESS_SECRETS  # a client's: the service never reads it


def test_secret_files_are_named_as_their_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = secrets_dir(
        tmp_path,
        API_KEY_SECRET=SECRET,
        DATABASE_URL=DATABASE,
        REDIS_URL="redis://:redis-password@redis:6379/0",
        SENTRY_DSN="https://public@sentry.example/1",
        EXEC_AGENT_API_KEY="ea_client_key",
        PORT="9999",  # not a secret: never read from there
    )
    monkeypatch.setenv("SECRETS_DIR", str(directory))
    monkeypatch.setenv("API_KEY_SECRET", "the-environment-loses")
    settings = load_settings()
    assert settings.api_key_secret.get_secret_value() == SECRET  # the file wins
    assert settings.database_url == DATABASE
    assert settings.redis_url == "redis://:redis-password@redis:6379/0"
    assert settings.sentry_dsn == "https://public@sentry.example/1"
    assert settings.exec_agent_api_key == SecretStr("ea_client_key")
    assert settings.port == 8000
    assert [env_name(name) for name in secret_settings()] == [
        "DATABASE_URL",
        "REDIS_URL",
        "API_KEY_SECRET",
        "SENTRY_DSN",
        "EXEC_AGENT_API_KEY",
    ]


def test_an_empty_file_unsets_and_a_missing_one_leaves_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-the-environment")
    monkeypatch.setenv("SENTRY_DSN", "https://from@the-environment/1")
    directory = secrets_dir(tmp_path, REDIS_URL="")
    settings = Settings(secrets_dir=str(directory))
    assert settings.redis_url is None
    assert settings.sentry_dsn == "https://from@the-environment/1"


def test_a_missing_secrets_dir_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "not-mounted"))
    with pytest.raises(ConfigurationError, match="SECRETS_DIR"):
        load_settings()


def test_public_settings_hold_no_secret_and_skip_production_secret_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("MAX_CONCURRENT_EXECUTIONS", "3")
    with pytest.raises(ConfigurationError, match="API_KEY_SECRET"):
        load_settings()  # production refuses the placeholder...
    public = PublicSettings()  # ...which the builder, reading no secret, never checks
    assert (public.environment, public.max_concurrent_executions) == ("production", 3)
    monkeypatch.setenv("API_KEY_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", DATABASE)
    monkeypatch.setenv("sentry_dsn", "https://lower@case/1")  # the attribute name, any case
    full = load_settings()
    for public in (PublicSettings(), full.public(), PublicSettings(**full.model_dump())):
        assert public.api_key_secret.get_secret_value() == PLACEHOLDER_SECRET
        assert public.database_url.startswith("sqlite")
        assert public.sentry_dsn is None
        assert SECRET not in repr(public.model_dump()) and "db-password" not in str(public)


def test_with_secrets_completes_public_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    public = PublicSettings(max_concurrent_executions=5)
    monkeypatch.setenv("MAX_CONCURRENT_EXECUTIONS", "1")  # the bound values win
    directory = secrets_dir(tmp_path, API_KEY_SECRET=SECRET, DATABASE_URL=DATABASE)
    full = with_secrets(public, str(directory))
    assert type(full) is Settings
    assert full.max_concurrent_executions == 5
    assert (full.api_key_secret.get_secret_value(), full.database_url) == (SECRET, DATABASE)
    with pytest.raises(ConfigurationError, match="API_KEY_SECRET"):
        with_secrets(public)  # production: no placeholder in the ingress either


def test_private_secrets_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(api_key_secret=SECRET, database_url=DATABASE, exec_agent_api_key="k")
    with private_secrets(settings) as directory:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        names = sorted(os.listdir(directory))
        assert names == ["API_KEY_SECRET", "DATABASE_URL", "REDIS_URL", "SENTRY_DSN"]
        for name in names:
            assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600
        # What the ingress makes of it, whatever its own environment says.
        monkeypatch.setenv("REDIS_URL", "redis://the-ingress-environment")
        full = with_secrets(settings.public(), directory)
        assert full.api_key_secret.get_secret_value() == SECRET
        assert (full.database_url, full.redis_url) == (DATABASE, None)
    assert not os.path.exists(directory)


def test_scrub_secret_environment() -> None:
    environ = {
        "API_KEY_SECRET": "a",
        "database_url": "b",
        "RATE_LIMIT_PER_MINUTE": "5",
        "SECRETS_DIR": "/var/run/secrets/exec-agent",
    }
    assert sorted(scrub_secret_environment(environ)) == ["API_KEY_SECRET", "database_url"]
    assert environ == {"RATE_LIMIT_PER_MINUTE": "5", "SECRETS_DIR": "/var/run/secrets/exec-agent"}
