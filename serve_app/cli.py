"""``exec-agent``: the service's command line (see "Command line" in the API contract).

exec-agent serve [--demo FILES] start Ray, deploy the service, serve HTTP until interrupted
exec-agent run [FILE or -] ...  run one program, locally or through a server
exec-agent batch FILE.jsonl ... one execution request per line through a server, records in order
exec-agent keys ACTION          create, list or revoke API keys (in DATABASE_URL's database)
exec-agent db upgrade           apply database migrations
exec-agent audit ...            list security events (authentication failures, keys, refusals)
exec-agent settings example     print .env.example: every setting, its meaning and default
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from serve_app import _exit
from serve_app._cli_audit import add_audit_parser
from serve_app._cli_batch import add_batch_parser
from serve_app._cli_keys import add_db_parser, add_keys_parser
from serve_app._cli_run import add_run_parser
from serve_app.errors import ConfigurationError
from serve_app.settings import env_example, get_settings

if TYPE_CHECKING:
    from serve_app._cli_run import Subparsers

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exec-agent`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else _exit.EX_USAGE
    try:
        status: int = args.handler(args)
    except ConfigurationError as exc:
        print(f"exec-agent: {exc}", file=sys.stderr)
        return _exit.EX_CONFIG
    except KeyboardInterrupt:
        return _exit.EX_INTERRUPTED
    return status


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every subcommand of the contract, implemented or not yet."""
    parser = argparse.ArgumentParser(
        prog="exec-agent", description="Python Execution Agent: run untrusted Python in sandboxes."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve_parser(subparsers)
    add_run_parser(subparsers)
    add_batch_parser(subparsers)
    add_keys_parser(subparsers)
    add_db_parser(subparsers)
    add_audit_parser(subparsers)
    _add_settings_parser(subparsers)
    return parser


def _add_serve_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start (or join, with RAY_ADDRESS) Ray and serve the HTTP API on HOST:PORT",
        description="Serve the API until interrupted, then drain and stop.",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="instead of serving HTTP: run FILES (or three samples) through the executor "
        "deployment, print their records and stop",
    )
    parser.add_argument("files", nargs="*", metavar="FILES", help="programs for --demo")
    parser.set_defaults(handler=_serve)


def _add_settings_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "settings",
        help="print .env.example (every setting, its meaning and default)",
        description="The service's settings (serve_app/settings.py).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    example = actions.add_parser(
        "example", help="print .env.example: every variable with its description and default"
    )
    example.set_defaults(handler=_settings_example)


def _settings_example(_args: argparse.Namespace) -> int:
    sys.stdout.write(env_example())
    return _exit.EX_OK


def _serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    # Imported here: they pull in Ray, which every other command does without.
    if args.demo:
        from serve_app.deployment import run_demo

        return run_demo(settings, args.files)
    if args.files:
        print("exec-agent serve: FILES need --demo", file=sys.stderr)
        return _exit.EX_USAGE
    from serve_app.deployment import run_service

    return run_service(settings)


if __name__ == "__main__":
    sys.exit(main())
