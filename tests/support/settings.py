"""Settings for the tests: an environment of their own, and migrated SQLite settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from serve_app.db import migrate
from serve_app.settings import Settings, get_settings

__all__ = ["migrated_sqlite_settings", "settings_variables", "use_settings_environment"]


def settings_variables(*, old_names: bool = False) -> set[str]:
    """The environment variables Settings reads: each setting's documented name and its
    attribute name; with ``old_names``, the names it is still read from as well."""
    names = set()
    for attribute, field in Settings.model_fields.items():
        names.add(attribute.upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [str(choice) for choice in alias.choices]
            names.update(choices if old_names else choices[:1])
        elif isinstance(alias, str):
            names.add(alias)
    return names


def use_settings_environment(
    monkeypatch: pytest.MonkeyPatch, directory: Path, env: Mapping[str, str] | None = None
) -> None:
    """Exactly ``env`` as the settings' environment: no setting inherited from the machine (in
    any case), no ``.env`` (the working directory is ``directory``), and ``get_settings`` reads
    afresh."""
    for name in settings_variables(old_names=True):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(directory)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def migrated_sqlite_settings(directory: Path, **overrides: Any) -> Settings:
    """Settings on a new, migrated SQLite database in ``directory``, with ``overrides``."""
    settings = Settings(
        _env_file=None, database_url=f"sqlite:///{directory / 'service.db'}", **overrides
    )
    migrate.upgrade(settings)
    return settings
