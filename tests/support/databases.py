"""Databases for the tests: an empty one of each backend (a SQLite file, a PostgreSQL schema of
its own on the machine's server), migrated or emptied."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from serve_app.db import Database, migrate
from serve_app.db.models import Base
from serve_app.settings import Settings

__all__ = [
    "DATABASE_BACKENDS",
    "POSTGRES_URL",
    "delete_all_rows",
    "empty_database",
    "migrated_database",
    "postgres_schema",
]

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
"""The machine's PostgreSQL (trust auth); tests work in schemas of their own."""
DATABASE_BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped afterwards.

    The test is skipped, saying why, if the server does not answer.
    """
    name = f"exec_agent_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(
        POSTGRES_URL, poolclass=NullPool, connect_args={"connect_timeout": 3}
    )
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    except OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) unreachable: {reason}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


@contextlib.contextmanager
def empty_database(backend: str, directory: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file in ``directory``, or a PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'exec_agent.db'}"
    else:
        with postgres_schema() as url:
            yield url


@contextlib.contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[str]:
    """As :func:`empty_database`, migrated to the schema's head."""
    with empty_database(backend, directory) as url:
        migrate.upgrade(Settings(database_url=url))
        yield url


def delete_all_rows(database: Database) -> None:
    """Empty every table of ``database``, children before parents."""
    with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
