"""Column types that make what is written valid for every backend.

Every text column is :class:`CleanText` and every JSON column :class:`CleanJSON`, so each string
on its way into the database passes through :func:`clean_text`: PostgreSQL refuses NUL in text
and cannot encode lone surrogates, and the API promises valid text anyway. Times are
:class:`UTCDateTime`: aware UTC in Python on both backends (SQLite would drop the zone).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Text
from sqlalchemy.types import TypeDecorator

__all__ = ["CleanJSON", "CleanText", "UTCDateTime", "clean_json", "clean_text"]

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean_text(value: str | bytes) -> str:
    """``value`` as storable text: invalid UTF-8 and lone surrogates become U+FFFD, NUL goes.

    Lone surrogates are how Python carries undecodable bytes (the ``surrogateescape`` error
    handler), so each stands for one invalid byte and becomes one replacement character.
    """
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        try:
            value.encode("utf-8")  # the common case: valid already, no copy
            text = value
        except UnicodeEncodeError:
            text = _SURROGATE.sub(REPLACEMENT, value)
    return text.replace("\x00", "") if "\x00" in text else text


def clean_json(value: Any) -> Any:
    """``value`` (decoded JSON) with every string, keys included, as :func:`clean_text` makes it."""
    if isinstance(value, str | bytes):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


class CleanText(TypeDecorator[str]):
    """``TEXT`` whose values pass through :func:`clean_text` on the way in."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(value)


class CleanJSON(TypeDecorator[Any]):
    """JSON whose strings (keys included) pass through :func:`clean_text` on the way in."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return clean_json(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment in time: aware datetimes only, stored and returned in UTC."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: a time zone is required")
        value = value.astimezone(UTC)
        # SQLite has no zone: store UTC wall time, whose text sorts in time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
