"""The ``exec-agent keys ...`` and ``exec-agent db upgrade`` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from serve_app import _exit
from serve_app.errors import (
    ConflictError,
    DatabaseNotReadyError,
    DatabaseUnavailableError,
    InvalidRequestError,
    NotFoundError,
)
from serve_app.settings import Settings, get_settings

if TYPE_CHECKING:
    from serve_app._cli_run import Subparsers
    from serve_app.db import Database

__all__ = ["add_db_parser", "add_keys_parser"]

EX_FAILED = 1  # the database answered, and the command could not be done (see the epilogs)
CLI_SOURCE = "cli"  # the audit events' source address for what this command line does

KEYS_EPILOG = """\
Keys live in the database of DATABASE_URL (default: SQLite in ./data/exec_agent.db), the one
`exec-agent serve` uses with the same settings. These commands never change its schema: on a
new database, or after an upgrade of exec-agent, run `exec-agent db upgrade` first.
A key is shown once, by `create`, as the last line of its output; only its HMAC is stored.

exit status:
  0   done
  1   no such key, the name is taken, or the schema is missing or not current
  2   bad arguments
  69  the database could not be reached
  78  invalid configuration (environment or .env)
"""

DB_EPILOG = """\
`upgrade` applies the migrations that the database of DATABASE_URL lacks (creating the schema on
an empty one); it changes nothing on a database that is current.

exit status:
  0   done
  1   the database is at a revision this version of exec-agent does not know
  69  the database could not be reached
  78  invalid configuration (environment or .env)
"""


def add_keys_parser(subparsers: Subparsers) -> None:
    """Register ``keys create``, ``keys list`` and ``keys revoke``."""
    keys = _add(subparsers, "keys", "manage API keys", KEYS_EPILOG)
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _add(actions, "create", "create a key; prints it as the last line", KEYS_EPILOG)
    create.add_argument("--name", required=True, help="letters, digits and . _ @ -")
    create.add_argument(
        "--rate-limit-per-minute",
        type=int,
        metavar="N",
        help="this key's requests per minute (default: RATE_LIMIT_PER_MINUTE)",
    )
    create.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="this key's executions in flight at once, batch items included "
        "(default: MAX_CONCURRENT_PER_KEY)",
    )
    create.set_defaults(handler=_with_database(_create))
    listing = _add(actions, "list", "list keys (never the keys themselves)", KEYS_EPILOG)
    listing.set_defaults(handler=_with_database(_list))
    revoke = _add(actions, "revoke", "revoke a key, effective at once", KEYS_EPILOG)
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=_with_database(_revoke))


def add_db_parser(subparsers: Subparsers) -> None:
    """Register ``db upgrade``."""
    db = _add(subparsers, "db", "database maintenance", DB_EPILOG)
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    upgrade = _add(actions, "upgrade", "apply database migrations", DB_EPILOG)
    upgrade.set_defaults(handler=_upgrade)


def _add(subparsers: Subparsers, name: str, text: str, epilog: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=text,
        description=text[0].upper() + text[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


Handler = Callable[[argparse.Namespace, Settings, "Database"], int]


def _with_database(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """``handler`` run against the settings' database, once its schema is known to be current."""

    def run(args: argparse.Namespace) -> int:
        settings = get_settings()

        def checked() -> int:
            from serve_app.db import migrate

            _check_sqlite_file(settings.database_url)
            with _database(settings) as database:
                migrate.check_schema(database.engine)
                return handler(args, settings, database)

        return _reporting_failures(f"{args.command} {args.action}", checked)

    return run


def _check_sqlite_file(url: str) -> None:
    # Opening a missing SQLite file creates it: a command run from another directory than the
    # service's (the default path is relative) would make a new empty database, then complain.
    from serve_app.db.engine import normalize_url

    parsed = normalize_url(url)
    path = parsed.database or ":memory:"
    embedded_file = parsed.get_backend_name() == "sqlite" and path != ":memory:"
    if embedded_file and not path.startswith("file:") and not Path(path).exists():
        raise DatabaseNotReadyError(
            f"no database at {Path(path).absolute()}: run `exec-agent db upgrade` "
            "(with the same DATABASE_URL and working directory as `exec-agent serve`)"
        )


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    # Imported here: SQLAlchemy and Alembic would cost every other command (`run`) their
    # import time.
    from serve_app.db import Database

    database = Database.from_settings(settings)
    try:
        yield database
    finally:
        database.dispose()


def _reporting_failures(command: str, action: Callable[[], int]) -> int:
    """``action``'s status; an expected failure is one line on stderr, not a traceback."""
    from alembic.util import CommandError
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        return action()
    except (NotFoundError, ConflictError, DatabaseNotReadyError, CommandError) as exc:
        return _fail(command, str(exc), EX_FAILED)
    except InvalidRequestError as exc:
        return _fail(command, str(exc), _exit.EX_USAGE)
    except (OperationalError, InterfaceError, DatabaseUnavailableError) as exc:
        # The driver's first line ("connection refused", "unable to open database file"):
        # never the statement, nor the URL with its password.
        cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
        driver = str(getattr(cause, "orig", "") or "").strip()
        reason = driver.splitlines()[0] if driver else "error"
        return _fail(command, f"database unavailable: {reason}", _exit.EX_UNAVAILABLE)


def _fail(command: str, message: str, status: int) -> int:
    print(f"exec-agent {command}: {message}", file=sys.stderr)
    return status


# --- the commands


def _create(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    from serve_app.db import keys

    with database.session() as session:
        new = keys.create_key(
            session,
            settings.api_key_secret,
            args.name,
            rate_limit_per_minute=args.rate_limit_per_minute,
            max_concurrency=args.max_concurrent,
            source_address=CLI_SOURCE,
        )
    limit = _rate_limit(new.row.rate_limit_per_minute, settings)
    in_flight = _in_flight(new.row.max_concurrency, settings)
    print(
        f"created key {args.name!r}, rate limit {limit}, at most {in_flight} in flight. "
        "It is shown this once; store it now:"
    )
    print(new.plaintext)
    return _exit.EX_OK


def _list(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    from serve_app.db import keys

    with database.session() as session:
        rows = [
            (
                key.name,
                _time(key.created_at),
                _time(key.revoked_at),
                _rate_limit(key.rate_limit_per_minute, settings),
                _in_flight(key.max_concurrency, settings),
            )
            for key in keys.list_keys(session)
        ]
    _print_table(("NAME", "CREATED", "REVOKED", "RATE LIMIT", "IN FLIGHT"), rows)
    return _exit.EX_OK


def _revoke(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    from serve_app.db import keys

    with database.session() as session:
        key = keys.revoke_key(session, args.name, source_address=CLI_SOURCE)
    print(f"key {key.name!r} revoked at {_time(key.revoked_at)}")
    return _exit.EX_OK


def _upgrade(args: argparse.Namespace) -> int:
    settings = get_settings()

    def upgrade() -> int:
        from serve_app.db import migrate
        from serve_app.db.engine import normalize_url

        migrate.upgrade(settings)
        where = normalize_url(settings.database_url).render_as_string(hide_password=True)
        print(f"database {where} is at revision {migrate.head_revision()}")
        return _exit.EX_OK

    return _reporting_failures("db upgrade", upgrade)


def _rate_limit(per_minute: int | None, settings: Settings) -> str:
    if per_minute is None:
        return f"{settings.rate_limit_per_minute}/min (default)"
    return f"{per_minute}/min"


def _in_flight(cap: int | None, settings: Settings) -> str:
    if cap is None:
        return f"{settings.max_concurrent_per_key} (default)"
    return str(cap)


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
