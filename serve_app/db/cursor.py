"""Opaque page cursors over rows ordered newest first by ``(created_at, id)``: executions and
sessions.

A cursor is the position of the last item of a page, base64url-encoded. Ordering by the id too
makes the order total, so executions created in the same microsecond are neither skipped nor
repeated; executions created after the first page come before it and never shift later pages.
A forged cursor only moves the caller within its own rows.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_

from serve_app.db.models import Execution, LiveSession
from serve_app.errors import InvalidRequestError

__all__ = ["Position", "decode", "encode", "older_than"]

Position = tuple[datetime, uuid.UUID]
Paged = Execution | LiveSession
"""What is paged: rows with a ``created_at`` and an ``id``."""
_SEPARATOR = "|"
MAX_CURSOR_CHARS = 128


def encode(row: Paged) -> str:
    """The cursor that continues after ``row``."""
    text = f"{row.created_at.isoformat()}{_SEPARATOR}{row.id.hex}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(cursor: str) -> Position:
    """The position in ``cursor``; :class:`InvalidRequestError` if it is not one of ours."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        moment, id_hex = text.split(_SEPARATOR)
        created_at = datetime.fromisoformat(moment)
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        return created_at, uuid.UUID(hex=id_hex)
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        raise InvalidRequestError("invalid cursor") from None


def older_than(position: Position, model: type[Paged] = Execution) -> ColumnElement[bool]:
    """Rows of ``model`` after ``position`` in newest-first order."""
    created_at, row_id = position
    return or_(
        model.created_at < created_at,
        and_(model.created_at == created_at, model.id < row_id),
    )
