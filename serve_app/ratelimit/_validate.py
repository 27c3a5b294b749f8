"""Argument checks shared by the backends."""

from __future__ import annotations

import math
from typing import TypeVar

_Number = TypeVar("_Number", int, float)


def positive(name: str, value: _Number) -> _Number:
    """``value`` if it is a positive finite number, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value
