"""The ``exec-agent batch`` command: one execution request per JSON line, run as
``/v1/batches`` on a server, one output line per input line in input order.

Each input line is a JSON object, an execution request without ``wait`` (``{"code": ...,
"runtime"?, "limits"?, "test_code"?, "cases"?, ...}``). Each output line is, in the same
place, the line's execution record as the API returns it, or ``{"line": N, "error": {"code",
"message", "details"?}}`` if the line was refused (not JSON, not an object, not a valid
request here, or refused by the server); refused lines are also named on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from serve_app import _exit
from serve_app._cli_batch_lines import Line, read_lines, resume_point
from serve_app._cli_batch_send import Sender
from serve_app.client import (
    DEFAULT_MAX_BATCH_ITEMS,
    KEY_ENV_VAR,
    ApiErrorResponse,
    Client,
    OverloadedResponse,
    RateLimitedResponse,
    ServerUnreachableError,
    UnavailableResponse,
)

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["BATCH_EXIT_STATUS_HELP", "add_batch_parser", "batch_command"]

BATCH_EXIT_STATUS_HELP = """\
output: one line per input line, in input order: the execution record (as the API returns it),
or {"line": N, "error": {"code", "message", "details"?}} for a line that was refused.
with --out FILE --resume, the lines FILE already holds are skipped: a rerun after Ctrl-C or a
failure goes on where it stopped (without --resume, FILE is overwritten).
exit status:
  0        every line has its record (whatever the programs' statuses)
  1        every line has its output line, and some are errors (listed on stderr)
  2        bad arguments, an unreadable FILE, or the server refused the requests (its error
           answer on stderr); the lines finished until then are written
  69       the server could not be reached, or stayed busy (429, 503) past the client's
           retries; the lines finished until then are written
  73       --out FILE cannot be written
  130      interrupted (Ctrl-C): nothing more sent, the lines finished are written
"""


def add_batch_parser(subparsers: Subparsers) -> None:
    """Register ``batch`` and its options."""
    parser = subparsers.add_parser(
        "batch",
        help="run one execution request per JSON line through a server, records in order",
        description="Send one execution request per JSON line (an execution request without "
        "'wait') to a server as /v1/batches; write one output line per input line, in order.",
        epilog=BATCH_EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE.jsonl", help="the requests; '-': stdin")
    parser.add_argument("--server", metavar="URL", required=True, help="base URL of the API")
    parser.add_argument(
        "--key", metavar="KEY", help=f"API key (default: ${KEY_ENV_VAR}, kept out of ps)"
    )
    parser.add_argument(
        "--out", metavar="FILE", type=Path, help="write the output lines to FILE (default: stdout)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --out: skip the input lines whose output FILE already holds, append the rest",
    )
    parser.add_argument(
        "--chunk-size",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_BATCH_ITEMS,
        help="items per batch (default %(default)s, the server's default MAX_BATCH_ITEMS); a "
        "batch the server refuses as too large is sent again in halves",
    )
    parser.set_defaults(handler=batch_command)


def batch_command(args: argparse.Namespace) -> int:
    """Run the lines of ``args.file``; write their output lines; the exit status."""
    if args.resume and args.out is None:
        return _refuse("--resume needs --out FILE")
    if args.chunk_size < 1:
        return _refuse("--chunk-size must be at least 1")
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        skip = resume_point(args.out) if args.resume else 0
    except (OSError, UnicodeDecodeError) as exc:
        return _refuse(f"cannot read {args.file}: {exc}")
    lines = read_lines(text, skip=skip)
    for line in lines:
        if line.error is not None:
            _say(f"line {line.number}: {line.error['error']['message']}")
    try:
        with _output(args.out, append=args.resume) as out:
            return _send(args, lines, out)
    except OSError as exc:
        _say(f"cannot write {args.out}: {exc}")
        return _exit.EX_CANTCREAT


def _send(args: argparse.Namespace, lines: list[Line], out: IO[str]) -> int:
    checked_here = {line.number for line in lines if line.error is not None}
    refused = bool(checked_here)

    def write(output: dict[str, Any]) -> None:
        nonlocal refused
        out.write(json.dumps(output) + "\n")
        out.flush()
        if set(output) == {"line", "error"}:  # a refused line (a record has more fields)
            refused = True
            if output["line"] not in checked_here:  # the server's refusal: not said yet
                _say(f"line {output['line']}: {output['error']['message']}")

    with (
        Client(args.server, args.key, max_batch_items=args.chunk_size) as client,
        _bar(len(lines)) as progress,
    ):
        sender = Sender(client, lines, write, args.chunk_size, progress)
        try:
            sender.run()
        except KeyboardInterrupt:
            return _interrupted(sender)
        except (RateLimitedResponse, OverloadedResponse, UnavailableResponse) as exc:
            _say(f"the server stayed busy past the retries: {exc}")
            return _stopped(sender, _exit.EX_UNAVAILABLE)
        except ApiErrorResponse as exc:
            _say(f"the server refused the batch: {exc.body.strip() or exc}")
            return _stopped(sender, _exit.EX_USAGE)
        except ServerUnreachableError as exc:
            _say(str(exc))
            return _stopped(sender, _exit.EX_UNAVAILABLE)
    return 1 if refused else _exit.EX_OK


def _interrupted(sender: Sender) -> int:
    """Ctrl-C: nothing more is sent; what had finished is read once more and written."""
    with contextlib.suppress(KeyboardInterrupt, ApiErrorResponse, ServerUnreachableError):
        sender.finish()
    return _stopped(sender, _exit.EX_INTERRUPTED)


def _stopped(sender: Sender, status: int) -> int:
    _say(f"stopped: {sender.written} lines written, {sender.remaining} not (--resume goes on)")
    return status


@contextlib.contextmanager
def _output(path: Path | None, *, append: bool) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("a" if append else "w", encoding="utf-8") as file:
        yield file


@contextlib.contextmanager
def _bar(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr if it is a terminal; the function that moves it."""
    if not sys.stderr.isatty():
        yield lambda _done: None
        return
    columns = (TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("batch", total=total)
        yield lambda done: progress.update(task, completed=done)


def _say(message: str) -> None:
    print(f"exec-agent batch: {message}", file=sys.stderr, flush=True)


def _refuse(message: str) -> int:
    _say(message)
    return _exit.EX_USAGE
