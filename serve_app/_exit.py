"""Exit statuses of the command line, and how an execution record maps onto one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["EXIT_STATUS_HELP", "exit_status"]

# sysexits.h values where one fits, so scripts can tell our failures from the program's.
EX_OK = 0
EX_USAGE = 2  # argparse's own choice for bad arguments; kept for every refused request
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_CONFIG = 78
EX_INTERRUPTED = 130
EXIT_TIMEOUT = 124  # as timeout(1) does
EXIT_SIGNAL_BASE = 128  # as shells report a death by signal
SIGKILL = 9

EXIT_STATUS_HELP = """\
exit status of `run` without --json (it mirrors the program):
  N        the program's own exit code (ok, nonzero_exit; memory_limit after a MemoryError)
  128+N    crashed: the program died of signal N (SIGSEGV: 139)
  124      timeout: the wall-clock or CPU-time limit was hit
  137      memory_limit: the memory cap killed the program
  1        output_limit: the program wrote more than --max-output-bytes on a stream
  70       internal_error: the service failed, not the program
with --json: 0 once a record is printed, or 1 if its status is internal_error.
either way:
  2        bad arguments, limits over the maxima, an unreadable FILE, or the server refused
           the request (its error answer goes to stderr)
  69       the server could not be reached or did not answer with JSON
  70       the local sandbox could not be started
  73       with --out DIR: an artifact could not be written there (a path that would leave
           DIR, or a file system error); the others are written
  78       invalid configuration (environment or .env)
"""


def exit_status(record: Mapping[str, Any]) -> int:
    """The exit status that mirrors the program of ``record`` (see EXIT_STATUS_HELP)."""
    status = record.get("status")
    code = record.get("exit_code")
    signal = record.get("signal")
    if status in ("ok", "nonzero_exit") and isinstance(code, int):
        return code
    if status == "crashed" and isinstance(signal, int):
        return EXIT_SIGNAL_BASE + signal
    if status == "timeout":
        return EXIT_TIMEOUT
    if status == "memory_limit":
        return code if isinstance(code, int) else EXIT_SIGNAL_BASE + SIGKILL
    if status == "output_limit":
        return 1
    return EX_SOFTWARE
