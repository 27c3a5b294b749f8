"""Schema migrations (Alembic): apply them, and check that a database is at this version's head.

The scripts live in ``serve_app/migrations/`` and ship with the package; there is no
``alembic.ini``: :func:`alembic_config` builds the configuration, and ``env.py`` takes the database
URL from the settings. A new revision, from a checkout::

    from alembic import command
    from serve_app.db.migrate import alembic_config
    from serve_app.settings import get_settings
    command.revision(alembic_config(get_settings()), "what changes", autogenerate=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from serve_app.errors import DatabaseNotReadyError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from serve_app.settings import Settings

__all__ = ["alembic_config", "check_schema", "current_revision", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
UPGRADE_HINT = "run `exec-agent db upgrade`"


def alembic_config(settings: Settings) -> Config:
    """Alembic's configuration for the database of ``settings``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings  # read by env.py
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (idempotent: a database at head is left as is)."""
    command.upgrade(alembic_config(settings), revision)


def head_revision() -> str:
    """The newest revision this version of the code knows."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None if it has no schema yet."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`DatabaseNotReadyError` unless the database is at this version's head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseNotReadyError(f"the database has no schema yet: {UPGRADE_HINT}")
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if current not in known:
        raise DatabaseNotReadyError(
            f"the database is at revision {current}, unknown to this version of exec-agent "
            "(a newer one migrated it)"
        )
    raise DatabaseNotReadyError(
        f"the database is at revision {current}, this version needs {head}: {UPGRADE_HINT}"
    )
