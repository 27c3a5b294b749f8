"""The in-process backend, for the embedded single-process mode."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from executors import ExecutionRecord
from serve_app.cache import _codec
from serve_app.cache._types import CachedResult
from serve_app.ratelimit import ClosesOnExit, positive

MIB = 1024 * 1024
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_RECORD_BYTES = 1 * MIB
DEFAULT_MAX_TOTAL_BYTES = 256 * MIB
"""The memory all entries together may hold: ``max_entries`` records of the largest cacheable
size would be gigabytes, so size bounds the cache too, not only the count."""


class MemoryResultCache(ClosesOnExit):
    """An LRU of entries with a TTL, held in this process (not shared between replicas).

    Bounded by count (``max_entries``) and by bytes (``max_total_bytes``): the least recently
    used entries go first. An expired entry is dropped when it is looked up, or pushed out by
    newer ones. Operations run without awaiting and under a lock, so they are atomic for
    asyncio tasks and threads alike. ``clock`` (seconds, monotonic by default) is injectable.
    """

    backend: Literal["memory", "redis"] = "memory"

    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = positive("ttl_s", ttl_s)
        self._max_entries = positive("max_entries", max_entries)
        self._max_record_bytes = min(
            positive("max_record_bytes", max_record_bytes),
            positive("max_total_bytes", max_total_bytes),
        )
        self._max_total_bytes = max_total_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # (key id, fingerprint) -> (expiry on the clock, entry); least recently used first.
        self._entries: OrderedDict[tuple[int, str], tuple[float, bytes]] = OrderedDict()
        self._total_bytes = 0

    @property
    def healthy(self) -> bool:
        return True

    @property
    def entries(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    async def get(self, key_id: int, fingerprint: str) -> CachedResult | None:
        slot = (key_id, fingerprint)
        with self._lock:
            found = self._entries.get(slot)
            if found is None:
                return None
            expires_at, data = found
            if expires_at <= self._clock():
                self._drop(slot)
                return None
            self._entries.move_to_end(slot)
        return _codec.decode(data)

    async def put(
        self, key_id: int, fingerprint: str, execution_id: uuid.UUID, record: ExecutionRecord
    ) -> None:
        data = _codec.encode(execution_id, record, self._max_record_bytes)
        if data is None:
            return
        slot = (key_id, fingerprint)
        with self._lock:
            if slot in self._entries:
                self._drop(slot)
            self._entries[slot] = (self._clock() + self._ttl_s, data)
            self._total_bytes += len(data)
            while (
                len(self._entries) > self._max_entries or self._total_bytes > self._max_total_bytes
            ):
                self._drop(next(iter(self._entries)))

    async def aclose(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total_bytes = 0

    def _drop(self, slot: tuple[int, str]) -> None:
        """Forget one entry (call with the lock held)."""
        _, data = self._entries.pop(slot)
        self._total_bytes -= len(data)
