"""The service's typed answers for batches and pages, dumped to the API's JSON
(``model_dump(mode="json")``: each record in its API form, fields in the API's order); the
Python client reads the API's JSON back into them (:mod:`serve_app.client`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer

from executors import ExecutionRecord

__all__ = ["BatchAccepted", "BatchAnswer", "ExecutionPage"]


def _api_records(records: list[ExecutionRecord]) -> list[dict[str, Any]]:
    return [record.to_api() for record in records]


ApiRecords = Annotated[list[ExecutionRecord], PlainSerializer(_api_records)]
"""Records, each answered in its API form (:meth:`ExecutionRecord.to_api`)."""


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_api(self) -> dict[str, Any]:
        """The JSON object the API answers."""
        return self.model_dump(mode="json")


class BatchAccepted(_Answer):
    """``POST /v1/batches``: the batch stored, its items queued."""

    id: str
    status: Literal["queued"] = "queued"
    total: int


class BatchAnswer(_Answer):
    """``GET /v1/batches/{id}``: the batch with its records in request order."""

    id: str
    status: str
    total: int
    done: int
    items: ApiRecords


class ExecutionPage(_Answer):
    """``GET /v1/executions``: a page of the key's records, newest first."""

    items: ApiRecords
    next_cursor: str | None
