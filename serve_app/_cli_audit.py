"""The ``exec-agent audit`` command: the security events of the database, newest first."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from serve_app import _exit
from serve_app._cli_keys import (
    _check_sqlite_file,
    _database,
    _print_table,
    _reporting_failures,
)
from serve_app.settings import get_settings

if TYPE_CHECKING:
    from serve_app._cli_run import Subparsers
    from serve_app.db.models import AuditEvent

__all__ = ["DEFAULT_LIMIT", "add_audit_parser", "parse_since"]

DEFAULT_LIMIT = 100
_RELATIVE = re.compile(r"(\d{1,9})([smhdw])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

AUDIT_EPILOG = f"""\
Security events, from the database of DATABASE_URL (the one `exec-agent serve` writes them
to): auth_failed, key_created, key_revoked, rate_limited, policy_refused. Newest first: the
last --limit events (default {DEFAULT_LIMIT}) at or after --since; a note on stderr says when
more were left out. Never a key, nor a program's code.

--since T: an ISO 8601 time (2025-06-01, 2025-06-01T12:00:00Z, 2025-06-01T14:00+02:00; UTC
when no offset is given), or a time that far back: 30s, 15m, 1h, 2d, 1w.

--json: one JSON object per line, newest first:
  {{"id": 7, "at": "2025-06-01T12:00:00.123456Z", "kind": "auth_failed", "key_name": null,
   "source_address": "10.0.0.5", "request_id": "...", "details": {{"reason": "missing"}}}}

exit status:
  0   done (also when no event matches)
  1   the schema is missing or not current (run `exec-agent db upgrade`)
  2   bad arguments (an unreadable --since, a --limit below 1)
  69  the database could not be reached
  78  invalid configuration (environment or .env)
"""


def add_audit_parser(subparsers: Subparsers) -> None:
    """Register ``audit``."""
    audit = subparsers.add_parser(
        "audit",
        help="list security events (authentication failures, keys, refused requests)",
        description="List security events, newest first.",
        epilog=AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument(
        "--since",
        metavar="T",
        type=_since_argument,
        help="only events at or after T: ISO 8601, or relative (30m, 1h, 2d)",
    )
    audit.add_argument("--key", metavar="NAME", help="only the events of the key named NAME")
    audit.add_argument(
        "--limit",
        metavar="N",
        type=_limit_argument,
        default=DEFAULT_LIMIT,
        help=f"at most the N newest events (default {DEFAULT_LIMIT})",
    )
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(handler=_audit)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``'s moment: ``30m``/``1h``/``2d`` (and ``s``, ``w``) before ``now``, or an
    ISO 8601 date or time (UTC when it names no offset). Raises ``ValueError``."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative is not None:
        amount, unit = int(relative.group(1)), relative.group(2).lower()
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time nor relative like 30m, 1h or 2d"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _since_argument(text: str) -> datetime:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _audit(args: argparse.Namespace) -> int:
    settings = get_settings()

    def listing() -> int:
        from serve_app.db import audit, migrate

        _check_sqlite_file(settings.database_url)
        with _database(settings) as database:
            migrate.check_schema(database.engine)
            with database.session() as session:
                # One more than asked: whether some were left out.
                events = audit.list_events(
                    session, since=args.since, key_name=args.key, limit=args.limit + 1
                )
        shown = [_event(event) for event in events[: args.limit]]
        if args.json:
            for event in shown:
                print(json.dumps(event, ensure_ascii=True, separators=(",", ":")))
        else:
            _print_events(shown)
        if len(events) > args.limit:
            print(
                f"exec-agent audit: showing the {args.limit} newest events; "
                "more match (--limit, --since)",
                file=sys.stderr,
            )
        return _exit.EX_OK

    return _reporting_failures("audit", listing)


def _event(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "kind": event.kind,
        "key_name": event.key_name,
        "source_address": event.source_address,
        "request_id": event.request_id,
        "details": event.details,
    }


def _print_events(events: list[dict[str, Any]]) -> None:
    rows = [
        (
            event["at"][:19] + "Z",
            _cell(event["kind"]),
            _cell(event["key_name"]),
            _cell(event["source_address"]),
            _cell(event["request_id"]),
            _details(event["details"]),
        )
        for event in events
    ]
    _print_table(("TIME", "KIND", "KEY", "SOURCE", "REQUEST ID", "DETAILS"), rows)


def _cell(value: str | None) -> str:
    """``value`` on one line, every character that is not printable (or a space) escaped:
    what the service stored came from clients and must not move a terminal's cursor."""
    if not value:
        return "-"
    return "".join(
        char if char.isprintable() and not char.isspace() else _escape(char) for char in value
    )


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii") if char != " " else "\\x20"


def _details(details: dict[str, Any] | None) -> str:
    if not details:
        return "-"
    return json.dumps(details, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
