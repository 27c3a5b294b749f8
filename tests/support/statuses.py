"""Short names of the execution statuses, as the tests' expectations spell them."""

from __future__ import annotations

from executors import TERMINAL_STATUSES, ExecutionStatus

__all__ = [
    "CRASHED",
    "INTERNAL_ERROR",
    "MEMORY_LIMIT",
    "NONZERO_EXIT",
    "OK",
    "OUTPUT_LIMIT",
    "TERMINAL",
    "TIMEOUT",
]

OK = ExecutionStatus.OK
NONZERO_EXIT = ExecutionStatus.NONZERO_EXIT
CRASHED = ExecutionStatus.CRASHED
TIMEOUT = ExecutionStatus.TIMEOUT
MEMORY_LIMIT = ExecutionStatus.MEMORY_LIMIT
OUTPUT_LIMIT = ExecutionStatus.OUTPUT_LIMIT
INTERNAL_ERROR = ExecutionStatus.INTERNAL_ERROR

TERMINAL = frozenset(str(status) for status in TERMINAL_STATUSES)
"""The terminal statuses as the API and the database write them."""
