"""What makes two requests the same for the cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from executors import Limits
from serve_app.db.executions import request_fingerprint

FINGERPRINT_VERSION = 1
"""Part of every fingerprint: changing what goes in (or how) changes it, so old entries miss."""


def cache_fingerprint(
    code: str,
    stdin: str,
    files: Mapping[str, str],
    test_code: str | None,
    cases: Sequence[Mapping[str, Any]] | None,
    limits: Limits,
) -> str:
    """SHA-256 (hex) of everything that decides a deterministic program's result.

    ``limits`` are the *effective* limits (defaults filled in), so a request that spells out a
    default and one that leaves it out share a result; ``cases`` are ``{"stdin",
    "expected_stdout"}`` mappings (``Case.model_dump()``). Equal inputs give equal fingerprints
    whatever the order of ``files``; canonical JSON comes from
    :func:`serve_app.db.executions.request_fingerprint`, the same as for ``Idempotency-Key``.
    The API key is not part of it: the cache keys entries by key id and fingerprint.
    """
    return request_fingerprint(
        {
            "version": FINGERPRINT_VERSION,
            "code": code,
            "stdin": stdin,
            "files": dict(files),
            "test_code": test_code,
            "cases": None if cases is None else [dict(case) for case in cases],
            "limits": limits.model_dump(),
        }
    )
