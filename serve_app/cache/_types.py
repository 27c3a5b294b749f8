"""What the cache answers, and the interface every backend implements."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from executors import ExecutionRecord
from serve_app.ratelimit import AsyncResource

DEFAULT_KEY_PREFIX = "exec-agent:result-cache:v1:"
"""Redis keys are ``{prefix}{key_id}:{fingerprint}``. The version changes with the stored
format, so that a new release never reads entries it cannot parse."""


@dataclass(frozen=True, slots=True)
class CachedResult:
    """A reusable result: the execution that produced it, and its record as it was stored.

    ``record`` is a fresh copy on every hit, so the caller may change it (the HTTP layer builds
    the new execution's record from it, marked ``cached`` and ``cached_from=execution_id``).
    """

    execution_id: uuid.UUID
    record: ExecutionRecord


class ResultCache(AsyncResource, Protocol):
    """Finished results by (API key id, request fingerprint), reused for ``"cache": true``.

    Lookups and stores never fail a request: an unreachable store answers a miss and drops the
    store. Entries live ``RESULT_CACHE_TTL_S`` from the moment they are stored (when the run
    finished); a hit does not extend them.
    """

    backend: Literal["memory", "redis"]

    @property
    def healthy(self) -> bool:
        """False while the store is considered unreachable (every call is then a miss)."""
        ...

    async def get(self, key_id: int, fingerprint: str) -> CachedResult | None:
        """The key's live entry for ``fingerprint``, or None (absent, expired, store down)."""
        ...

    async def put(
        self, key_id: int, fingerprint: str, execution_id: uuid.UUID, record: ExecutionRecord
    ) -> None:
        """Store ``record`` as the result of ``execution_id``, unless it must not be reused.

        Skipped: ``internal_error`` (the service failed, not the program), copies of cached
        results (an entry always names the run that produced it), and records larger than the
        size cap. Raise ``ValueError`` for a record that is not terminal (a caller's bug).
        """
        ...
