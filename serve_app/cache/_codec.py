"""The stored form of an entry, shared by both backends, and what may be stored at all.

An entry is one JSON object: ``{"execution_id": ..., "record": <the API record>}``. The memory
backend keeps these bytes too, rather than the record object: a hit then always returns a fresh
copy, sizes are measured the same way, and both backends behave alike.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import BaseModel, ConfigDict, ValidationError

from executors import TERMINAL_STATUSES, ExecutionRecord, ExecutionStatus
from serve_app.cache._types import CachedResult

logger = logging.getLogger(__name__)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    execution_id: uuid.UUID
    record: ExecutionRecord


def encode(execution_id: uuid.UUID, record: ExecutionRecord, max_bytes: int) -> bytes | None:
    """The entry to store, or None when ``record`` must not be cached (see ``ResultCache.put``)."""
    if record.status not in TERMINAL_STATUSES:
        raise ValueError(f"only finished results can be cached, not {record.status}")
    if record.status == ExecutionStatus.INTERNAL_ERROR or record.cached:
        return None
    data = _Entry(execution_id=execution_id, record=record).model_dump_json().encode()
    if len(data) > max_bytes:
        logger.debug("result of %s not cached: %d bytes > %d", execution_id, len(data), max_bytes)
        return None
    return data


def decode(data: bytes | str) -> CachedResult | None:
    """The result in a stored entry; None (a miss) if it is not one this version reads."""
    try:
        entry = _Entry.model_validate_json(data)
    except ValidationError:
        logger.warning("unreadable result cache entry ignored")
        return None
    return CachedResult(entry.execution_id, entry.record)
