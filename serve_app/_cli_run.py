"""The ``exec-agent run`` command: one program, in a local sandbox or through a server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

import executors
from executors import ExecutionRequest, LimitsRequest
from serve_app import _exit
from serve_app._cli_out import write_artifacts
from serve_app._cli_stream import run_streamed
from serve_app.client import Client, RunOptions
from serve_app.errors import (
    ApiErrorResponse,
    InvalidRequestError,
    ServerUnreachableError,
    describe_validation_error,
)
from serve_app.settings import Settings, get_settings

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_run_parser", "run_command"]

KEY_ENV_VAR = "EXEC_AGENT_API_KEY"
# (option, LimitsRequest field, type, metavar, help): the limits a caller may ask for.
LIMIT_OPTIONS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--wall-timeout-s", "wall_timeout_s", float, "S", "wall-clock time, seconds"),
    ("--cpu-time-s", "cpu_time_s", float, "S", "CPU time of the process tree, seconds"),
    ("--memory-mb", "memory_mb", int, "N", "memory of the process tree, MiB"),
    ("--max-output-bytes", "max_output_bytes", int, "N", "bytes per stream (stdout, stderr)"),
    ("--max-processes", "max_processes", int, "N", "processes and threads at once"),
    ("--max-file-bytes", "max_file_bytes", int, "N", "size of any one written file, bytes"),
)


def add_run_parser(subparsers: Subparsers) -> None:
    """Register ``run`` and its options."""
    parser = subparsers.add_parser(
        "run",
        help="run one program in a local sandbox, or through a server with --server",
        description="Run one Python program in a sandbox and mirror its output and exit status.",
        epilog=_exit.EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="the program; '-' (default): stdin"
    )
    parser.add_argument(
        "--stdin",
        metavar="TEXT",
        help="the program's standard input (default: with FILE, this command's own standard "
        "input; from a terminal, with --server and without --json, what is typed while the "
        "program runs (Ctrl-D ends it), else none; with '-', none)",
    )
    limits = parser.add_argument_group("limits (default: the server's defaults)")
    for option, field, kind, metavar, text in LIMIT_OPTIONS:
        limits.add_argument(option, dest=field, type=kind, metavar=metavar, help=text)
    parser.add_argument(
        "--runtime",
        metavar="NAME",
        help=f"the runtime to run in ({', '.join(executors.RUNTIMES)}; default: the settings' "
        "DEFAULT_RUNTIME, or the server's)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="write the artifacts (the files the program left under out/) to DIR, "
        "out/a/b.png as DIR/a/b.png",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the execution record as the API returns it (without it, through a server, "
        "the output is shown as the program writes it)",
    )
    remote = parser.add_argument_group("through a server instead of a local sandbox")
    remote.add_argument("--server", metavar="URL", help="base URL, e.g. http://127.0.0.1:8000")
    remote.add_argument(
        "--key",
        metavar="KEY",
        help=f"API key (default: ${KEY_ENV_VAR}, which keeps it out of the process list)",
    )
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the program ``args`` describe; print the result; return the exit status."""
    if args.server and not args.key:
        key = get_settings().exec_agent_api_key  # EXEC_AGENT_API_KEY
        if key is None:
            return _refuse(f"--server needs --key (or ${KEY_ENV_VAR})")
        args.key = key.get_secret_value()
    streamed = bool(args.server) and not args.json
    try:
        record = _stream_remote(args) if streamed else _execute(args)
    except ApiErrorResponse as exc:
        # The server's answer is already in the API's error format: pass it on as it is.
        _write(sys.stderr, exc.body.rstrip("\n") + "\n" if exc.body else f"{exc}\n")
        return _exit.EX_USAGE
    except InvalidRequestError as exc:
        return _refuse(str(exc))
    except ServerUnreachableError as exc:
        _write(sys.stderr, f"exec-agent run: {exc}\n")
        return _exit.EX_UNAVAILABLE
    except executors.ExecutorError as exc:
        _write(sys.stderr, f"exec-agent run: the sandbox failed: {exc}\n")
        return _exit.EX_SOFTWARE
    # Streamed, the output was shown as it came.
    status = _exit.exit_status(record) if streamed else _emit(record, as_json=args.json)
    if args.out is not None and not _saved(record, args.out):
        return _exit.EX_CANTCREAT
    return status


def _saved(record: dict[str, Any], directory: Path) -> bool:
    """Write ``record``'s artifacts under ``directory``; False if one could not be."""
    refused = write_artifacts(record, directory)
    for problem in refused:
        _write(sys.stderr, f"exec-agent run: artifact {problem}\n")
    if record.get("artifacts_truncated"):
        _write(sys.stderr, "exec-agent run: some artifacts were left out (over a cap)\n")
    return not refused


def _execute(args: argparse.Namespace) -> dict[str, Any]:
    code = _read_program(args.file)
    stdin = _program_stdin(args.stdin, program_from_stdin=args.file == "-")
    asked = _limits_request(args)
    if args.server:
        with Client(args.server, args.key) as client:
            record = client.run(code, **_remote_options(args, stdin, asked))
        return record.to_api()
    return _run_local(code, stdin, asked, args.runtime, get_settings())


def _stream_remote(args: argparse.Namespace) -> dict[str, Any]:
    """Through the server, the output shown as it comes; from a terminal (no ``--stdin``), the
    program's standard input typed as it runs."""
    code = _read_program(args.file)
    terminal = _terminal_fd() if args.stdin is None and args.file != "-" else None
    stdin = (
        ""
        if terminal is not None
        else _program_stdin(args.stdin, program_from_stdin=args.file == "-")
    )
    options = _remote_options(args, stdin, _limits_request(args))
    with Client(args.server, args.key) as client:
        return run_streamed(client, code, options, _write_to, terminal_fd=terminal)


def _remote_options(args: argparse.Namespace, stdin: str, asked: LimitsRequest) -> RunOptions:
    options = RunOptions(stdin=stdin, limits=asked.model_dump(exclude_none=True))
    if args.runtime is not None:
        options["runtime"] = args.runtime
    return options


def _terminal_fd() -> int | None:
    """Our standard input's descriptor if it is a terminal."""
    if sys.stdin is None or not sys.stdin.isatty():
        return None
    return sys.stdin.fileno()


def _write_to(stream: str, text: str) -> None:
    _write(sys.stdout if stream == "stdout" else sys.stderr, text)


def _read_program(source: str) -> str:
    try:
        if source == "-":
            if sys.stdin is None:  # started with file descriptor 0 closed
                raise InvalidRequestError("no standard input to read the program from")
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read the program from {source}: {exc}") from None


def _program_stdin(given: str | None, *, program_from_stdin: bool) -> str:
    """``--stdin``, else our own piped stdin (``run prog.py < input.txt``, as with python)."""
    if given is not None:
        return given
    # sys.stdin is None when the command was started with file descriptor 0 closed.
    if program_from_stdin or sys.stdin is None or sys.stdin.isatty():
        return ""
    try:
        return sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cannot read standard input: {exc}") from None


def _limits_request(args: argparse.Namespace) -> LimitsRequest:
    asked = {option[1]: getattr(args, option[1]) for option in LIMIT_OPTIONS}
    try:
        return LimitsRequest(**asked)
    except ValueError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from None


def _run_local(
    code: str, stdin: str, asked: LimitsRequest, runtime: str | None, settings: Settings
) -> dict[str, Any]:
    """Run in a one-slot sandbox pool of this process: no server, no Ray."""
    runtime = runtime or settings.default_runtime
    if runtime not in executors.RUNTIMES:
        raise InvalidRequestError(f"--runtime must be one of {', '.join(executors.RUNTIMES)}")
    try:
        limits = asked.resolve(settings.default_limits(), settings.max_limits())
        request = ExecutionRequest(code=code, stdin=stdin, limits=limits, runtime=runtime)
    except ValueError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from None
    # Looked up on the package at call time so tests can stand a fake pool in for the engine.
    # The run's runtime as the pool's default: the only zygote it starts.
    config = settings.sandbox_config().model_copy(update={"default_runtime": runtime})
    pool = executors.SandboxPool(config, slots=1)
    with pool:
        return pool.run(request).to_api()


def _emit(record: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        _write(sys.stdout, json.dumps(record) + "\n")
        return 1 if record.get("status") == "internal_error" else _exit.EX_OK
    _write(sys.stdout, record.get("stdout") or "")
    _write(sys.stderr, record.get("stderr") or "")
    return _exit.exit_status(record)


def _write(stream: TextIO, text: str) -> None:
    """Write ``text`` as UTF-8 whatever the locale: the program's output passes unchanged."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:  # a replaced stream (tests), already text
        stream.write(text)
    else:
        stream.flush()
        buffer.write(text.encode("utf-8", "surrogateescape"))
    stream.flush()


def _refuse(message: str) -> int:
    _write(sys.stderr, f"exec-agent run: {message}\n")
    return _exit.EX_USAGE
