"""Sessions: one engine per process, one short transaction per unit of work::

    database = Database.from_settings(settings)
    with database.session() as session:   # commits, or rolls back on an exception
        key = keys.authenticate(session, presented, secret)

Keep transactions short: a session holds a pooled connection (and, on SQLite, maybe the lock).
A database that cannot be reached (down, restarting, no pooled connection free in time, SQLite
locked past its busy timeout) raises :class:`~serve_app.errors.DatabaseUnavailableError`, which
the API answers with 503 ``unavailable``; other database errors stay what they are (bugs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db.engine import create_engine
from serve_app.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["Database"]

UNAVAILABLE_RETRY_AFTER_S = 2.0
_SQLITE_UNREACHABLE = ("database is locked", "unable to open database file", "disk I/O error")


class Database:
    """An engine and its session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Objects stay readable after commit: callers use records once the session has closed,
        # and re-reading every attribute would cost a round trip each.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> Database:
        return cls(create_engine(url, **engine_options))

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls.from_url(settings.database_url)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed if the block ends normally, else rolled back."""
        try:
            with self._sessions.begin() as session:
                yield session
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            if self._unreachable(exc):
                raise DatabaseUnavailableError(UNAVAILABLE_RETRY_AFTER_S) from exc
            raise

    def _unreachable(self, exc: sa_exc.DBAPIError | sa_exc.TimeoutError) -> bool:
        if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection free in time
            return True
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        if not isinstance(exc, sa_exc.OperationalError):
            return False
        if self.engine.dialect.name != "sqlite":
            return True  # psycopg: connection lost, server shutting down, cancelled
        # sqlite3 reports most errors (a missing table too) as OperationalError.
        return any(sign in str(exc.orig) for sign in _SQLITE_UNREACHABLE)

    @property
    def backend(self) -> str:
        """The dialect's name: ``postgresql`` or ``sqlite``."""
        return self.engine.dialect.name

    def ping(self) -> None:
        """One round trip to the database on a fresh connection (readiness); raises if down."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, and in tests)."""
        self.engine.dispose()
