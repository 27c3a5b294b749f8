"""What makes two requests the same for the cache."""

from __future__ import annotations

from executors import ExecutionRequest
from serve_app.db.executions import request_fingerprint

FINGERPRINT_VERSION = 1
"""Part of every fingerprint: changing what goes in (or how) changes it, so old entries miss."""


def cache_fingerprint(request: ExecutionRequest) -> str:
    """SHA-256 (hex) of everything that decides a deterministic program's result: code, stdin,
    files, tests and the *effective* limits (defaults filled in, so a request that spells out
    a default and one that leaves it out share a result). Equal requests give equal
    fingerprints whatever the order of ``files``; canonical JSON comes from
    :func:`serve_app.db.executions.request_fingerprint`, the same as for ``Idempotency-Key``.
    The API key is not part of it: the cache keys entries by key id and fingerprint.
    """
    return request_fingerprint({"version": FINGERPRINT_VERSION, **request.model_dump(mode="json")})
