"""Persistence: PostgreSQL (psycopg 3) or embedded SQLite, through SQLAlchemy 2 and Alembic.

    engine.py      the engine for DATABASE_URL (pool, pre-ping; SQLite: WAL, foreign keys)
    types.py       column types that clean text on the way in and keep times in UTC
    models.py      the tables
    session.py     :class:`Database`: the engine and a transaction-per-block session factory
    keys.py        API keys: create (shown once), authenticate in constant time, revoke, list
    executions.py  executions: insert, start, finish exactly once, read and page by key
    batches.py     batches: insert with all their items at once, read in order, track status
    instances.py   service instances' heartbeats; executions a dead instance left unfinished
    cursor.py      opaque page cursors
    audit.py       security events
    migrate.py     apply migrations (``exec-agent db upgrade``), check a schema is current

Repository functions take a :class:`~sqlalchemy.orm.Session` and never commit: the caller's
``with database.session()`` block is the transaction.
"""

from __future__ import annotations

from serve_app.db.session import Database

__all__ = ["Database"]
