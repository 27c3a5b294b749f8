"""A batch in and out: its input columns as rows (pandas or numpy batches), and the output
columns of its records added to it, typed (pandas' nullable types, numpy object arrays)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "INPUT_COLUMNS",
    "OUTPUT_COLUMNS",
    "RECORD_COLUMNS",
    "batch_rows",
    "record_values",
    "with_columns",
]

INPUT_COLUMNS = ("code", "stdin", "files", "test_code", "judge", "cases", "limits")
RECORD_COLUMNS = (
    "id",
    "status",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "wall_time_s",
    "cpu_time_s",
    "peak_memory_bytes",
    "passed",
    "case_results",
)
OUTPUT_COLUMNS = (*RECORD_COLUMNS, "error", "executor")
_KINDS: dict[str, str] = {
    "exit_code": "int",
    "signal": "int",
    "peak_memory_bytes": "int",
    "wall_time_s": "float",
    "cpu_time_s": "float",
    "stdout_truncated": "bool",
    "stderr_truncated": "bool",
    "passed": "bool",
}
"""Column kinds other than text, for the batch's column types."""
_PANDAS_DTYPES = {"int": "Int64", "float": "Float64", "bool": "boolean", "str": "string"}


def record_values(
    record: Mapping[str, Any] | None, error: str | None, executor: str | None
) -> dict[str, Any]:
    """One row's output values (unprefixed)."""
    values: dict[str, Any] = dict.fromkeys(OUTPUT_COLUMNS)
    if record is not None:
        for name in RECORD_COLUMNS:
            if name != "case_results":
                values[name] = record.get(name)
        cases = record.get("cases")
        values["case_results"] = None if cases is None else json.dumps(cases)
        values["executor"] = executor
    values["error"] = error
    return values


def batch_rows(batch: Any) -> tuple[str, int, list[dict[str, Any]]]:
    """The batch's format (``pandas`` or ``numpy``), its length and its input columns as rows."""
    if isinstance(batch, Mapping):
        columns = {name: batch[name] for name in INPUT_COLUMNS if name in batch}
        length = len(next(iter(batch.values()))) if batch else 0
        return (
            "numpy",
            length,
            [{name: column[index] for name, column in columns.items()} for index in range(length)],
        )
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # a pandas DataFrame
        present = [name for name in INPUT_COLUMNS if name in batch.columns]
        return "pandas", len(batch), list(batch[present].to_dict("records"))
    raise TypeError(
        f"SandboxMapper takes pandas or numpy batches (batch_format='pandas' or 'numpy'), "
        f"not {type(batch).__name__}"
    )


def with_columns(batch: Any, form: str, values: dict[str, list[Any]], prefix: str) -> Any:
    """``batch`` with the output columns added (or replaced): pandas' nullable types (a
    missing number stays null, not NaN), numpy object arrays."""
    if form == "pandas":
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]

        batch = batch.copy(deep=False)
        for name, column in values.items():
            dtype = _PANDAS_DTYPES[_KINDS.get(name, "str")]
            batch[prefix + name] = pd.array(column, dtype=dtype)
        return batch
    import numpy as np

    out = dict(batch)
    for name, column in values.items():
        out[prefix + name] = np.array(column, dtype=object)
    return out
