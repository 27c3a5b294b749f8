"""Sessions: one engine per process, one short transaction per unit of work::

    database = Database.from_settings(settings)
    with database.session() as session:   # commits, or rolls back on an exception
        key = keys.authenticate(session, presented, secret)

Keep transactions short: a session holds a pooled connection (and, on SQLite, maybe the lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db.engine import create_engine

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["Database"]


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
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, and in tests)."""
        self.engine.dispose()
