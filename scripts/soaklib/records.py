"""Records against answers: the background runs awaited, every record read back (through the
API, or from the stopped service's SQLite database), and compared with what was accepted:
nothing missing, nothing unfinished, no record nobody was told of."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from .corpus import STATUSES
from .load import CLIENT_TIMEOUT_S, Outcome

BACKGROUND_TIMEOUT_S = 180.0
"""How long the background runs get to finish after the load stopped."""
MAX_EXAMPLES = 10
"""The most ids (or answers) the report lists as examples of one kind of failure."""


def await_background(url: str, keys: list[str], outcomes: list[Outcome]) -> dict[str, str]:
    """Wait (bounded) for every accepted background run; id -> its last status seen."""
    pending = {
        o.accepted_id: o.key_index
        for o in outcomes
        if o.kind == "background" and o.accepted_id is not None and o.key_index is not None
    }
    seen: dict[str, str] = {}
    deadline = time.monotonic() + BACKGROUND_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        for execution_id, key_index in pending.items():
            while True:
                wait_s = max(0.0, min(30.0, deadline - time.monotonic()))
                try:
                    response = client.get(
                        f"/v1/executions/{execution_id}",
                        params={"wait_s": round(wait_s, 1)},
                        headers={"Authorization": f"Bearer {keys[key_index]}"},
                    )
                    status = response.json().get("status") if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError) as exc:
                    seen[execution_id] = f"no answer: {type(exc).__name__}"
                    break
                seen[execution_id] = str(status) if status else f"HTTP {response.status_code}"
                if status in STATUSES or wait_s <= 0:
                    break
    return seen


def listed_records(url: str, keys: list[str]) -> dict[str, str]:
    """Every execution each key has, through the list endpoint: id -> status."""
    records: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        for key in keys:
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor:
                    params["cursor"] = cursor
                response = client.get(
                    "/v1/executions", params=params, headers={"Authorization": f"Bearer {key}"}
                )
                response.raise_for_status()
                page = response.json()
                records.update({item["id"]: item["status"] for item in page["items"]})
                cursor = page["next_cursor"]
                if not cursor:
                    break
    return records


def stored_records(database_path: Path) -> dict[str, str]:
    """Every execution in the stopped service's SQLite database: id -> status."""
    from sqlalchemy import create_engine, select

    from serve_app.db.models import Execution

    engine = create_engine(f"sqlite:///{database_path}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Execution.id, Execution.status)).all()
    finally:
        engine.dispose()
    return {str(row.id): str(row.status) for row in rows}


def compare(accepted: set[str], records: dict[str, str], *, exclusive: bool) -> dict[str, Any]:
    """Accepted executions against stored records: missing and non-terminal ones are lost;
    with ``exclusive`` keys (ours alone), records nobody accepted are phantoms."""
    missing = sorted(accepted - set(records))
    unfinished = sorted(i for i in accepted & set(records) if records[i] not in STATUSES)
    phantoms = sorted(set(records) - accepted) if exclusive else []
    return {
        "accepted": len(accepted),
        "records": len(records),
        "missing": len(missing),
        "not_terminal": len(unfinished),
        "phantoms": len(phantoms) if exclusive else None,
        "examples": {
            "missing": missing[:MAX_EXAMPLES],
            "not_terminal": unfinished[:MAX_EXAMPLES],
            "phantoms": phantoms[:MAX_EXAMPLES],
        },
        "by_status": dict(Counter(records[i] for i in accepted & set(records))),
    }
