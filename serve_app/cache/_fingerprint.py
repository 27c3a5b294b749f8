"""What makes two requests the same for the cache."""

from __future__ import annotations

from executors import ExecutionRequest
from serve_app import files as api_files
from serve_app.db.executions import request_fingerprint

FINGERPRINT_VERSION = 2
"""Part of every fingerprint: changing what goes in (or how) changes it, so old entries miss.
2: the runtime, and binary files in their API form."""


def cache_fingerprint(request: ExecutionRequest) -> str:
    """SHA-256 (hex) of everything that decides a deterministic program's result: code, stdin,
    files, runtime, tests and the *effective* limits (defaults filled in, so a request that
    spells out a default and one that leaves it out share a result). Equal requests give equal
    fingerprints whatever the order of ``files``; a binary file counts in its API form
    (``{"base64": ...}``: JSON has no bytes). Canonical JSON comes from
    :func:`serve_app.db.executions.request_fingerprint`, the same as for ``Idempotency-Key``.
    The API key is not part of it: the cache keys entries by key id and fingerprint.
    """
    fields = request.model_dump(mode="json", exclude={"files"})
    files = api_files.to_api(request.files)
    return request_fingerprint({"version": FINGERPRINT_VERSION, **fields, "files": files})
