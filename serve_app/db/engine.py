"""The SQLAlchemy engine for ``DATABASE_URL``: PostgreSQL through psycopg 3, or embedded SQLite.

PostgreSQL gets a bounded connection pool with pre-ping (a connection the server closed, after a
restart or an idle timeout, is replaced instead of failing a request). SQLite gets its directory
created, write-ahead logging (readers do not block the writer), foreign keys enforced, a busy
timeout, and real transactions (see :func:`_configure_sqlite`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from serve_app.errors import ConfigurationError

__all__ = ["create_engine", "normalize_url"]

# Per process (each Serve replica has its own pool): 5 kept + 5 burst connections. Ten replicas
# stay within PostgreSQL's default max_connections (100).
POOL_SIZE = 5
POOL_MAX_OVERFLOW = 5
# Waiting longer for a pooled connection than for a busy executor would only hide overload.
POOL_TIMEOUT_S = 10
# Recycle before common idle-connection cut-offs of proxies and managed databases.
POOL_RECYCLE_S = 1800
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 5000

_POSTGRES_DRIVERLESS = ("postgresql", "postgres")


def normalize_url(url: str | URL) -> URL:
    """``url`` with PostgreSQL pinned to psycopg 3 (``postgresql://`` would pick psycopg2).

    Raise :class:`ConfigurationError` unless it is a PostgreSQL or SQLite URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("DATABASE_URL is not a database URL") from None
    if parsed.drivername in _POSTGRES_DRIVERLESS:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigurationError("DATABASE_URL must name a PostgreSQL or SQLite database")
    return parsed


def create_engine(url: str | URL, **overrides: Any) -> Engine:
    """An engine for ``url``; ``overrides`` go to :func:`sqlalchemy.create_engine` last."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _create_sqlite_directory(parsed)
        engine = sqlalchemy.create_engine(parsed, **overrides)
        _configure_sqlite(engine)
        return engine
    options: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_MAX_OVERFLOW,
        "pool_timeout": POOL_TIMEOUT_S,
        "pool_recycle": POOL_RECYCLE_S,
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
    }
    return sqlalchemy.create_engine(parsed, **{**options, **overrides})


def _create_sqlite_directory(url: URL) -> None:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys and a busy timeout on every connection, and transactions that begin.

    Python's sqlite3 (before 3.16) only opens a transaction before INSERT/UPDATE/DELETE, so DDL
    (migrations) and reads would run outside one; SQLAlchemy emits BEGIN itself instead, as its
    SQLite documentation recommends. Write paths start with their write, so they take the write
    lock (waiting up to the busy timeout) before reading anything.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL survives a crash of the process (not of the machine: a power
            # loss may undo the last commits) and saves an fsync per commit.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("BEGIN")
