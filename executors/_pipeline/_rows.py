"""One dataset row to one execution request: a column's value as plain Python (numpy, pandas
and Arrow values, JSON text), the request it makes, and a failed row's ``error`` message."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from executors._models import ExecutionRequest, Limits, LimitsRequest

__all__ = ["describe_error", "row_to_request", "to_plain"]


def to_plain(value: Any) -> Any:
    """``value`` as plain Python: numpy scalars and arrays, pandas' missing values and Arrow's
    struct and map columns become ``int``/``float``/``str``/``bool``, lists, dicts and None.

    NaN and other missing markers become None; a ``(key, value)`` pair list (an Arrow map)
    stays a list of pairs (:func:`row_to_request` reads it as a mapping where one is expected).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # numpy's str_ too
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # numpy's float64 too
        return None if math.isnan(value) else float(value)
    import numpy as np

    if isinstance(value, np.ndarray):
        return [to_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if _is_missing(value):
        return None
    return value


def _is_missing(value: Any) -> bool:
    """pandas' ``NA``/``NaT`` (without importing pandas when it is not loaded)."""
    import sys

    pandas = sys.modules.get("pandas")
    if pandas is None:
        return False
    try:
        return bool(pandas.isna(value))
    except (TypeError, ValueError):  # not a scalar
        return False


def _decoded(value: Any, what: str, kind: str) -> Any:
    """A column's value as plain Python: JSON text decoded (``kind`` names what it should
    hold, for the error), None when missing."""
    value = to_plain(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what}: not a JSON {kind} ({exc})") from None
    return value


def _mapping(value: Any, what: str) -> dict[str, Any] | None:
    """A mapping column's value: a dict, JSON text of one, or ``(key, value)`` pairs; keys
    whose value is missing are dropped (Arrow gives every row each struct field of the column)."""
    value = _decoded(value, what, "object")
    if value is None:
        return None
    if isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    ):
        value = dict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return {key: item for key, item in value.items() if item is not None}


def _cases(value: Any) -> list[dict[str, Any]] | None:
    value = _decoded(value, "cases", "list")
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"cases: expected a list, got {type(value).__name__}")
    return [_mapping(case, f"cases[{index}]") or {} for index, case in enumerate(value)]


def row_to_request(row: Mapping[str, Any], defaults: Limits, maxima: Limits) -> ExecutionRequest:
    """The execution request of one dataset row (see :mod:`executors._pipeline`'s input columns).

    Raises ``ValueError`` (pydantic's ``ValidationError`` included) naming what is wrong.
    """
    fields: dict[str, Any] = {}
    for name in ("code", "stdin", "test_code", "judge", "runtime"):
        value = to_plain(row.get(name))
        if value is not None:
            fields[name] = value
    if "code" not in fields:
        raise ValueError("code: missing")
    files = _mapping(row.get("files"), "files")
    if files:
        fields["files"] = files
    cases = _cases(row.get("cases"))
    if cases is not None:
        fields["cases"] = cases
    asked = _mapping(row.get("limits"), "limits") or {}
    fields["limits"] = LimitsRequest.model_validate(asked).resolve(defaults, maxima)
    return ExecutionRequest.model_validate(fields)


def describe_error(exc: BaseException) -> str:
    """A one-line message for a row's ``error`` column."""
    if isinstance(exc, ValidationError):
        return "invalid row: " + "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'row'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
    if isinstance(exc, ValueError):
        return f"invalid row: {exc}"
    return f"executor failed: {type(exc).__name__}: {exc}"
