"""Limits the tests run and store programs with."""

from __future__ import annotations

from executors import Limits

__all__ = [
    "API_LIMIT_FIELDS",
    "CORPUS_LIMITS",
    "MIB",
    "SERVICE_DEFAULT_LIMITS",
    "SERVICE_MAX_LIMITS",
    "SMALL_LIMITS",
]

MIB = 1024 * 1024

API_LIMIT_FIELDS = (
    "wall_timeout_s",
    "cpu_time_s",
    "memory_mb",
    "max_output_bytes",
    "max_processes",
    "max_file_bytes",
)
"""The limits a request may set, as the API names them (memory in MiB)."""

SMALL_LIMITS = Limits(
    wall_timeout_s=2,
    cpu_time_s=1.5,
    memory_bytes=64 * MIB,
    max_output_bytes=4096,
    max_processes=4,
    max_file_bytes=MIB,
)
"""Limits of stored requests in tests that run nothing."""

SERVICE_DEFAULT_LIMITS = Limits(
    wall_timeout_s=5,
    cpu_time_s=5,
    memory_bytes=256 * MIB,
    max_output_bytes=MIB,
    max_processes=64,
    max_file_bytes=16 * MIB,
)
"""The service's default limits (Settings' defaults), written out."""

SERVICE_MAX_LIMITS = Limits(
    wall_timeout_s=30,
    cpu_time_s=30,
    memory_bytes=512 * MIB,
    max_output_bytes=MIB,
    max_processes=64,
    max_file_bytes=64 * MIB,
)
"""The service's maximum limits (Settings' defaults), written out."""

CORPUS_LIMITS = Limits(
    wall_timeout_s=5,
    cpu_time_s=5,
    memory_bytes=256 * MIB,
    max_processes=64,
    max_open_files=256,
    max_output_bytes=1 * MIB,
    disk_bytes=64 * MIB,
    max_file_bytes=16 * MIB,  # the service's default (DEFAULT_MAX_FILE_BYTES)
)
"""The corpus' symbols (tests/data/security_corpus.README.md): WALL, CPU, MEM, PIDS, NOFILE, OUT
and DISK."""
